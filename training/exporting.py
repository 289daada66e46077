"""Stage 5 of a run: the artifact written (``model.artifact_export``) and scored end to end
through the loader, as a service would load it."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import jax
import numpy as np

from model.batching import encode_texts
from training import evaluate
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
    ds = prep.dataset
    return export_artifact(
        output_dir,
        model_version=version,
        backbone=backbone,
        head_config=run.head,
        head_params=jax.device_get(run.params),
        features=prep.features,
        views=prep.views,
        users=ds.users,
        items=ds.items,
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


def score_exported(path: Path, prep: Prepared, *, progress: bool = False) -> dict[str, float]:
    """ID test and OOD RMSE of the exported model, end to end through ``load_artifact``.

    Texts are rendered with the artifact's views, tokenized with its tokenizer, encoded by its
    exported backbone and scored by its exported head, so the numbers are those of the exact
    model a service loads.
    """
    from model.artifact import load_artifact

    art = load_artifact(path)
    ds = prep.dataset
    users = ds.users.assign(user_id=ds.users["user_id"].astype(str)).set_index("user_id")
    items = ds.items.assign(item_id=ds.items["item_id"].astype(str)).set_index("item_id")
    out = {}
    for part, key in (("test", "id_test_rmse"), ("ood", "ood_rmse")):
        pairs = prep.pairs.iloc[prep.rows[part]]
        if not len(pairs):
            out[key] = float("nan")
            continue
        u = [{"user_id": i, **users.loc[i].to_dict()} for i in pairs["user_id"]]
        it = [{"item_id": i, **items.loc[i].to_dict()} for i in pairs["item_id"]]
        texts = [art.views.render(a, b) for a, b in zip(u, it, strict=True)]  # [n][n_views]
        unique = sorted({t for row in texts for t in row})
        position = {t: j for j, t in enumerate(unique)}
        pooled = _encode_with(art, unique, progress=progress)  # [n_unique, n_layers, d]
        acts = pooled[np.array([[position[t] for t in row] for row in texts])]
        inputs = art.features.encode(u, it)
        ratings = np.concatenate(
            [
                art.score(
                    inputs["ids"][s : s + 4096],
                    inputs["multi_hot"][s : s + 4096],
                    acts[s : s + 4096],
                )[1]
                for s in range(0, len(pairs), 4096)
            ]
        )
        out[key] = evaluate.rmse(ratings, pairs["rating"].to_numpy(np.float32))
    return out


def _encode_with(art, texts: list[str], *, progress: bool, batch_size: int = 64) -> np.ndarray:
    """Pooled activations of ``texts`` from the artifact's exported backbone, padded to the
    manifest's length buckets: the shapes the service compiles and calls."""
    return encode_texts(
        texts,
        art.tokenizer,
        art.encode,
        length_buckets=tuple(art.manifest["backbone"]["length_buckets"]),
        row_buckets=(batch_size,),
        out_shape=art.reference.activation_mean.shape[1:],
        progress=progress,
        desc="score exported",
    )
