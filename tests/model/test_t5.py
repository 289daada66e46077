"""T5 encoder: parity with the reference on T5 1.0 and 1.1, layer maths, names, export."""

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from model.backbone import load_backbone
from model.hf_checkpoint import CheckpointError, read_config, read_tensors
from model.pooling import masked_mean
from model.t5 import (
    T5Config,
    T5Encoder,
    relative_position_bucket,
    t5_params_from_hf,
    t5_params_from_t5x,
)
from model.tokenizer import TextTokenizer

ASSETS = Path(__file__).parents[1] / "assets"
GOLDEN = Path(__file__).parents[1] / "golden"
VERSIONS = ("v1_0", "v1_1")


def _load(version):
    directory = ASSETS / f"t5_{version}_tiny"
    config = T5Config.from_hf(read_config(directory))
    return directory, config, t5_params_from_hf(config, read_tensors(directory), directory)


@functools.cache
def _pooled_fn(config):
    """Jitted ``(params, ids, mask) -> [b, n_layers, d]`` (op-by-op apply is slow on CPU)."""
    return jax.jit(
        lambda params, ids, mask: masked_mean(T5Encoder(config).apply(params, ids, mask))
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_pooled_layers_match_the_reference(version):
    directory, config, params = _load(version)
    assert config.feed_forward_proj == ("relu" if version == "v1_0" else "gated-gelu")
    golden = np.load(GOLDEN / f"t5_{version}_tiny.npz")
    # Our tokenizer gives the reference's ids (sentencepiece + </s>).
    ids = TextTokenizer(directory / "spiece.model").encode([str(t) for t in golden["texts"]])
    for row, ref, mask in zip(ids, golden["input_ids"], golden["mask"], strict=True):
        assert row == ref[: mask.sum()].tolist()
    assert golden["mask"].sum(1).max() > 128  # one text reaches the clipped position buckets
    pooled = _pooled_fn(config)(params, golden["input_ids"], golden["mask"])
    n = len(golden["texts"])
    assert pooled.shape == golden["pooled"].shape == (n, config.num_layers, config.d_model)
    for layer in range(config.num_layers):  # every layer, the last one after encoder_norm
        np.testing.assert_allclose(pooled[:, layer], golden["pooled"][:, layer], atol=1e-4)


def test_relative_position_buckets_by_hand():
    offsets = jnp.array([0, -3, 3, -8, -20, -127, 200, 7, -500])
    # 16 buckets per direction (+16 for keys after the query), 8 exact, log-spaced to 128.
    want = [0, 3, 19, 8, 10, 15, 31, 23, 15]
    assert relative_position_bucket(offsets, 32, 128).tolist() == want


@pytest.mark.parametrize("version", VERSIONS)
def test_first_layer_matches_einsum_reference(version):
    _, config, params = _load(version)
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    rng = np.random.default_rng(0)
    ids = rng.integers(3, config.vocab_size, size=(2, 5)).astype(np.int32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
    out = T5Encoder(config).apply(params, ids, mask)
    # Layer 0 rebuilt by hand: RMS norm, unscaled attention with the relative bias, MLP.
    x = p["token_embedder"]["embedding"][ids]  # [b, l, d]
    layer = p["encoder"]["layers_0"]
    eps = config.layer_norm_epsilon
    rms = lambda v, s: v / np.sqrt(np.mean(v**2, -1, keepdims=True) + eps) * s  # noqa: E731
    h = rms(x, layer["pre_attention_layer_norm"]["scale"])
    att = layer["attention"]
    q, k, v = (np.einsum("bld,dhk->blhk", h, att[n]["kernel"]) for n in ("query", "key", "value"))
    rel = np.arange(5)[None, :] - np.arange(5)[:, None]  # [q, k]: key - query
    buckets = np.asarray(relative_position_bucket(jnp.asarray(rel)))
    bias = p["encoder"]["relpos_bias"]["rel_embedding"][:, buckets]  # [h, q, k]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) + bias[None]
    logits = np.where(mask[:, None, None, :] == 1, logits, -1e30)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)  # [b, h, q, k]
    x = x + np.einsum("bqhd,hdm->bqm", np.einsum("bhqk,bkhd->bqhd", w, v), att["out"]["kernel"])
    h = rms(x, layer["pre_mlp_layer_norm"]["scale"])
    mlp = {name: m["kernel"] for name, m in layer["mlp"].items()}
    if version == "v1_0":
        inner = np.maximum(h @ mlp["wi"], 0)  # [b, l, d_ff]
    else:
        a = h @ mlp["wi_0"]  # GELU, tanh approximation ("gelu_new")
        gelu = 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a**3)))
        inner = gelu * (h @ mlp["wi_1"])
    x = x + inner @ mlp["wo"]
    np.testing.assert_allclose(out.hidden_states[0], x, rtol=1e-4, atol=1e-4)


def test_t5_small_shapes_without_allocating():
    config = T5Config.t5_small()
    ids = jax.ShapeDtypeStruct((3, 17), jnp.int32)

    def run(ids, mask):
        params = T5Encoder(config).init(jax.random.key(0), ids, mask)
        return params, masked_mean(T5Encoder(config).apply(params, ids, mask))

    params, pooled = jax.eval_shape(run, ids, ids)
    assert pooled.shape == (3, 6, 512)
    enc = params["params"]["encoder"]
    assert enc["relpos_bias"]["rel_embedding"].shape == (8, 32)
    assert enc["layers_5"]["attention"]["query"]["kernel"].shape == (512, 8, 64)
    assert enc["layers_5"]["attention"]["out"]["kernel"].shape == (8, 64, 512)
    assert set(enc["layers_0"]["mlp"]) == {"wi", "wo"}
    assert params["params"]["token_embedder"]["embedding"].shape == (32128, 512)


