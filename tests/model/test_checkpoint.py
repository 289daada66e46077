"""Loading Hugging Face-format directories: a tiny random BERT saved with safetensors, and
every way such a directory can be broken, each giving a CheckpointError that names the file or
tensor."""

import functools
import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from model.backbone import load_backbone
from model.bert import BertConfig, BertEncoder
from model.hf_checkpoint import CheckpointError, declared_max_length

CFG = BertConfig.tiny()
WORDS = ["user", "id", "movie", "title", "age", "hello", "world", "caf", "##e", ","]
WORDS += [str(i) for i in range(10)] + [f"##{i}" for i in range(10)]


def hf_tensors(config: BertConfig, params) -> dict[str, np.ndarray]:
    """The inverse of bert_params_from_hf: Flax params under Hugging Face BertModel names."""
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    e = p["embeddings"]
    out = {
        "embeddings.word_embeddings.weight": e["word_embeddings"]["embedding"],
        "embeddings.position_embeddings.weight": e["position_embeddings"],
        "embeddings.token_type_embeddings.weight": e["token_type_embeddings"],
        "embeddings.LayerNorm.weight": e["layer_norm"]["scale"],
        "embeddings.LayerNorm.bias": e["layer_norm"]["bias"],
    }

    def dense(name, q):
        out[f"{name}.weight"] = np.ascontiguousarray(q["kernel"].T)
        out[f"{name}.bias"] = q["bias"]

    def ln(name, q):
        out[f"{name}.weight"], out[f"{name}.bias"] = q["scale"], q["bias"]

    for i in range(config.num_layers):
        q, pre = p[f"layers_{i}"], f"encoder.layer.{i}"
        for ours, theirs in [("query", "query"), ("key", "key"), ("value", "value")]:
            dense(f"{pre}.attention.self.{theirs}", q["attention"][ours])
        dense(f"{pre}.attention.output.dense", q["attention"]["out"])
        ln(f"{pre}.attention.output.LayerNorm", q["attention_layer_norm"])
        dense(f"{pre}.intermediate.dense", q["mlp"]["wi"])
        dense(f"{pre}.output.dense", q["mlp"]["wo"])
        ln(f"{pre}.output.LayerNorm", q["mlp_layer_norm"])
    return out


def write_tokenizer(path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.decoder = decoders.WordPiece()
    tok.save(str(path))


def hf_config(config: BertConfig) -> dict:
    return {
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
    }


@functools.cache
def random_params(seed: int):
    ids = np.zeros((1, 8), np.int32)
    return jax.jit(BertEncoder(CFG).init)(jax.random.key(seed), ids, np.ones_like(ids))


def write_checkpoint(directory, seed: int = 0, prefix: str = ""):
    """A tiny random BERT in Hugging Face format; returns its Flax params."""
    directory.mkdir(parents=True, exist_ok=True)
    params = random_params(seed)
    tensors = {prefix + k: v for k, v in hf_tensors(CFG, params).items()}
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(hf_config(CFG)))
    write_tokenizer(directory / "tokenizer.json")
    return params


@pytest.fixture
def checkpoint(tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_loads_and_fingerprint_is_stable(checkpoint, tmp_path):
    a = load_backbone("bert", checkpoint, max_length=32)
    b = load_backbone("bert", checkpoint, max_length=32)
    assert (a.family, a.n_layers, a.hidden_size) == ("bert", 2, 32)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    # Same weights under the "bert." prefix in another directory: same fingerprint.
    write_checkpoint(tmp_path / "prefixed", prefix="bert.")
    assert load_backbone("bert", tmp_path / "prefixed", max_length=32).fingerprint == a.fingerprint
    # Anything that changes the activations changes the key.
    assert load_backbone("bert", checkpoint, max_length=16).fingerprint != a.fingerprint
    write_checkpoint(tmp_path / "other", seed=1)
    assert load_backbone("bert", tmp_path / "other", max_length=32).fingerprint != a.fingerprint


def test_sharded_weights_load_like_a_single_file(checkpoint, tmp_path):
    from safetensors.numpy import load_file

    sharded = tmp_path / "sharded"
    shutil.copytree(checkpoint, sharded)
    tensors = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(sharded / shard))
    index = {"weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    want = load_backbone("bert", checkpoint, max_length=32).fingerprint
    assert load_backbone("bert", sharded, max_length=32).fingerprint == want


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
        (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "model.safetensors").write_bytes(b"junk"), "cannot read safetensors"),
    ],
    ids=["no-config", "no-weights", "no-tokenizer", "bad-json", "bad-weights"],
)
def test_broken_directory_names_the_file(checkpoint, breakage, message):
    breakage(checkpoint)
    with pytest.raises(CheckpointError, match=message) as info:
        load_backbone("bert", checkpoint, max_length=32)
    assert str(checkpoint) in str(info.value)


