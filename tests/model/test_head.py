"""The LEVI head and its ablations: shapes, loss, ensemble, and a reference recomputation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.head import LeviHead, adapter_loss, collab_penalty, ensemble
from model.head_config import HeadConfig

B, V, L, D = 4, 2, 6, 16


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 5, size=(B, 3)).astype(np.int32)
    multi_hot = (rng.random((B, 2)) > 0.5).astype(np.float32)
    acts = rng.normal(size=(B, V, L, D)).astype(np.float32)
    return ids, multi_hot, acts


@pytest.mark.parametrize(
    "overrides, n_adapters",
    [
        ({}, 6),  # LEVI: one adapter per layer
        ({"layers": (1, 3)}, 2),
        ({"use_task_vector": False}, 6),  # A3: intermediates + adapters
        ({"layers": (), "text_free_heads": 1}, 1),  # A4: MLP
        ({"layers": (), "text_free_heads": 6}, 6),  # A5: multi-head MLP
        ({"layers": (5,), "use_task_vector": False, "adapter_hidden": 0}, 1),  # LP
    ],
)
def test_adapter_count_per_method(overrides, n_adapters):
    cfg = HeadConfig(vocab_sizes=(5, 5, 5), n_multi_hot=2, mlp_dims=(32, 16), **overrides)
    ids, mh, acts = _inputs()
    out = jax.eval_shape(lambda: LeviHead(cfg).init_with_output(jax.random.key(0), ids, mh, acts))
    assert out[0].shape == (B, n_adapters) == (B, cfg.n_adapters)


def test_linear_probe_reads_only_its_layer():
    cfg = HeadConfig(vocab_sizes=(5,), layers=(5,), use_task_vector=False, adapter_hidden=0)
    ids, mh, acts = _inputs()
    params = LeviHead(cfg).init(jax.random.key(0), ids[:, :1], mh, acts)
    base = LeviHead(cfg).apply(params, ids[:, :1], mh, acts)
    other = acts.copy()
    other[:, :, :5] += 10.0  # change every layer but the probed one
    np.testing.assert_allclose(LeviHead(cfg).apply(params, ids[:, :1], mh, other), base)
    other[:, :, 5] += np.random.default_rng(1).normal(size=other[:, :, 5].shape)
    assert not np.allclose(LeviHead(cfg).apply(params, ids[:, :1], mh, other), base)


def test_adapter_matches_numpy_reference():
    cfg = HeadConfig(vocab_sizes=(5, 5, 5), n_multi_hot=2, mlp_dims=(32, 16), adapter_hidden=8)
    ids, mh, acts = _inputs()
    params = LeviHead(cfg).init(jax.random.key(1), ids, mh, acts)["params"]
    p = jax.tree_util.tree_map(np.asarray, params)
    # Task vector by hand.
    m = p["mlp"]
    x = np.concatenate(
        [m[f"embed_{i}"]["embedding"][ids[:, i]] for i in range(3)]
        + [mh @ m["multi_hot"]["kernel"] + m["multi_hot"]["bias"]],
        axis=-1,
    )
    for i in range(2):
        x = np.maximum(x @ m[f"mlp_{i}"]["kernel"] + m[f"mlp_{i}"]["bias"], 0)
    a = p["adapter_2"]
    v = acts[:, :, 2, :]
    v = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6)
    h = np.concatenate([v.reshape(B, -1), x], axis=-1)
    kernel = np.concatenate([a["hidden_views"]["kernel"], a["hidden_task"]["kernel"]], axis=0)
    h = np.maximum(h @ kernel + a["hidden_views"]["bias"], 0)
    want = (h @ a["out"]["kernel"] + a["out"]["bias"])[:, 0]
    got = LeviHead(cfg).apply({"params": params}, ids, mh, acts)[:, 2]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_loss_is_mean_of_adapter_mses_and_answer_is_clipped_mean():
    adapters = jnp.array([[1.0, 3.0], [6.0, 7.0]])
    targets = jnp.array([2.0, 5.0])
    # adapter 0: ((1-2)^2 + (6-5)^2)/2 = 1; adapter 1: ((3-2)^2 + (7-5)^2)/2 = 2.5
    assert float(adapter_loss(adapters, targets)) == pytest.approx(1.75)
    assert float(adapter_loss(adapters, targets, jnp.array([1.0, 0.0]))) == pytest.approx(1.0)
    cfg = HeadConfig(vocab_sizes=(2,))
    np.testing.assert_allclose(ensemble(adapters, cfg), [2.0, 5.0])


def test_dropout_only_in_training_mode():
    cfg = HeadConfig(vocab_sizes=(5, 5, 5), n_multi_hot=2, mlp_dims=(32, 16), dropout=0.5)
    ids, mh, acts = _inputs()
    params = LeviHead(cfg).init(jax.random.key(0), ids, mh, acts)
    a = LeviHead(cfg).apply(params, ids, mh, acts)
    np.testing.assert_allclose(a, LeviHead(cfg).apply(params, ids, mh, acts))
    train = LeviHead(cfg).apply(
        params, ids, mh, acts, deterministic=False, rngs={"dropout": jax.random.key(3)}
    )
    assert not np.allclose(a, train)


COLLAB = {"user_id_feature": 0, "item_id_feature": 2, "factor_dim": 3, "id_biases": True}


def _collab_by_hand(p, ids):
    c = p["collab"]
    u, i = ids[:, 0], ids[:, 2]
    dot = np.sum(c["user_factors"]["embedding"][u] * c["item_factors"]["embedding"][i], -1)
    return c["user_bias"]["embedding"][u, 0] + c["item_bias"]["embedding"][i, 0] + dot


def test_collaborative_term_is_added_to_every_adapter():
    cfg = HeadConfig(vocab_sizes=(5, 5, 5), n_multi_hot=2, mlp_dims=(32, 16), **COLLAB)
    ids, mh, acts = _inputs()
    params = LeviHead(cfg).init(jax.random.key(2), ids, mh, acts)
    # Non-zero biases, so a term that dropped them would show.
    rng = np.random.default_rng(0)
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    for name in ("user_bias", "item_bias", "user_factors", "item_factors"):
        table = p["collab"][name]["embedding"]
        p["collab"][name]["embedding"] = rng.normal(size=table.shape).astype(np.float32)
    got = np.asarray(LeviHead(cfg).apply({"params": p}, ids, mh, acts))  # [B, 6]
    without = {k: v for k, v in p.items() if k != "collab"}
    off = HeadConfig(vocab_sizes=(5, 5, 5), n_multi_hot=2, mlp_dims=(32, 16))
    base = np.asarray(LeviHead(off).apply({"params": without}, ids, mh, acts))
    np.testing.assert_allclose(
        got - base, np.repeat(_collab_by_hand(p, ids)[:, None], 6, 1), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "overrides, has_collab",
    [
        ({}, True),  # LEVI
        ({"layers": (), "text_free_heads": 1}, True),  # A4: the same from-scratch model
        ({"use_task_vector": False}, False),  # A3: no from-scratch model
        ({"layers": (5,), "use_task_vector": False, "adapter_hidden": 0}, False),  # LP
        ({"user_id_feature": -1}, False),  # no user id column: nothing to factorise
    ],
)
def test_collaborative_term_belongs_to_the_from_scratch_model(overrides, has_collab):
    cfg = HeadConfig(vocab_sizes=(5, 5, 5), mlp_dims=(32, 16), **{**COLLAB, **overrides})
    ids, mh, acts = _inputs()
    params = LeviHead(cfg).init(jax.random.key(0), ids, mh[:, :0], acts)["params"]
    assert ("collab" in params) is has_collab is cfg.uses_collab


def test_collab_penalty_is_the_per_example_l2_of_the_rows_read():
    cfg = HeadConfig(vocab_sizes=(5, 5, 5), n_multi_hot=2, mlp_dims=(32, 16), **COLLAB)
    ids, mh, acts = _inputs()
    params = LeviHead(cfg).init(jax.random.key(4), ids, mh, acts)
    c = jax.tree_util.tree_map(np.asarray, params["params"]["collab"])
    u, i = ids[:, 0], ids[:, 2]
    want = np.mean(
        c["user_bias"]["embedding"][u, 0] ** 2
        + c["item_bias"]["embedding"][i, 0] ** 2
        + np.sum(c["user_factors"]["embedding"][u] ** 2, -1)
        + np.sum(c["item_factors"]["embedding"][i] ** 2, -1)
    )
    assert float(collab_penalty(params, jnp.asarray(ids), cfg)) == pytest.approx(want, rel=1e-5)
    # Rows the batch does not read are not penalised.
    unread = sorted(set(range(5)) - set(u.tolist()))  # 4 rows read of 5: at least one unread
    p = jax.tree_util.tree_map(np.array, params)
    p["params"]["collab"]["user_factors"]["embedding"][unread] += 100.0
    assert float(collab_penalty(p, jnp.asarray(ids), cfg)) == pytest.approx(want, rel=1e-5)
    off = HeadConfig(vocab_sizes=(5, 5, 5), n_multi_hot=2, mlp_dims=(32, 16))
    assert float(collab_penalty(params, jnp.asarray(ids), off)) == 0.0


def test_head_config_json_round_trip_and_old_manifests():
    cfg = HeadConfig(vocab_sizes=(5, 5, 5), rating_min=0.0, rating_max=10.0, **COLLAB)
    # The rating range lives once in the manifest (rating_range), not in the head's JSON.
    assert "rating_min" not in cfg.to_json() and "rating_max" not in cfg.to_json()
    assert HeadConfig.from_json(cfg.to_json(), [0.0, 10.0]) == cfg
    old = {k: v for k, v in cfg.to_json().items() if k not in COLLAB}
    assert not HeadConfig.from_json(old, [0.0, 10.0]).uses_collab
    # Artifacts written before kept the range in the head's JSON.
    older = {**cfg.to_json(), "rating_min": 0.0, "rating_max": 10.0}
    assert HeadConfig.from_json(older) == cfg


def test_split_first_layer_initialises_like_one_dense():
    """Each part's kernel has the variance one LeCun-normal kernel over the whole input has."""
    cfg = HeadConfig(vocab_sizes=(5,), mlp_dims=(64, 256), adapter_hidden=256)
    rng = np.random.default_rng(0)
    ids = np.zeros((2, 1), np.int32)
    acts = rng.normal(size=(2, 1, 6, 768)).astype(np.float32)
    params = LeviHead(cfg).init(jax.random.key(0), ids, np.zeros((2, 0), np.float32), acts)
    a = params["params"]["adapter_0"]
    fan_in = 768 + 256
    for part, rows in (("views", 768), ("task", 256)):
        kernel = np.asarray(a[f"hidden_{part}"]["kernel"])
        assert kernel.shape == (rows, 256)
        assert np.var(kernel) == pytest.approx(1 / fan_in, rel=0.05)
    assert "bias" in a["hidden_views"] and "bias" not in a["hidden_task"]
    assert "view_norm" not in a  # no scale or shift: the Dense after it absorbs both