@pytest.mark.parametrize("version", VERSIONS)
def test_padding_does_not_change_a_texts_output(version):
    _, config, params = _load(version)
    ids = np.array([[5, 9, 13, 1]], np.int32)
    pooled = _pooled_fn(config)
    short = pooled(params, ids, np.ones_like(ids))
    padded_ids = np.concatenate([ids, np.zeros((1, 6), np.int32)], axis=1)
    padded_mask = (padded_ids > 0).astype(np.int32)
    padded_mask[0, 3] = 1
    padded = pooled(params, padded_ids, padded_mask)
    np.testing.assert_allclose(short, padded, atol=1e-5)


def test_export_with_symbolic_batch_and_length_round_trips():
    _, config, params = _load("v1_1")

    fn = _pooled_fn(config)
    spec = jax.ShapeDtypeStruct(export.symbolic_shape("b, l"), jnp.int32)
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    exp = export.deserialize(export.export(fn)(shapes, spec, spec).serialize())
    for batch, length in ((1, 4), (3, 11)):
        ids = np.random.default_rng(batch).integers(3, 200, (batch, length)).astype(np.int32)
        mask = np.ones_like(ids)
        np.testing.assert_allclose(exp.call(params, ids, mask), fn(params, ids, mask), atol=1e-5)


def test_wrong_tensor_shape_names_the_tensor(tmp_path):
    directory = tmp_path / "t5"
    shutil.copytree(ASSETS / "t5_v1_0_tiny", directory)
    cfg = json.loads((directory / "config.json").read_text())
    cfg["d_ff"] = 96
    (directory / "config.json").write_text(json.dumps(cfg))
    config = T5Config.from_hf(cfg)
    with pytest.raises(CheckpointError, match=r"DenseReluDense\.wi\.weight has shape \(128, 64\)"):
        t5_params_from_hf(config, read_tensors(directory), directory)


def test_unsupported_activation_is_refused():
    with pytest.raises(CheckpointError, match="feed_forward_proj 'swish'"):
        dataclasses.replace(T5Config.tiny(), feed_forward_proj="swish")


def _t5x_names(config):
    """The encoder parameter paths of t5x examples/t5/network.py, written out by hand."""
    wis = ("wi_0", "wi_1") if config.gated else ("wi",)
    names = ["token_embedder/embedding", "encoder/relpos_bias/rel_embedding"]
    for i in range(config.num_layers):
        layer = f"encoder/layers_{i}"
        names += [f"{layer}/pre_attention_layer_norm/scale", f"{layer}/pre_mlp_layer_norm/scale"]
        names += [f"{layer}/attention/{n}/kernel" for n in ("query", "key", "value", "out")]
        names += [f"{layer}/mlp/{n}/kernel" for n in (*wis, "wo")]
    return sorted([*names, "encoder/encoder_norm/scale"])


def _flat(tree):
    return {
        "/".join(p.key for p in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_t5x_tree_maps_one_to_one(version):
    _, config, params = _load(version)
    ours = _flat(params["params"])
    assert sorted(ours) == _t5x_names(config)
    # A T5X checkpoint tree (nested by those names, decoder included) loads unchanged.
    t5x = {"decoder": {"decoder_norm": {"scale": np.ones(config.d_model)}}}
    for name, value in ours.items():
        node = t5x
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    loaded = t5_params_from_t5x({"params": t5x}, config)
    assert sorted(_flat(loaded["params"])) == _t5x_names(config)
    for name, value in _flat(loaded["params"]).items():
        np.testing.assert_array_equal(value, ours[name])

    t5x["encoder"]["layers_1"]["mlp"]["wo"]["kernel"] = np.zeros((3, 3))
    with pytest.raises(CheckpointError, match="layers_1/mlp/wo/kernel has shape"):
        t5_params_from_t5x(t5x, config)
    del t5x["encoder"]["encoder_norm"]
    with pytest.raises(CheckpointError, match="lacks encoder/encoder_norm/scale"):
        t5_params_from_t5x(t5x, config)
    with pytest.raises(CheckpointError, match=r"lacks \['encoder'\]"):
        t5_params_from_t5x({"token_embedder": t5x["token_embedder"]}, config)


def test_load_backbone_reads_a_t5_directory():
    # The directory declares no length (no tokenizer_config.json, no n_positions): 512.
    backbone = load_backbone("t5", checkpoint=ASSETS / "t5_v1_1_tiny")
    assert (backbone.family, backbone.n_layers, backbone.hidden_size) == ("t5", 3, 64)
    assert backbone.max_length == 512
    golden = np.load(GOLDEN / "t5_v1_1_tiny.npz")
    texts = [str(t) for t in golden["texts"]]
    assert golden["mask"].sum(1).max() > 128  # the short texts and one of 159 tokens, uncut
    np.testing.assert_allclose(backbone.encode(texts), golden["pooled"], atol=1e-4)
    shorter = load_backbone("t5", checkpoint=ASSETS / "t5_v1_1_tiny", max_length=128)
    assert max(len(ids) for ids in shorter.tokenizer.encode(texts)) == 128
    with pytest.raises(CheckpointError, match="describes a t5 model"):
        load_backbone("bert", checkpoint=ASSETS / "t5_v1_1_tiny")
