"""The whole offline run, stage by stage: data and split -> backbone tuning when asked
(training/tuning.py) -> encode (training/prepare.py) ->
train (training/fit.py) -> evaluate (training/evaluate_methods.py, progressive validation in
training/progressive.py) -> export (training/exporting.py) -> report (training/report.py).

``run_pipeline(TrainConfig.default(), output_dir="artifacts")`` is what ``make train`` does.
Each stage is a function of the previous stages' outputs. Everything dataset-specific comes
from the dataset spec (``cfg.dataset``: a preset or a spec file); the spec, the dataset and
the backbone can be passed in (tests use small generated data and a tiny random backbone).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model.native_heap import release_free_heap
from training import distributed, evaluate, progressive, report
from training.config import TrainConfig
from training.evaluate_methods import evaluate_all
from training.exporting import export_stage, model_version
from training.fit import DeviceData, items_hidden, run_ratings, train_all
from training.prepare import encode_views, prepare_data
from training.spec import DatasetSpec
from training.train import (
    RunResult,
)


@dataclass(frozen=True)
class PipelineResult:
    report: dict
    report_dir: Path | None  # None on processes other than 0
    artifact: Path | None
    timings: dict[str, float]
    runs: dict[str, list[RunResult]]


FROZEN_ROW = "levi_frozen"


def frozen_levi(prep, backbone, cfg: TrainConfig, output_dir: Path, cache, progress, log) -> dict:
    """LEVI on the pre-trained (frozen) backbone with the run's own seeds, learning rates and
    data: the row a tuned run is compared with, measured in the same conditions. Its
    activations come from the cache of the pre-trained fingerprint, its runs from the
    checkpoints when an earlier run trained them."""
    from training.evaluate_methods import evaluate_trained

    prep = encode_views(prep, backbone, cfg, cache=cache, progress=progress)
    only = cfg.replace(methods=("levi",))
    _, runs, device = train_all(
        prep,
        only,
        backbone.n_layers,
        checkpoint_root=output_dir / ".checkpoints",
        progress=progress,
        log=log,
    )
    scores = evaluate_trained(prep, only, runs, device)
    result = evaluate.aggregate(scores.per_seed["levi"])
    result.pop("per_layer", None)
    return result


def run_pipeline(
    cfg: TrainConfig,
    *,
    output_dir: str | Path = "artifacts",
    dataset=None,
    spec: DatasetSpec | None = None,
    backbone=None,
    cache: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PipelineResult:
    """Run every stage, write the report and (``cfg.export``) the artifact.

    Args:
        dataset, spec: given instead of reading ``cfg.dataset`` (tests).
    """
    output_dir = Path(output_dir)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        timings[stage] = time.perf_counter() - clock
        log(f"[{stage}] {timings[stage]:.1f}s")
        release_free_heap()  # what the stage freed goes back to the OS, not to the next peak
        clock = time.perf_counter()

    prep = prepare_data(cfg, dataset, spec, log=log)
    sizes = {p: len(r) for p, r in prep.rows.items()}
    log(f"data: {prep.source}; split {sizes}; {len(prep.ood_groups)} OOD groups")
    lap("data")

    if backbone is None:
        from model.backbone import load_backbone

        backbone = load_backbone(cfg.backbone, cfg.checkpoint, cfg.max_length)
    tuning, pretrained, unencoded = None, backbone, prep
    if cfg.tuning.enabled:  # LEVI reads the tuned backbone (a new fingerprint) from here on
        from training.tuning import tune_backbone

        tuning = tune_backbone(
            prep,
            backbone,
            cfg.tuning,
            cache_root=output_dir / ".tuned" if distributed.is_primary() else None,
            log=log,
        )
        backbone = tuning.backbone
        lap("tune")
    prep = encode_views(prep, backbone, cfg, cache=cache, progress=progress)
    log(f"encode: {prep.activations.n_encoded} texts encoded (the rest from the cache)")
    lap("encode")

    lrs, runs, device = train_all(
        prep,
        cfg,
        backbone.n_layers,
        checkpoint_root=output_dir / ".checkpoints",
        progress=progress,
        log=log,
    )
    lap("train")

    methods, extras = evaluate_all(prep, cfg, runs, device)
    if tuning is not None:  # the tuned encoder with its regression head alone
        methods[cfg.tuning.row] = evaluate.aggregate([tuning.scores])
        if cfg.tuning.compare_frozen and "levi" in runs:
            methods[FROZEN_ROW] = frozen_levi(
                unencoded, pretrained, cfg, output_dir, cache, progress, log
            )
            lap("frozen LEVI")
    exported_run = min(runs["levi"], key=lambda r: r.val_rmse) if "levi" in runs else None
    version = model_version(cfg, backbone.fingerprint)
    shrinkage, online = None, None
    if exported_run is not None and len(prep.rows["val"]):
        tables = items_hidden(prep, device)
        hidden = None if tables is None else DeviceData(tables, device.mesh, device.layout)
        shrinkage, online = progressive.fit_and_evaluate(
            prep,
            lambda rows: run_ratings(exported_run, device, cfg, rows),
            None if hidden is None else lambda rows: run_ratings(exported_run, hidden, cfg, rows),
        )
        log(
            f"online corrections: k_item {shrinkage.k_item:g}, k_user {shrinkage.k_user:g}, "
            f"k_item_oov {shrinkage.k_item_oov}; "
            + "; ".join(
                f"{p} progressive RMSE {online[p]['model']:.4f} -> {online[p]['corrected']:.4f}"
                for p in ("test", "ood")
                if p in online
            )
        )
    lap("evaluate")

    artifact, exported, exported_source = None, None, None
    if exported_run is not None:
        k = runs["levi"].index(exported_run)
        live = extras["per_seed"]["levi"][k]
        exported = {"id_test_rmse": live["id_rmse"], "ood_rmse": live["ood_rmse"]}
        exported_source = (
            f"LEVI seed {exported_run.seed}, the best on ID validation; scored with the live "
            "parameters (no artifact exported)"
        )
        if cfg.export:
            result = export_stage(
                prep,
                cfg,
                exported_run,
                device,
                backbone,
                version,
                output_dir,
                lrs,
                online,
                live,
                log,
            )
            artifact, exported, exported_source = result.artifact, result.exported, result.source
            lap("export")
    split_seed = prep.spec.split.seed if cfg.split_seed is None else cfg.split_seed
    doc = report.build_report(
        dataset=prep.spec.name,
        split={
            "name": prep.spec.split.kind,
            "column": prep.spec.split.column,
            "seed": split_seed,
            "sizes": sizes,
            "ood_groups": list(prep.ood_groups),
        },
        backbone={
            "name": backbone.name,
            "fingerprint": backbone.fingerprint,
            "n_layers": backbone.n_layers,
            "hidden_size": backbone.hidden_size,
            **({"tuning": tuning.summary} if tuning is not None else {}),
        },
        seeds=list(cfg.seeds),
        methods=methods,
        exported=exported,
        online_corrections=online,
    )
    notes = {
        "lrs": lrs,
        "auroc": extras.get("auroc"),
        "timings": timings,
        "text": report.training_notes(
            cfg, lrs, split_seed, tuning.summary if tuning is not None else None
        ),
        "exported_source": exported_source,
    }
    report_dir = None
    if distributed.is_primary():  # one report and one artifact for the run
        report_dir = report.write_report(doc, notes, output_dir / "reports" / version)
        if artifact is not None:
            from model.artifact_export import attach_report

            attach_report(artifact, report_dir)
    distributed.barrier("report written")  # no process leaves while process 0 still writes
    return PipelineResult(doc, report_dir, artifact, timings, runs)
