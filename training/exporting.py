"""Stage 5 of a run: the artifact written (``model.artifact_export``), checked and scored
(``training.export_check``; the exported figures, ``training.exported_scoring``).

With several processes every process computes what needs the mesh (the drift reference, the
live ratings of the check's sample); process 0 alone writes, loads, checks and scores the
artifact.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax

from training import distributed
from training.config import TrainConfig
from training.drift_reference import reference_stats
from training.export_check import check_exported, check_rows
from training.exported_scoring import entity_inputs, exported_figures
from training.fit import DeviceData, run_ratings
from training.prepare import Prepared
from training.train import (
    RunResult,
)


def model_version(cfg: TrainConfig, fingerprint: str) -> str:
    digest = hashlib.sha256((cfg.digest() + fingerprint).encode()).hexdigest()[:8]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{digest}"


def export(
    prep: Prepared,
    cfg: TrainConfig,
    run: RunResult,
    device: DeviceData,
    backbone,
    version: str,
    output_dir: Path,
    lrs: dict[str, float],
    corrections: dict | None = None,
    reference: dict | None = None,
) -> Path:
    """Write the artifact (the report is attached after it has been scored).

    Args:
        corrections: the online corrections' report section (its ``k_item``, ``k_user`` and
            ``fitted_on`` go to the manifest).
        reference: the drift reference (:func:`reference_stats`; computed when None).
    """
    from model.artifact_export import export_artifact

    if reference is None:
        reference = reference_stats(prep, run, device, cfg)
    return export_artifact(
        output_dir,
        model_version=version,
        backbone=backbone,
        head_config=run.head,
        head_params=jax.device_get(run.params),
        features=prep.features,
        views=prep.views,
        users=prep.users,
        items=prep.items,
        reference=reference,
        dataset=prep.spec.summary(),
        training_config={
            **cfg.to_json(),
            "chosen_lrs": lrs,
            "exported_seed": run.seed,
            "val_rmse": run.val_rmse,
        },
        corrections=(
            {k: v for k, v in corrections.items() if k.startswith("k_") or k == "fitted_on"}
            if corrections
            else None
        ),
    )


@dataclass(frozen=True)
class ExportResult:
    """The export stage's outcome on this process.

    Attributes:
        artifact: the artifact's directory (None on processes other than 0).
        exported: the exported model's ``id_test_rmse`` and ``ood_rmse`` (process 0).
        source: what those figures are, for the report.
    """

    artifact: Path | None
    exported: dict[str, float] | None
    source: str


def export_stage(
    prep: Prepared,
    cfg: TrainConfig,
    run: RunResult,
    device: DeviceData,
    backbone,
    version: str,
    output_dir: Path,
    lrs: dict[str, float],
    corrections: dict | None,
    live: dict,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export ``run``, check the artifact against the live parameters on the fixed sample and
    score it (every process calls it; process 0 writes).

    Args:
        live: the run's own scores (``id_rmse``, ``ood_rmse``), reported beside the artifact's.

    Raises:
        ExportMismatch: the artifact does not compute what the live parameters compute.
    """
    reference = reference_stats(prep, run, device, cfg)  # the mesh: every process
    sample = check_rows(prep)
    live_sample = {p: run_ratings(run, device, cfg, r) for p, r in sample.items()}
    if not distributed.is_primary():
        return ExportResult(None, None, "scored by process 0")
    from model.artifact import load_artifact

    artifact = export(
        prep, cfg, run, device, backbone, version, output_dir, lrs, corrections, reference
    )
    art = load_artifact(artifact)
    entities = entity_inputs(art, prep)  # the artifact's tables, read once for both
    check = check_exported(art, prep, sample, live_sample, entities, backbone.tokenizer)
    log(f"export: {check.describe()}")
    scored_by = "first-layer decomposition (as the service scores)" if art.decomposed else "head"
    source = (
        f"LEVI seed {run.seed}, the best on ID validation, scored through the exported "
        f"artifact ({artifact.name}): its exported {scored_by}, vocabularies and entity "
        f"tables over every ID test and OOD pair, with the activations of this run; "
        f"{check.describe()}; live parameters gave ID {live['id_rmse']:.4f}, OOD "
        f"{live['ood_rmse']:.4f}"
    )
    return ExportResult(artifact, exported_figures(art, prep, entities), source)