def test_wrong_shape_and_missing_tensor_are_named(checkpoint):
    from safetensors.numpy import load_file

    tensors = load_file(str(checkpoint / "model.safetensors"))
    name = "encoder.layer.1.attention.self.key.weight"
    save_file(
        {**tensors, name: np.zeros((32, 16), np.float32)}, str(checkpoint / "model.safetensors")
    )
    with pytest.raises(CheckpointError, match=rf"{name} has shape \(32, 16\).*\(32, 32\)"):
        load_backbone("bert", checkpoint, max_length=32)
    del tensors[name]
    save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"{name} is missing"):
        load_backbone("bert", checkpoint, max_length=32)


def test_config_and_weights_disagree_on_depth(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(CheckpointError, match="encoder.layer.1.*num_hidden_layers=1"):
        load_backbone("bert", checkpoint, max_length=32)


def test_wrong_family_or_no_checkpoint(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="needs a checkpoint"):
        load_backbone("bert")
    with pytest.raises(CheckpointError, match="needs a checkpoint"):
        load_backbone("t5")
    with pytest.raises(CheckpointError, match="describes a bert model.*--backbone bert"):
        load_backbone("t5", checkpoint)
    with pytest.raises(ValueError, match="exceeds the 64 tokens .*max_position_embeddings"):
        load_backbone("bert", checkpoint, max_length=100)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type='gpt2'"):
        load_backbone("bert", checkpoint, max_length=32)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone("bert", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown backbone 'gpt'"):
        load_backbone("gpt", checkpoint)


@pytest.mark.parametrize(
    "files, want",
    [
        ({}, (64, "config.json max_position_embeddings")),
        (
            {"sentence_bert_config.json": {"max_seq_length": 48}},
            (48, "sentence_bert_config.json max_seq_length"),
        ),
        (
            {
                "sentence_bert_config.json": {"max_seq_length": 48},
                "tokenizer_config.json": {"model_max_length": 40},
            },
            (48, "sentence_bert_config.json max_seq_length"),
        ),
        (
            {"tokenizer_config.json": {"model_max_length": 40}},
            (40, "tokenizer_config.json model_max_length"),
        ),
        (
            {"tokenizer_config.json": {"model_max_length": 1e30}},  # transformers' "no limit"
            (64, "config.json max_position_embeddings"),
        ),
        (
            {"sentence_bert_config.json": {"max_seq_length": 1000}},  # past the position table
            (64, "config.json max_position_embeddings"),
        ),
    ],
    ids=["positions", "sentence-transformers", "st-first", "tokenizer", "no-limit", "capped"],
)
def test_declared_max_length(tmp_path, files, want):
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    assert declared_max_length(tmp_path, hf_config(CFG)) == want


def test_declared_max_length_without_a_position_table(tmp_path):
    t5_like = {"model_type": "t5", "d_model": 64}
    assert declared_max_length(tmp_path, t5_like)[0] == 512
    assert declared_max_length(tmp_path, {**t5_like, "n_positions": 256})[0] == 256
    (tmp_path / "tokenizer_config.json").write_text('{"model_max_length": 128}')
    assert declared_max_length(tmp_path, t5_like)[0] == 128


@pytest.mark.parametrize("value", ['"long"', "0", "12.5", "true"])
def test_bad_declared_max_length_names_the_file_and_field(tmp_path, value):
    (tmp_path / "sentence_bert_config.json").write_text(f'{{"max_seq_length": {value}}}')
    with pytest.raises(CheckpointError, match="sentence_bert_config.json: max_seq_length is"):
        declared_max_length(tmp_path, hf_config(CFG))


def test_default_max_length_is_the_checkpoints_and_can_only_be_lowered(checkpoint):
    assert load_backbone("bert", checkpoint).max_length == 64  # max_position_embeddings
    (checkpoint / "sentence_bert_config.json").write_text('{"max_seq_length": 48}')
    backbone = load_backbone("bert", checkpoint)
    assert backbone.max_length == backbone.tokenizer.max_length == 48
    assert len(backbone.tokenizer.encode(["hello " * 100])[0]) == 48
    assert load_backbone("bert", checkpoint, max_length=16).max_length == 16
    with pytest.raises(
        ValueError,
        match=r"max_length 49 exceeds the 48 tokens that .* allows \(sentence_bert_config\.json "
        r"max_seq_length\); pass --max-length 48 or less",
    ):
        load_backbone("bert", checkpoint, max_length=49)


def test_bfloat16_and_float32_tensors_read_as_float32(tmp_path):
    """numpy reads the file directly; its bfloat16 tensors go through the flax reader."""
    import jax.numpy as jnp
    from safetensors.flax import save_file as save_flax

    from model.hf_checkpoint import _load_safetensors

    path = tmp_path / "model.safetensors"
    half = jnp.asarray([[0.5, -1.25, 3.0], [1e-3, 2.0, -7.5]], jnp.bfloat16)
    save_flax({"half": half, "full": jnp.asarray([0.1, 0.2], jnp.float32)}, str(path))
    got = _load_safetensors(path)
    assert {k: v.dtype for k, v in got.items()} == {"half": np.float32, "full": np.float32}
    np.testing.assert_array_equal(got["half"], np.asarray(half, np.float32))
    np.testing.assert_array_equal(got["full"], np.asarray([0.1, 0.2], np.float32))
