"""Backbone: batched encode keeps order and ignores padding, compiles per bucket, exports."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

GOLDEN = Path(__file__).parents[1] / "golden" / "minilm_l6.npz"
ROOT = Path(__file__).parents[2]
TEXTS = [
    "user id 12, age 30, occupation doctor, zip code 55",
    "movie id 3, title great movie 4 (1995)",
    "user id 7",
    "movie",
    "user id 1, age 2, occupation artist, zip code 3, unknown 4 5 6 7 8 9 10 11 12 13 14 15",
]


def test_encode_keeps_order_and_matches_single_text_calls(tiny_backbone):
    out = tiny_backbone.encode(TEXTS, batch_size=2)  # packed or padded, with the others
    assert out.shape == (5, 2, 32) and out.dtype == np.float32
    alone = np.stack([tiny_backbone.encode([t], batch_size=2)[0] for t in TEXTS])
    np.testing.assert_allclose(out, alone, atol=1e-5)
    assert not np.allclose(out[0], out[1])
    assert tiny_backbone.encode([], batch_size=4).shape == (0, 2, 32)


def test_encode_compiles_once_per_bucket(tiny_backbone, monkeypatch):
    from model import backbone as backbone_module

    monkeypatch.setattr(backbone_module, "PACKED_ROW_LENGTH", 1)  # no text fits a row
    tiny_backbone.encode(TEXTS * 3, batch_size=4)  # lengths fall into buckets 16 and 32
    tiny_backbone.encode(TEXTS[::-1], batch_size=4)
    assert tiny_backbone._jitted._cache_size() == 2
    assert tiny_backbone._packed_jitted._cache_size() == 0


def test_bulk_encode_packs_short_texts_into_one_shape(tiny_backbone):
    tiny_backbone.encode(TEXTS * 3, batch_size=4)
    tiny_backbone.encode(TEXTS[::-1] + TEXTS[:2], batch_size=4)
    assert tiny_backbone._packed_jitted._cache_size() == 1
    assert tiny_backbone._jitted._cache_size() == 0  # no text is longer than a row


def test_pooled_fn_exports_with_symbolic_batch_and_length(tiny_backbone):
    b, n = export.symbolic_shape("b, l")
    spec = jax.ShapeDtypeStruct((b, n), jnp.int32)
    fn = jax.jit(tiny_backbone.pooled_fn)
    restored = export.deserialize(export.export(fn)(tiny_backbone.params, spec, spec).serialize())
    ids, mask = tiny_backbone.tokenizer.pad(tiny_backbone.tokenizer.encode(TEXTS[:3]), (16,))
    got = restored.call(tiny_backbone.params, ids, mask)
    assert got.shape == (3, tiny_backbone.n_layers, tiny_backbone.hidden_size)
    np.testing.assert_allclose(got, fn(tiny_backbone.params, ids, mask), atol=1e-6)


def _cli(*args, stdin: str, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "model.encode", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )


def test_cli_errors_are_friendly(tmp_path):
    proc = _cli("--backbone", "t5", "--out", str(tmp_path / "x.npy"), stdin="a\n")
    assert proc.returncode == 2
    assert "needs a checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.slow
def test_minilm_encode_matches_reference():
    from model.backbone import load_backbone

    golden = np.load(GOLDEN)
    backbone = load_backbone("minilm-l6")
    assert backbone.max_length == 256  # the checkpoint's sentence_bert_config.json
    got = backbone.encode(list(golden["texts"]), batch_size=3)
    np.testing.assert_allclose(got, golden["pooled"], atol=1e-4)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    golden = np.load(GOLDEN)
    lines = [str(t) for t in golden["texts"][:3]]
    out = tmp_path / "acts.npy"
    proc = _cli("--backbone", "minilm-l6", "--out", str(out), stdin="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (3, 6, 384)
    np.testing.assert_allclose(got, golden["pooled"][:3], atol=1e-4)


@pytest.mark.slow
def test_cli_keeps_compiled_shapes_for_the_next_run(tmp_path):
    """The first run writes its compiled shapes to the persistent compilation cache, the
    second loads every one of them (writes nothing new) and answers the same; off, none."""
    golden = np.load(GOLDEN)
    stdin = "\n".join(str(t) for t in golden["texts"][:3]) + "\n"
    cache = tmp_path / "xla"
    env = {"LEVI_COMPILATION_CACHE_DIR": str(cache), "LEVI_COMPILATION_CACHE": "1"}

    def entries() -> set[str]:
        return {p.name for p in cache.iterdir() if not p.name.endswith("-atime")}

    first = _cli("--out", str(tmp_path / "a.npy"), stdin=stdin, env=env)
    assert first.returncode == 0, first.stderr
    written = entries()
    assert written  # at least the backbone's shape
    second = _cli("--out", str(tmp_path / "b.npy"), stdin=stdin, env=env)
    assert second.returncode == 0, second.stderr
    assert entries() == written
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))

    off = tmp_path / "off"
    env_off = {"LEVI_COMPILATION_CACHE_DIR": str(off), "LEVI_COMPILATION_CACHE": "0"}
    third = _cli("--out", str(tmp_path / "c.npy"), stdin=stdin, env=env_off)
    assert third.returncode == 0, third.stderr
    assert not off.exists()
