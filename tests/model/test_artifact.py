"""Artifact: export -> load round trip equals the live model; corrupted artifacts are refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from model.artifact import ArtifactError, load_artifact
from model.artifact_export import export_artifact
from model.artifact_layout import flatten_params, unflatten_params
from model.backbone import Backbone
from model.features import Column, FeatureSpec
from model.head import LeviHead
from model.head_config import HeadConfig
from model.levi import LeviModel
from model.reference import ReferenceStats
from model.templates import views_from_templates

ROOT = Path(__file__).parents[2]
WORDS = ("user", "id", "age", "movie", "title", "great", "awful", ",", *map(str, range(40)))
GENRES = ("Action", "Comedy", "Horror")


def _tiny_backbone(directory: Path) -> Backbone:
    """BertConfig.tiny() at random init with a word-level tokenizer over a few words."""
    from support.tiny_assets import tiny_bert, write_word_tokenizer

    return tiny_bert(write_word_tokenizer(directory / "tokenizer.json", WORDS, lowercase=False))


def _reference(n_views: int, n_layers: int, d: int, median: float = 0.2) -> ReferenceStats:
    rng = np.random.default_rng(0)
    edges = np.linspace(1.0, 5.0, 9)
    return ReferenceStats(
        activation_mean=rng.normal(size=(n_views, n_layers, d)),
        activation_var=rng.uniform(0.5, 2.0, size=(n_views, n_layers, d)),
        prediction_edges=edges,
        prediction_hist=np.full(8, 1 / 8),
        disagreement_quantiles=np.array([median, 2 * median, 4 * median]),
    )


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict:
    """Everything export_artifact takes, for a tiny backbone and head."""
    tmp = tmp_path_factory.mktemp("parts")
    backbone = _tiny_backbone(tmp)
    features = FeatureSpec(
        (
            Column("user_id", "user", "categorical", vocab=("1", "2", "3")),
            Column("occupation", "user", "categorical", vocab=("artist", "doctor")),
            Column("item_id", "item", "categorical", vocab=("10", "11", "12", "13")),
            Column("title", "item", "text", mlp=False),
            Column("genres", "item", "multi_categorical", vocab=tuple(g.lower() for g in GENRES)),
        )
    )
    views = views_from_templates(
        user="user id {user_id}, occupation {occupation}", item="movie id {item_id}, title {title}"
    )
    config = HeadConfig(
        vocab_sizes=features.vocab_sizes,
        n_multi_hot=len(GENRES),
        layers=(0, 1),
        embed_dim=4,
        mlp_dims=(16, 8),
        adapter_hidden=8,
    )
    acts = np.zeros((1, views.n_views, backbone.n_layers, backbone.hidden_size), np.float32)
    head_params = LeviHead(config).init(
        jax.random.key(1), np.zeros((1, 3), np.int32), np.zeros((1, 3), np.float32), acts
    )
    users = pd.DataFrame(
        {
            "user_id": ["1", "2", "3"],
            "age": [20, 30, 40],
            "gender": ["M", "F", "M"],
            "occupation": ["artist", "doctor", "artist"],
            "zip_code": ["1", "2", "3"],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": ["10", "11", "12", "13"],
            "title": ["great movie", "awful", "a", "b"],
            "genres": [("Action", "Comedy"), (), ("Horror",), ("Action",)],
        }
    )
    report = tmp / "report"
    (report / "plots").mkdir(parents=True)
    (report / "report.json").write_text('{"methods": {}}')
    (report / "report.md").write_text("# report\n")
    (report / "plots" / "per_layer_rmse.png").write_bytes(b"\x89PNG fake")
    (report / "checkpoint.bin").write_bytes(b"not part of the artifact")
    return dict(
        backbone=backbone,
        head_config=config,
        head_params=head_params,
        features=features,
        views=views,
        users=users,
        items=items,
        reference=_reference(views.n_views, backbone.n_layers, backbone.hidden_size),
        report_dir=report,
        training_config={"seeds": (0, 1), "lr": np.float32(1e-3)},
    )


@pytest.fixture(scope="module")
def exported(parts, tmp_path_factory) -> Path:
    return export_artifact(tmp_path_factory.mktemp("artifacts"), model_version="v1", **parts)


@pytest.fixture(scope="module")
def artifact(exported):
    return load_artifact(exported)


def test_round_trip_equals_live_functions(parts, artifact):
    backbone, config = parts["backbone"], parts["head_config"]
    live_encode = jax.jit(backbone.pooled_fn)
    rng = np.random.default_rng(0)
    for batch, length in [(3, 8), (5, 16)]:  # symbolic batch and length
        ids = rng.integers(0, 40, (batch, length)).astype(np.int32)
        mask = (np.arange(length)[None] < rng.integers(1, length + 1, (batch, 1))).astype(np.int32)
        got = artifact.encode(ids, mask)
        assert got.shape == (batch, backbone.n_layers, backbone.hidden_size)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, live_encode(backbone.params, ids, mask), atol=1e-5)

    live_head = jax.jit(LeviModel(config).predict_batch)
    for batch in (2, 7):  # symbolic batch
        ids = rng.integers(0, 4, (batch, 3)).astype(np.int32)
        multi_hot = rng.integers(0, 2, (batch, 3)).astype(np.float32)
        acts = rng.normal(size=(batch, 2, backbone.n_layers, backbone.hidden_size))
        acts = acts.astype(np.float32)
        adapters, rating = artifact.score(ids, multi_hot, acts)
        want_adapters, want_rating = live_head(parts["head_params"], ids, multi_hot, acts)
        assert adapters.shape == (batch, 2) and rating.shape == (batch,)
        np.testing.assert_allclose(adapters, want_adapters, atol=1e-5)
        np.testing.assert_allclose(rating, want_rating, atol=1e-5)


def test_exported_decomposition_equals_the_exported_head(artifact):
    """The side and pair functions (first-layer decomposition) answer as the whole head."""
    assert artifact.decomposed and artifact.layout.view_sides == ("user", "item")
    assert (artifact.layout.n_user_ids, artifact.layout.n_user_multi_hot) == (2, 0)
    rng = np.random.default_rng(5)
    n_layers, d = artifact.reference.activation_mean.shape[1:]
    for batch in (1, 6):  # symbolic batch
        sizes = artifact.head_config.vocab_sizes
        ids = np.stack([rng.integers(0, v, batch) for v in sizes], axis=1).astype(np.int32)
        multi_hot = rng.integers(0, 2, (batch, 3)).astype(np.float32)
        acts = rng.normal(size=(batch, 2, n_layers, d)).astype(np.float32)
        user = artifact.side("user", ids[:, :2], multi_hot[:, :0], acts[:, :1])
        item = artifact.side("item", ids[:, 2:], multi_hot, acts[:, 1:])
        adapters, rating = artifact.pair(user, item)
        want_adapters, want_rating = artifact.score(ids, multi_hot, acts)
        np.testing.assert_allclose(adapters, want_adapters, atol=1e-5)
        np.testing.assert_allclose(rating, want_rating, atol=1e-5)


def test_pair_of_table_rows_equals_the_pair_of_gathered_parts(artifact):
    """``pair_rows`` gathers inside the compiled call: the same answers as ``pair`` on the
    rows gathered in numpy, whether the tables are read in place (64-byte aligned) or not,
    and a table changed between calls is read as it is at the call."""
    from model.aligned_arrays import aligned_zeros
    from model.decomposed_layout import part_widths

    rng = np.random.default_rng(6)
    widths = part_widths(artifact.head_config)

    def table(rows, aligned):
        out = {}
        for k, w in widths.items():
            values = rng.normal(size=(rows, *w)).astype(np.float32)
            out[k] = aligned_zeros(values.shape) if aligned else np.zeros_like(values)
            out[k][...] = values
        return out

    for aligned in (True, False):
        users, items = table(5, aligned), table(9, aligned)
        ur = np.array([0, 4, 4, 2, 1, 0], np.int32)
        ir = np.array([8, 0, 3, 3, 7, 1], np.int32)
        got = artifact.pair_rows(users, ur, items, ir)
        want = artifact.pair(
            {k: v[ur] for k, v in users.items()}, {k: v[ir] for k, v in items.items()}
        )
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
        np.testing.assert_allclose(got[1], want[1], atol=1e-6)
        items["adapters"][3] += 1.0  # changed in place between calls: read as it is now
        again = artifact.pair_rows(users, ur, items, ir)
        want = artifact.pair(
            {k: v[ur] for k, v in users.items()}, {k: v[ir] for k, v in items.items()}
        )
        np.testing.assert_allclose(again[0], want[0], atol=1e-6)
        assert not np.allclose(again[0][2], got[0][2])


def test_loaded_contents_equal_exported(parts, artifact):
    assert artifact.model_version == "v1"
    assert artifact.head_config == parts["head_config"]
    assert artifact.features == parts["features"]
    assert artifact.views == parts["views"]
    assert artifact.tokenizer.max_length == parts["backbone"].max_length
    text = ["user id 3 , great movie"]
    assert artifact.tokenizer.encode(text) == parts["backbone"].tokenizer.encode(text)
    for table, frame in ((artifact.users, parts["users"]), (artifact.items, parts["items"])):
        # Arrow tables (no pandas in the service); genres back as lists
        assert table.column_names == list(frame.columns)
        want = [
            {k: list(v) if isinstance(v, tuple) else v for k, v in r.items()}
            for r in frame.to_dict("records")
        ]
        assert table.to_pylist() == want
    for name, value in parts["reference"].to_dict().items():
        np.testing.assert_array_equal(artifact.reference.to_dict()[name], value)


def test_ood_score_is_spread_over_training_median(artifact):
    median = artifact.reference.disagreement_median  # 0.2
    adapters = np.array([[3.0 - median, 3.0 + median], [4.0, 4.0], [1.0, 1.0 + 4 * median]])
    np.testing.assert_allclose(artifact.ood_score(adapters), [1.0, 0.0, 2.0], rtol=1e-6)


def test_score_rejects_wrong_feature_width(artifact):
    with pytest.raises(ValueError, match=r"ids must have shape \['b', 3\], got \(2, 4\)"):
        artifact.score(np.zeros((2, 4)), np.zeros((2, 3)), np.zeros((2, 2, 2, 32)))


def test_manifest_lists_every_file_with_sha256(exported, parts):
    manifest = json.loads((exported / "manifest.json").read_text())
    on_disk = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((exported / rel).read_bytes()).hexdigest() == digest
    expected = {
        "backbone.jaxexport",
        "backbone.safetensors",
        "head.jaxexport",
        "head.safetensors",
        "tokenizer.json",
        "features.json",
        "users.parquet",
        "items.parquet",
        "reference.safetensors",
        "report.json",
        "report.md",
        "plots/per_layer_rmse.png",
        "user_side.jaxexport",
        "item_side.jaxexport",
        "pair.jaxexport",
    }
    assert set(manifest["files"]) == expected  # checkpoint.bin of report_dir not copied
    assert manifest["format_version"] == 2
    assert "cpu" in manifest["platforms"]
    bb = manifest["backbone"]
    assert bb["fingerprint"] == parts["backbone"].fingerprint
    assert (bb["n_layers"], bb["hidden_size"], bb["max_length"]) == (2, 32, 32)
    assert bb["length_buckets"] == [16, 32]
    assert set(manifest["libraries"]) == {"jax", "jaxlib", "flax", "numpy"}
    assert manifest["rating_range"] == [1.0, 5.0]
    assert manifest["training_config"] == {"seeds": [0, 1], "lr": pytest.approx(1e-3)}


def _file_modes(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_every_file_has_the_manifests_mode(exported):
    # safetensors' own save_file makes 0600 files, which the service's uid could not read.
    modes = _file_modes(exported)
    assert {rel: m for rel, m in modes.items() if m != modes["manifest.json"]} == {}
    assert modes["backbone.safetensors"] & 0o400


def test_file_modes_follow_the_umask(parts, tmp_path):
    old = os.umask(0o027)
    try:
        path = export_artifact(tmp_path, model_version="umask-027", **parts)
    finally:
        os.umask(old)
    modes = _file_modes(path)
    assert "head.safetensors" in modes and "reference.safetensors" in modes
    assert modes == dict.fromkeys(modes, 0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755  # the version directory, on purpose


def test_save_tensors_writes_like_an_ordinary_file(tmp_path):
    from safetensors.numpy import load_file

    from model.safetensors_file import save_tensors

    old = os.umask(0o002)
    try:
        save_tensors({"a": np.arange(3, dtype=np.float32)}, tmp_path / "new.safetensors")
        (tmp_path / "kept.safetensors").touch(mode=0o600)
        save_tensors({"b": np.ones(2, np.int32)}, tmp_path / "kept.safetensors")
        with pytest.raises(Exception, match="Unknown dtype"):
            save_tensors({"c": np.array(["text"])}, tmp_path / "failed.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.safetensors").stat().st_mode) == 0o664
    np.testing.assert_array_equal(load_file(str(tmp_path / "new.safetensors"))["a"], [0, 1, 2])
    assert stat.S_IMODE((tmp_path / "kept.safetensors").stat().st_mode) == 0o600
    assert load_file(str(tmp_path / "kept.safetensors")).keys() == {"b"}
    assert not (tmp_path / "failed.safetensors").exists()


def test_params_are_arguments_not_constants(exported, parts):
    from safetensors.numpy import load_file

    stored = load_file(str(exported / "head.safetensors"))
    assert stored.keys() == flatten_params(parts["head_params"]).keys()
    assert unflatten_params(stored).keys() == parts["head_params"].keys()
    # Constants baked in would make the export as large as the weights; arguments keep it small.
    n_bytes = sum(v.nbytes for v in load_file(str(exported / "backbone.safetensors")).values())
    assert (exported / "backbone.jaxexport").stat().st_size < n_bytes


def test_latest_points_at_newest_and_versions_are_not_overwritten(parts, tmp_path):
    first = export_artifact(tmp_path, model_version="2024-a", **parts)
    assert (tmp_path / "latest").resolve() == first.resolve()
    second = export_artifact(tmp_path, model_version="2024-b", **parts)
    assert (tmp_path / "latest").is_symlink()
    assert (tmp_path / "latest").resolve() == second.resolve()
    assert load_artifact(tmp_path / "latest").model_version == "2024-b"
    with pytest.raises(FileExistsError, match="2024-a already exists"):
        export_artifact(tmp_path, model_version="2024-a", **parts)
    with pytest.raises(ValueError, match="not a valid directory name"):
        export_artifact(tmp_path, model_version="latest", **parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2024-a", "2024-b", "latest"]


def _truncate(d: Path) -> None:
    data = (d / "backbone.jaxexport").read_bytes()
    (d / "backbone.jaxexport").write_bytes(data[: len(data) // 2])


def _flip_byte(d: Path) -> None:
    data = bytearray((d / "head.safetensors").read_bytes())
    data[-3] ^= 0x01
    (d / "head.safetensors").write_bytes(bytes(data))


def _edit_manifest(**changes):
    def edit(d: Path) -> None:
        manifest = json.loads((d / "manifest.json").read_text())
        manifest.update(changes)
        (d / "manifest.json").write_text(json.dumps(manifest))

    return edit


def _unlist(name: str):
    def edit(d: Path) -> None:
        manifest = json.loads((d / "manifest.json").read_text())
        del manifest["files"][name]
        (d / "manifest.json").write_text(json.dumps(manifest))

    return edit


def _wrong_param_shape(d: Path) -> None:
    """A consistent-looking artifact whose head parameters no longer fit the export."""
    from safetensors.numpy import load_file, save_file

    flat = load_file(str(d / "head.safetensors"))
    name = next(k for k in flat if k.endswith("mlp_0/kernel"))
    flat[name] = np.zeros((flat[name].shape[0], 17), np.float32)
    save_file(flat, str(d / "head.safetensors"))
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"]["head.safetensors"] = hashlib.sha256(
        (d / "head.safetensors").read_bytes()
    ).hexdigest()
    (d / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_truncate, r"backbone\.jaxexport: sha256 .* does not match .* truncated"),
        (_flip_byte, r"head\.safetensors: sha256 .* does not match"),
        (_edit_manifest(format_version=99), r"format_version 99 is not supported"),
        (_edit_manifest(platforms=["tpu"]), r"exported for platforms \['tpu'\].* runs on '\w+'"),
        (lambda d: (d / "tokenizer.json").unlink(), r"tokenizer\.json is missing"),
        (lambda d: (d / "manifest.json").unlink(), r"manifest\.json does not exist"),
        (lambda d: (d / "manifest.json").write_text("{"), r"manifest\.json is not valid JSON"),
        (_unlist("features.json"), r"does not list required file\(s\) \['features\.json'\]"),
        (_wrong_param_shape, r"head\.safetensors: parameter 'params/mlp/mlp_0/kernel' has shape"),
    ],
    ids=[
        "truncated",
        "flipped-byte",
        "format-version",
        "platform",
        "no-tokenizer",
        "no-manifest",
        "bad-json",
        "unlisted",
        "param-shape",
    ],
)
def test_refuses_broken_artifacts(exported, tmp_path, corrupt, message):
    copy = tmp_path / "v1"
    shutil.copytree(exported, copy)
    load_artifact(copy)  # the untouched copy loads
    corrupt(copy)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(copy)


def test_artifacts_root_is_refused_with_a_hint(exported):
    with pytest.raises(ArtifactError, match=r"looks like the artifacts root: pass .*latest"):
        load_artifact(exported.parent)


def test_loader_does_not_import_training():
    code = (
        "import sys, model.artifact; "
        "bad = sorted(m for m in sys.modules if m == 'training' or m.startswith('training.')); "
        "assert not bad, bad"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 5 and parts[5] == str(path):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi))
    return out


def test_parameters_are_used_in_place_from_the_mapped_files(exported, artifact):
    # The backbone's weights are its file's pages (shared by worker processes, resident where
    # read), not copies: every device buffer lies inside a map of backbone.safetensors (every
    # tensor of a BERT-family checkpoint is a multiple of 64 bytes, so all sit aligned).
    ranges = _mapped_ranges((exported / "backbone.safetensors").resolve())
    assert ranges
    for leaf in jax.tree_util.tree_leaves(artifact.backbone_params):
        pointer = leaf.unsafe_buffer_pointer()
        assert any(lo <= pointer < hi for lo, hi in ranges), leaf.shape
