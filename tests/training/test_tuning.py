"""The backbone tuning stage (training/tuning.py): what it trains and what it leaves alone, its
per-step samples, its reuse, and a tuned run that exports, loads and serves."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from training.config import TrainConfig
from training.prepare import prepare_data
from training.tuning import tune_backbone
from training.tuning_data import StepSampler, text_groups

# A few steps, every one validated: enough to move the weights on the tiny data.
FAST = {"tuning_steps": 3, "tuning_eval_every": 3, "tuning_patience": 5, "tuning_lr": 3e-3}


def _tuned(tiny_spec, tiny_backbone, kind, cache_root=None, **overrides):
    cfg = TrainConfig.tiny().replace(
        dataset=str(tiny_spec), tuning_kind=kind, **{**FAST, **overrides}
    )
    prep = prepare_data(cfg, log=lambda _: None)
    result = tune_backbone(
        prep, tiny_backbone, cfg.tuning, cache_root=cache_root, log=lambda _: None
    )
    return prep, result


def _changed(before, after) -> dict[str, bool]:
    flat_after = dict(jax.tree_util.tree_leaves_with_path(after))
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): not np.array_equal(
            np.asarray(value), np.asarray(flat_after[path])
        )
        for path, value in jax.tree_util.tree_leaves_with_path(before)
    }


def test_half_tuning_changes_the_top_layers_and_no_other(tmp_path, tiny_spec, tiny_backbone):
    _, result = _tuned(tiny_spec, tiny_backbone, "half", cache_root=tmp_path / "tuned")
    assert result.summary["best_step"] > 0  # the kept weights are trained ones
    changed = _changed(tiny_backbone.params, result.backbone.params)
    # the tiny encoder has 2 layers: layer 1 is the top half
    top = {k: v for k, v in changed.items() if k.startswith("params/layers_1/")}
    rest = {k: v for k, v in changed.items() if not k.startswith("params/layers_1/")}
    assert top and all(top.values()), top
    assert rest and not any(rest.values()), [k for k, v in rest.items() if v]
    assert result.backbone.fingerprint != tiny_backbone.fingerprint  # caches never mix
    assert result.backbone.name == "tiny+ht"
    assert set(result.scores) == {"id_rmse", "ood_rmse", "ood_rmse_by_group"}
    assert np.isfinite(result.scores["ood_rmse"]) and result.scores["ood_rmse_by_group"]
    # a second run with the same data and config reuses the tuned weights
    _, again = _tuned(tiny_spec, tiny_backbone, "half", cache_root=tmp_path / "tuned")
    assert again.summary["reused"] and again.backbone.fingerprint == result.backbone.fingerprint
    assert again.scores == result.scores  # JSON keeps floats exactly


def test_lora_tuning_changes_only_the_adapted_kernels(tiny_spec, tiny_backbone):
    _, result = _tuned(tiny_spec, tiny_backbone, "lora", tuning_lora_rank=2)
    assert result.summary["best_step"] > 0
    changed = _changed(tiny_backbone.params, result.backbone.params)
    projections = ("attention/query", "attention/key", "attention/value", "attention/out")
    projections += ("mlp/wi", "mlp/wo")
    adapted = {f"params/layers_{i}/{p}/kernel" for i in (0, 1) for p in projections}
    assert {k for k, v in changed.items() if v} == adapted


def test_full_tuning_trains_the_embeddings_too(tiny_spec, tiny_backbone):
    _, result = _tuned(tiny_spec, tiny_backbone, "full")
    changed = _changed(tiny_backbone.params, result.backbone.params)
    assert changed["params/embeddings/word_embeddings/embedding"]
    assert changed["params/layers_0/attention/query/kernel"]


def test_a_step_trains_on_the_pairs_whose_texts_are_all_sampled(tiny_spec, tiny_backbone):
    from training.precompute import render_views

    cfg = TrainConfig.tiny().replace(dataset=str(tiny_spec))
    prep = prepare_data(cfg, log=lambda _: None)
    texts, index = render_views(
        prep.views, prep.users, prep.items, prep.pairs.user, prep.pairs.item
    )
    train = prep.rows["train"]
    groups = text_groups(tiny_backbone.tokenizer, texts, index, train)
    # every text is in exactly one group of its view, padded to its group's length
    for v, view_texts in enumerate(texts):
        rows = np.concatenate([g.texts for g in groups if g.view == v])
        assert sorted(rows.tolist()) == list(range(len(view_texts)))
    ratings = np.asarray(prep.pairs.rating, np.float32)
    sampler = StepSampler(
        groups, index, ratings, train, [len(t) for t in texts], 0.5, seed=0, unit=2
    )
    assert all(n % 2 == 0 for n in sampler.sizes) and sampler.capacity % 2 == 0
    sample = sampler.draw()
    real = sample.weights > 0
    assert real.sum() > 0
    chosen = []  # per view, the selected text rows in concatenation order
    for v in range(len(texts)):
        chosen.append(
            np.concatenate(
                [g.texts[s] for g, s in zip(groups, sample.selected, strict=True) if g.view == v]
            )
        )
    # each real pair's positions name texts it reads, and its rating is an ID train rating
    train_keys = {tuple(index[r]): ratings[r] for r in train}
    for pos, y in zip(sample.positions[real], sample.ratings[real], strict=True):
        key = tuple(int(chosen[v][pos[v]]) for v in range(len(texts)))
        assert key in train_keys and train_keys[key] == y
    # and every ID train pair whose texts were all drawn is there (capacity permitting)
    drawn = [set(c.tolist()) for c in chosen]
    eligible = sum(all(index[r, v] in drawn[v] for v in range(len(texts))) for r in train)
    assert real.sum() == min(eligible, sampler.capacity)


def test_tuning_refuses_pair_views(tiny_spec, tiny_backbone):
    lines = tiny_spec.read_text().splitlines()
    lines = [x for x in lines if not x.startswith(("user = ", "item = "))]
    at = lines.index("[text]") + 1
    lines.insert(at, 'pair = "user {user_id} rates movie {title}"')
    tiny_spec.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="factored text views"):
        _tuned(tiny_spec, tiny_backbone, "half")


def test_a_tuned_run_exports_loads_and_serves(tmp_path, tiny_spec, tiny_backbone, compile_cache):
    from support.servers import loaded_client

    from model.artifact import load_artifact
    from training.pipeline import run_pipeline

    cfg = TrainConfig.tiny().replace(
        dataset=str(tiny_spec),
        methods=("global_mean", "levi"),
        seeds=(0,),
        lrs=(1e-2,),
        max_epochs=1,
        tuning_kind="half",
        **FAST,
    )
    result = run_pipeline(
        cfg,
        output_dir=tmp_path / "out",
        backbone=tiny_backbone,
        cache=tmp_path / "cache",
        progress=False,
        log=lambda _: None,
    )
    doc = json.loads((result.report_dir / "report.json").read_text())
    # the tuned encoder alone, and LEVI on the pre-trained backbone in the same conditions
    assert list(doc["methods"]) == ["global_mean", "ht", "levi_frozen", "levi"]
    assert np.isfinite(doc["methods"]["levi_frozen"]["ood_rmse"]["mean"])
    tuned = doc["backbone"]["tuning"]
    assert tuned["kind"] == "half" and tuned["base_fingerprint"] == tiny_backbone.fingerprint
    assert doc["backbone"]["fingerprint"] == tuned["fingerprint"] != tiny_backbone.fingerprint
    # LEVI read the tuned encoder's activations, levi_frozen the pre-trained one's: two caches
    assert {p.name for p in (tmp_path / "cache" / "activations").iterdir()} == {
        tuned["fingerprint"],
        tiny_backbone.fingerprint,
    }
    assert (
        "Backbone tuned before LEVI (half, report row `ht`"
        in (result.report_dir / "report.md").read_text()
    )
    art = load_artifact(result.artifact)
    assert art.manifest["backbone"]["fingerprint"] == tuned["fingerprint"]
    assert art.manifest["backbone"]["name"] == "tiny+ht"
    with loaded_client(result.artifact, compile_cache) as client:
        answer = client.post("/predict-rating", json={"user_id": "1", "item_id": "2"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert 1.0 <= body["rating"] <= 5.0 and len(body["adapters"]) == 2
        assert body["model_version"] == art.manifest["model_version"]


def test_tuning_uses_every_local_device(tmp_path):
    """Texts and pairs of a step are sharded over a 2-device mesh (forced host devices)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = f"""
import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from pathlib import Path
from support.tiny_data import make_tiny_backbone, write_tiny_catalog
from training.config import TrainConfig
from training.prepare import prepare_data
from training.tuning import tune_backbone
tmp = Path({str(tmp_path)!r})
cfg = TrainConfig.tiny().replace(dataset=str(write_tiny_catalog(tmp / "data")), tuning_kind="half",
                                 tuning_steps=3, tuning_eval_every=3, tuning_lr=3e-3)
bb = make_tiny_backbone(tmp)
r = tune_backbone(prepare_data(cfg, log=lambda s: None), bb, cfg.tuning, cache_root=None,
                  log=lambda s: None)
print(r.summary["devices"], r.summary["texts_per_step"] % 2, r.summary["best_step"],
      r.backbone.fingerprint != bb.fingerprint)
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["2", "0", "3", "True"]


def test_the_flags_set_the_tuning_config():
    from training.__main__ import config_from_args, parse_args

    args = ["--backbone-tuning", "lora", "--lora-rank", "4", "--tuning-steps", "50"]
    cfg = config_from_args(parse_args(args))
    assert (cfg.tuning.kind, cfg.tuning.lora_rank, cfg.tuning.steps) == ("lora", 4, 50)
    assert cfg.tuning.row == "lora" and cfg.tuning.enabled
    assert not config_from_args(parse_args([])).tuning.enabled  # make train: frozen backbone
    with pytest.raises(ValueError, match="backbone tuning 'quarter' unknown"):
        TrainConfig().replace(tuning_kind="quarter")
