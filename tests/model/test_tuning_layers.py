"""The encoder split for tuning (model/layer_split.py) and LoRA (model/lora.py): the cached
bottom then the top is the whole encoder, and merged adapters compute what unmerged ones do."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from model.bert import BertConfig, BertEncoder
from model.layer_split import EMBEDDINGS, bottom, top, top_pooled_last
from model.lora import init_lora, lora_applied, merge_lora
from model.pooling import masked_mean

CFG = BertConfig.tiny()


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, CFG.vocab_size, (3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # padded rows must pool over their real tokens only
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _params(seed: int = 0):
    ids, mask = _inputs()
    return BertEncoder(CFG).init(jax.random.key(seed), ids, mask)


@pytest.mark.parametrize("start", [EMBEDDINGS, 0, 1, 2])
def test_cached_bottom_then_top_equals_the_whole_encoder(start):
    params = _params()
    ids, mask = _inputs()
    full = BertEncoder(CFG).apply(params, ids, mask)
    x = bottom(CFG, params, ids, mask, start)
    out = top(CFG, params, x, mask, start)
    expected = full.hidden_states[max(start, 0) :]
    assert len(out.hidden_states) == len(expected) == CFG.num_layers - max(start, 0)
    for got, want in zip(out.hidden_states, expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    if start < CFG.num_layers:
        pooled = top_pooled_last(CFG, params, x, mask, start)  # [b, d]
        np.testing.assert_allclose(
            np.asarray(pooled), np.asarray(masked_mean(full))[:, -1], rtol=1e-5, atol=1e-5
        )


def test_split_point_outside_the_encoder_is_refused():
    params = _params()
    ids, mask = _inputs()
    with pytest.raises(ValueError, match="split point 3 outside"):
        bottom(CFG, params, ids, mask, CFG.num_layers + 1)


def _trained_lora(params, layers=(0, 1), rank=4):
    """Adapters with non-zero B (a fresh adapter is a no-op, which proves nothing)."""
    lora = init_lora(jax.random.key(1), params, layers, rank)
    return jax.tree_util.tree_map(
        lambda a: a + 0.05 * jax.random.normal(jax.random.key(a.size), a.shape), lora
    )


def test_lora_merge_equals_the_unmerged_forward_pass():
    params = _params()
    ids, mask = _inputs()
    lora = _trained_lora(params)
    alpha = 8.0
    with lora_applied(lora, alpha):
        unmerged = BertEncoder(CFG).apply(params, ids, mask)
    merged = BertEncoder(CFG).apply(merge_lora(params, lora, alpha), ids, mask)
    base = BertEncoder(CFG).apply(params, ids, mask)
    for u, m, b in zip(
        unmerged.hidden_states, merged.hidden_states, base.hidden_states, strict=True
    ):
        assert float(np.max(np.abs(np.asarray(u) - np.asarray(m)))) <= 1e-5
        assert float(np.max(np.abs(np.asarray(u) - np.asarray(b)))) > 1e-3  # adapters act
    # the tuning path: adapters per layer over the cached bottom, as trained
    x = bottom(CFG, params, ids, mask, 0)
    split = top(CFG, params, x, mask, 0, lora=lora, lora_alpha=alpha)
    for s, m in zip(split.hidden_states, merged.hidden_states, strict=True):
        assert float(np.max(np.abs(np.asarray(s) - np.asarray(m)))) <= 1e-5


def test_fresh_lora_leaves_the_encoder_unchanged_and_merging_copies():
    params = _params()
    lora = init_lora(jax.random.key(0), params, [1], rank=2)
    assert set(lora) == {"layers_1"}
    assert set(lora["layers_1"]) == {"attention", "mlp"}
    assert lora["layers_1"]["mlp"]["wi"]["a"].shape == (CFG.hidden_size, 2)
    assert lora["layers_1"]["mlp"]["wi"]["b"].shape == (2, CFG.intermediate_size)
    merged = merge_lora(params, lora, 4.0)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(merged), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    trained = _trained_lora(params, layers=(1,), rank=2)
    before = np.asarray(params["params"]["layers_1"]["mlp"]["wi"]["kernel"]).copy()
    merge_lora(params, trained, 4.0)
    np.testing.assert_array_equal(params["params"]["layers_1"]["mlp"]["wi"]["kernel"], before)


def test_lora_rank_must_be_positive():
    with pytest.raises(ValueError, match="rank must be >= 1"):
        init_lora(jax.random.key(0), _params(), [0], rank=0)
