"""Stage 5 of a run: the artifact written (``model.artifact_export``); its check and its
figures are in ``training.export_check``."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import jax

from training.config import TrainConfig
from training.drift_reference import reference_stats
from training.fit import DeviceData
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
) -> Path:
    """Write the artifact (the report is attached after it has been scored).

    Args:
        corrections: the online corrections' report section (its ``k_item``, ``k_user`` and
            ``fitted_on`` go to the manifest).
    """
    from model.artifact_export import export_artifact

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
