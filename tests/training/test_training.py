"""The offline trainer: one-step smoke, resume, activation cache, learning, the whole path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training import baselines, evaluate
from training.config import METHODS, TrainConfig
from training.precompute import precompute
from training.train import (
    TrainTables,
    device_tables,
    head_config,
    make_mesh,
    predict_adapters,
    predict_ratings,
    rmse,
    train_run,
)

N_USERS, N_ITEMS, N_PAIRS, L, D = 20, 25, 400, 2, 8


def synthetic_tables(seed: int = 0, noise: float = 0.2) -> TrainTables:
    """Ratings = 3 + user bias + item quality, where the item quality is in its text too."""
    rng = np.random.default_rng(seed)
    user_bias = rng.normal(0, 0.7, N_USERS)
    quality = rng.normal(0, 0.7, N_ITEMS)
    item_text = rng.normal(size=(N_ITEMS, L, D)).astype(np.float32)
    item_text[:, :, 0] = quality[:, None] * 3  # the text reveals the quality
    u = rng.integers(0, N_USERS, N_PAIRS)
    i = rng.integers(0, N_ITEMS, N_PAIRS)
    y = np.clip(3 + user_bias[u] + quality[i] + rng.normal(0, noise, N_PAIRS), 1, 5)
    return TrainTables(
        user_ids=(np.arange(N_USERS)[:, None] + 1).astype(np.int32),
        item_ids=(np.arange(N_ITEMS)[:, None] + 1).astype(np.int32),
        user_multi_hot=np.zeros((N_USERS, 0), np.float32),
        multi_hot=np.zeros((N_ITEMS, 0), np.float32),
        views=(rng.normal(size=(N_USERS, L, D)).astype(np.float16), item_text.astype(np.float16)),
        pair_user=u.astype(np.int32),
        pair_item=i.astype(np.int32),
        pair_text=np.stack([u, i], 1).astype(np.int32),
        rating=y.astype(np.float32),
    )


def _setup(method="levi", **overrides):
    cfg = TrainConfig.tiny().replace(**overrides)
    tables = synthetic_tables()
    mesh = make_mesh()
    head = head_config(
        method,
        cfg,
        vocab_sizes=(N_USERS + 1, N_ITEMS + 1),
        n_multi_hot=0,
        n_layers=L,
        rating_mean=float(tables.rating[:300].mean()),
        rating_range=(1.0, 5.0),
    )
    return cfg, tables, mesh, head, device_tables(tables, mesh)


TRAIN, VAL, TEST = np.arange(300), np.arange(300, 350), np.arange(350, 400)


def test_one_training_step_smoke():
    cfg, _, mesh, head, data = _setup()
    result = train_run(
        "levi",
        head,
        cfg,
        data,
        TRAIN,
        VAL,
        lr=1e-3,
        seed=0,
        mesh=mesh,
        max_steps=1,
        progress=False,
    )
    assert result.steps == 1 and not result.finished
    leaves = [np.asarray(x) for x in __import__("jax").tree_util.tree_leaves(result.params)]
    assert leaves and all(np.isfinite(x).all() for x in leaves)


def test_resume_continues_from_the_saved_step(tmp_path):
    cfg, _, mesh, head, data = _setup(steps_per_chunk=2, max_epochs=2, patience=5)
    kw = dict(lr=1e-2, seed=0, mesh=mesh, progress=False)
    full = train_run("levi", head, cfg, data, TRAIN, VAL, checkpoint_dir=tmp_path / "a", **kw)
    assert full.finished and full.steps == 2 * (len(TRAIN) // cfg.batch_size)

    cut = train_run(
        "levi", head, cfg, data, TRAIN, VAL, checkpoint_dir=tmp_path / "b", max_steps=3, **kw
    )
    assert not cut.finished and cut.steps == 3 and (tmp_path / "b" / "3").is_dir()
    resumed = train_run("levi", head, cfg, data, TRAIN, VAL, checkpoint_dir=tmp_path / "b", **kw)
    assert resumed.resumed_from == 3 and resumed.finished and resumed.steps == full.steps
    # Same batches, same dropout keys: the resumed run ends where the uninterrupted one did.
    assert resumed.val_rmse == pytest.approx(full.val_rmse, abs=1e-5)
    again = train_run("levi", head, cfg, data, TRAIN, VAL, checkpoint_dir=tmp_path / "b", **kw)
    assert again.resumed_from == full.steps and again.steps == full.steps  # done: no training


def test_levi_learns_the_synthetic_signal():
    cfg, tables, mesh, head, data = _setup(max_epochs=25, patience=25, dropout=0.0)
    result = train_run(
        "levi", head, cfg, data, TRAIN, VAL, lr=1e-2, seed=0, mesh=mesh, progress=False
    )
    pred = predict_ratings(head, predict_adapters(head, result.params, data, TEST, mesh=mesh))
    y = tables.rating[TEST]
    mean_rmse = rmse(np.full(len(TEST), tables.rating[TRAIN].mean()), y)
    assert rmse(pred, y) < 0.6 * mean_rmse


class CountingEncoder:
    def __init__(self, backbone):
        self.backbone, self.calls, self.texts = backbone, 0, 0
        self.fingerprint = backbone.fingerprint
        self.n_layers, self.hidden_size = backbone.n_layers, backbone.hidden_size

    def encode(self, texts, batch_size=64, progress=False):
        self.calls += 1
        self.texts += len(texts)
        return self.backbone.encode(texts, batch_size=batch_size)


def test_activation_cache_hit_skips_the_encoder(tmp_path, tiny_spec, tiny_backbone):
    from training.data import load_spec_dataset
    from training.spec import load_spec

    spec = load_spec(tiny_spec)
    ds, views = load_spec_dataset(spec), spec.views()
    pairs = ds.ratings[["user_id", "item_id"]]
    rows = (  # the pairs as entity rows, as a run keeps them
        pd.Index(ds.users["user_id"]).get_indexer(pairs["user_id"]),
        pd.Index(ds.items["item_id"]).get_indexer(pairs["item_id"]),
    )
    first = CountingEncoder(tiny_backbone)
    a = precompute(first, views, ds.users, ds.items, *rows, cache=tmp_path, progress=False)
    n_users, n_items = pairs["user_id"].nunique(), pairs["item_id"].nunique()
    assert first.calls >= 1 and first.texts == a.n_encoded == n_users + n_items
    assert [m.shape for m in a.matrices] == [(n_users, 2, 32), (n_items, 2, 32)]
    assert list((tmp_path / "activations").iterdir())[0].name == tiny_backbone.fingerprint

    second = CountingEncoder(tiny_backbone)
    b = precompute(second, views, ds.users, ds.items, *rows, cache=tmp_path, progress=False)
    assert second.calls == 0 and b.n_encoded == 0
    np.testing.assert_array_equal(a.index, b.index)
    for x, y in zip(a.matrices, b.matrices, strict=True):
        np.testing.assert_array_equal(x, y)
    # The cached rows are the encoder's output (float16).
    user_text = views.views[0].render(ds.users.iloc[0].to_dict(), {})
    row = a.index[np.flatnonzero(pairs["user_id"].to_numpy() == ds.users["user_id"][0])[0], 0]
    np.testing.assert_allclose(
        a.matrices[0][row], tiny_backbone.encode([user_text])[0], rtol=2e-3, atol=2e-3
    )


def test_whole_path_on_tiny_data(tmp_path, tiny_spec, tiny_backbone):
    from training.pipeline import run_pipeline

    cfg = TrainConfig.tiny().replace(lrs=(1e-2,), max_epochs=2, dataset=str(tiny_spec))
    result = run_pipeline(
        cfg,
        output_dir=tmp_path,
        backbone=tiny_backbone,
        cache=tmp_path / "cache",
        progress=False,
        log=lambda _: None,
    )
    doc = json.loads((result.report_dir / "report.json").read_text())
    assert list(doc) == [
        "dataset",
        "split",
        "backbone",
        "seeds",
        "methods",
        "exported",
        "online_corrections",
    ]
    assert doc["seeds"] == [0, 1] and list(doc["methods"]) == list(METHODS)
    for name, m in doc["methods"].items():
        keys = {"id_rmse", "ood_rmse", "ood_rmse_by_group"} | (
            {"per_layer"} if name == "levi" else set()
        )
        assert set(m) == keys, name
        assert set(m["id_rmse"]) == {"mean", "std"} and np.isfinite(m["ood_rmse"]["mean"])
        assert m["ood_rmse_by_group"], name
    assert [e["layer"] for e in doc["methods"]["levi"]["per_layer"]] == [1, 2]
    assert set(doc["exported"]) == {"id_test_rmse", "ood_rmse"}
    # The artifact loads with every check, carries the report under its checksums, and the
    # report's `exported` numbers are those of the model in it (scored through the artifact).
    from model.artifact import load_artifact

    art = load_artifact(tmp_path / "latest")
    assert art.path == result.artifact.resolve()
    assert {"report.json", "report.md", "plots/per_layer_rmse.png"} <= set(art.manifest["files"])
    assert json.loads((art.path / "report.json").read_text()) == doc
    # Scored through the exported head, vocabularies and entity tables with the run's own
    # activations, the numbers are the live parameters'.
    md = (result.report_dir / "report.md").read_text()
    live = re.search(r"live parameters gave ID ([0-9.]+), OOD ([0-9.]+)", md)
    assert live, md
    assert doc["exported"]["id_test_rmse"] == pytest.approx(float(live[1]), abs=1e-4)
    assert doc["exported"]["ood_rmse"] == pytest.approx(float(live[2]), abs=1e-4)
    # The backbone half (views, tokenizer, exported backbone) is checked end to end on a
    # fixed sample: here every held-out pair (fewer than the sample size).
    check = re.search(
        r"fixed sample of ([0-9,]+) pairs \(([0-9,]+) test, ([0-9,]+) ood\): .*largest difference "
        r"from the live parameters ([0-9.e-]+)",
        md,
    )
    assert check, md
    sizes = doc["split"]["sizes"]
    assert [int(check[k].replace(",", "")) for k in (1, 2, 3)] == [
        sizes["test"] + sizes["ood"],
        sizes["test"],
        sizes["ood"],
    ]
    assert float(check[4]) < 1e-3  # both read the run's activations: about 1e-5
    assert (result.report_dir / "report.md").read_text().startswith("# LEVI report")
    # The online corrections: fitted on ID validation, evaluated by progressive validation,
    # their shrinkage in the manifest the service reads.
    online = doc["online_corrections"]
    assert {"k_item", "k_user", "k_item_oov", "fitted_on", "test", "ood", "ood_groups"} <= set(
        online
    )
    assert online["fitted_on"]["n"] == doc["split"]["sizes"]["val"]
    assert online["ood"]["n"] == doc["split"]["sizes"]["ood"]
    # the model alone: the exported run's own live figures (the same pairs, in time order)
    assert online["ood"]["model"] == pytest.approx(float(live[2]), abs=1e-4)
    assert online["test"]["model"] == pytest.approx(float(live[1]), abs=1e-4)
    assert set(online["ood_groups"]) == set(doc["split"]["ood_groups"])
    manifest = art.manifest["corrections"]
    assert {k: manifest[k] for k in ("k_item", "k_user", "k_item_oov")} == {
        k: online[k] for k in ("k_item", "k_user", "k_item_oov")
    }
    assert "## Online corrections (progressive validation)" in md
    for plot in ("plots/ood_rmse_by_group.png", "plots/per_layer_rmse.png"):
        assert (result.report_dir / plot).read_bytes()[:4] == b"\x89PNG"
    assert set(result.timings) >= {"data", "encode", "train", "evaluate"}


def test_biases_recover_known_biases():
    rng = np.random.default_rng(0)
    bu, bi = rng.normal(0, 0.5, 30), rng.normal(0, 0.5, 40)
    u, i = rng.integers(0, 30, 5000), rng.integers(0, 40, 5000)
    y = 3.5 + bu[u] + bi[i]
    model = baselines.fit_biases(u, i, y, n_users=30, n_items=40, reg=0.01, rating_range=(1, 5))
    np.testing.assert_allclose(model.predict(u, i), np.clip(y, 1, 5), atol=0.02)
    # the clip is the spec's rating scale, not 1-5
    wide = baselines.fit_biases(u, i, y, n_users=30, n_items=40, reg=0.01, rating_range=(3, 4))
    assert wide.predict(u, i).min() == 3 and wide.predict(u, i).max() == 4


def test_auroc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0, 1, 50).round(1), rng.normal(0.5, 1, 40).round(1)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert evaluate.auroc(neg, pos) == pytest.approx(brute)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown method"):
        TrainConfig(methods=("levi", "nope"))
    with pytest.raises(ValueError, match="seeds must name"):
        TrainConfig(seeds=())


def test_max_length_defaults_to_the_checkpoints_and_can_be_set_on_the_command_line():
    from training.__main__ import config_from_args, parse_args

    assert config_from_args(parse_args([])).max_length is None  # load_backbone decides
    assert config_from_args(parse_args(["--max-length", "64"])).max_length == 64


def test_data_parallel_on_two_host_devices_matches_one_device():
    """The batch is sharded over a 2-device mesh (forced host devices in a subprocess)."""
    import os
    import subprocess
    import sys

    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r});"
        "from test_training import _setup, TRAIN, VAL; from training.train import train_run;"
        "cfg, _, mesh, head, data = _setup(max_epochs=1, dropout=0.0);"
        "assert mesh.size == 2, mesh;"
        "r = train_run('levi', head, cfg, data, TRAIN, VAL, lr=1e-2, seed=0, mesh=mesh,"
        " progress=False); print(r.val_rmse)"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    cfg, _, mesh, head, data = _setup(max_epochs=1, dropout=0.0)
    one = train_run("levi", head, cfg, data, TRAIN, VAL, lr=1e-2, seed=0, mesh=mesh, progress=False)
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(one.val_rmse, abs=1e-4)


def test_item_oov_training_hides_the_item_id_only():
    """A cold start with fields keeps its features: training shows the model that case."""
    import dataclasses

    import jax.numpy as jnp

    from training.train import _gather

    cfg, tables, mesh, head, data = _setup()
    data = dict(data)
    data["item_ids"] = jnp.stack([data["item_ids"][:, 0], data["item_ids"][:, 0] + 100], axis=1)
    rows = jnp.arange(4)
    drop = jnp.array([True, False, True, False])
    items = np.asarray(data["item_ids"])[np.asarray(data["pair_item"])[:4]]
    with_ids = dataclasses.replace(head, user_id_feature=0, item_id_feature=1)
    ids, *_ = _gather(with_ids, data, rows, drop)
    np.testing.assert_array_equal(np.asarray(ids)[:, 1], np.where(drop, 0, items[:, 0]))
    np.testing.assert_array_equal(np.asarray(ids)[:, 2], items[:, 1])  # kept
    ids, *_ = _gather(head, data, rows, drop)  # no id column known: every item column hides
    np.testing.assert_array_equal(np.asarray(ids)[:, 2], np.where(drop, 0, items[:, 1]))


def test_report_json_writes_missing_numbers_as_null(tmp_path):
    """A random split has no OOD set: its OOD RMSE is NaN, which JSON cannot hold."""
    from training import report

    doc = {"methods": {"levi": {"id_rmse": 0.9, "ood_rmse": {"mean": float("nan")}}}}
    assert report._finite(doc)["methods"]["levi"]["ood_rmse"]["mean"] is None
    assert json.loads(json.dumps(report._finite(doc)))  # strict JSON
