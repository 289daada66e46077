"""The LEVI head and its ablations: shapes, loss, ensemble, and a reference recomputation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.head import HeadConfig, LeviHead, adapter_loss, ensemble

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
        + [mh @ m["genres"]["kernel"] + m["genres"]["bias"]],
        axis=-1,
    )
    for i in range(2):
        x = np.maximum(x @ m[f"mlp_{i}"]["kernel"] + m[f"mlp_{i}"]["bias"], 0)
    a = p["adapter_2"]
    v = acts[:, :, 2, :]
    v = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6)
    v = v * a["view_norm"]["scale"] + a["view_norm"]["bias"]
    h = np.concatenate([v.reshape(B, -1), x], axis=-1)
    h = np.maximum(h @ a["hidden"]["kernel"] + a["hidden"]["bias"], 0)
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
