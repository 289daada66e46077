"""First-layer decomposition: user side + item side + pair remainder equals the whole head."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from model.decomposed import pair_function, side_function
from model.decomposed_layout import Layout
from model.head import LeviHead
from training.config import TRAINED_METHODS, TrainConfig
from training.train import head_config

N_LAYERS, D = 3, 8
VOCAB = (11, 4, 6, 13, 5)  # user id, two user features; item id, one item feature
LAYOUT = Layout(n_user_ids=3, n_user_multi_hot=2, view_sides=("user", "item"))
G = 5  # 2 user multi-hot columns, 3 item ones


def _inputs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, v, n) for v in VOCAB], axis=1).astype(np.int32)
    multi_hot = (rng.random((n, G)) < 0.4).astype(np.float32)
    acts = rng.normal(size=(n, 2, N_LAYERS, D)).astype(np.float32) * 3 + 1
    return ids, multi_hot, acts


def _noisy_params(cfg, seed: int):
    ids, mh, acts = _inputs(2, seed)
    params = LeviHead(cfg).init(jax.random.key(seed), ids, mh, acts)
    rng = np.random.default_rng(seed + 1)
    # biases and factors start at zero: perturb everything so every part matters
    return jax.tree.map(lambda x: x + rng.normal(0, 0.1, x.shape).astype(x.dtype), params)


@pytest.mark.parametrize("method", TRAINED_METHODS)
def test_split_functions_equal_the_whole_head(method):
    cfg = head_config(
        method,
        TrainConfig.tiny().replace(factor_dim=4),
        vocab_sizes=VOCAB,
        n_multi_hot=G,
        n_layers=N_LAYERS,
        rating_mean=3.0,
        rating_range=(1.0, 5.0),
        id_features=(0, 3),
    )
    params = _noisy_params(cfg, 0)
    ids, mh, acts = _inputs(64, 1)
    whole = np.asarray(LeviHead(cfg).apply(params, ids, mh, acts))

    user = jax.jit(side_function(cfg, LAYOUT, "user"))(params, ids[:, :3], mh[:, :2], acts[:, :1])
    item = jax.jit(side_function(cfg, LAYOUT, "item"))(params, ids[:, 3:], mh[:, 2:], acts[:, 1:])
    adapters, rating = jax.jit(pair_function(cfg))(params, user, item)
    np.testing.assert_allclose(np.asarray(adapters), whole, atol=1e-5, rtol=1e-5)
    assert np.abs(whole).max() > 0.5  # the comparison is not between zeros
    np.testing.assert_allclose(np.asarray(rating), np.clip(whole.mean(axis=1), 1.0, 5.0), atol=1e-5)


def test_one_user_broadcast_over_many_items():
    """Ranking: the user's parts computed once, repeated over the candidates."""
    cfg = head_config(
        "levi",
        TrainConfig.tiny(),
        vocab_sizes=VOCAB,
        n_multi_hot=G,
        n_layers=N_LAYERS,
        rating_mean=3.0,
        rating_range=(1.0, 5.0),
        id_features=(0, 3),
    )
    params = _noisy_params(cfg, 2)
    ids, mh, acts = _inputs(50, 3)
    ids[:, :3], mh[:, :2], acts[:, 0] = ids[0, :3], mh[0, :2], acts[0, 0]  # one user
    whole = np.asarray(LeviHead(cfg).apply(params, ids, mh, acts))
    user = side_function(cfg, LAYOUT, "user")(params, ids[:1, :3], mh[:1, :2], acts[:1, :1])
    item = side_function(cfg, LAYOUT, "item")(params, ids[:, 3:], mh[:, 2:], acts[:, 1:])
    broadcast = jax.tree.map(lambda x: np.repeat(np.asarray(x), 50, axis=0), user)
    adapters, _ = pair_function(cfg)(params, broadcast, item)
    np.testing.assert_allclose(np.asarray(adapters), whole, atol=1e-5, rtol=1e-5)
