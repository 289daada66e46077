"""Scores of one method and seed: RMSE on ID test and OOD (overall, per OOD group, per adapter
layer) and the AUROC of adapter disagreement as an OOD detector; then mean/std over seeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    """Root mean squared error; NaN for no rows (a split without an OOD test set)."""
    if len(target) == 0:
        return float("nan")
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - target) ** 2)))


def disagreement(adapters: np.ndarray) -> np.ndarray:
    """Spread of the adapters, std over ``[n, n_adapters]`` -> ``[n]`` (0 for one adapter)."""
    return np.std(np.asarray(adapters, np.float64), axis=-1)


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U);
    NaN when either side is empty."""
    if len(negatives) == 0 or len(positives) == 0:
        return float("nan")
    scores = np.concatenate([negatives, positives])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    n_pos, n_neg = len(positives), len(negatives)
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def score_method(
    pred_id: np.ndarray,
    y_id: np.ndarray,
    pred_ood: np.ndarray,
    y_ood: np.ndarray,
    ood_groups: Mapping[str, np.ndarray],
) -> dict:
    """``{"id_rmse", "ood_rmse", "ood_rmse_by_group": {group: rmse}}`` of one seed."""
    return {
        "id_rmse": rmse(pred_id, y_id),
        "ood_rmse": rmse(pred_ood, y_ood),
        "ood_rmse_by_group": {
            g: rmse(pred_ood[rows], y_ood[rows]) for g, rows in ood_groups.items() if len(rows)
        },
    }


def score_layers(
    adapters_id: np.ndarray,
    y_id: np.ndarray,
    adapters_ood: np.ndarray,
    y_ood: np.ndarray,
    layers: Sequence[int],
    rating_range: tuple[float, float],
) -> list[dict]:
    """RMSE of each single adapter (clipped) on ID test and OOD (paper Fig. 4).

    Args:
        adapters_id, adapters_ood: ``[n, n_adapters]`` raw adapter ratings.
    """
    lo, hi = rating_range
    return [
        {
            "layer": int(layer) + 1,  # 1-based, as the API answers (hidden_states[1:])
            "id_rmse": rmse(np.clip(adapters_id[:, a], lo, hi), y_id),
            "ood_rmse": rmse(np.clip(adapters_ood[:, a], lo, hi), y_ood),
        }
        for a, layer in enumerate(layers)
    ]


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std"}`` over seeds (sample std, ddof=1; 0 for a single seed)."""
    arr = np.asarray(values, np.float64)
    std = float(np.std(arr, ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(np.mean(arr)), "std": std}


def aggregate(per_seed: Sequence[dict]) -> dict:
    """Mean and std over seeds of :func:`score_method` dicts (plus ``per_layer`` if present)."""
    out = {
        "id_rmse": mean_std([s["id_rmse"] for s in per_seed]),
        "ood_rmse": mean_std([s["ood_rmse"] for s in per_seed]),
        "ood_rmse_by_group": {
            g: mean_std([s["ood_rmse_by_group"][g] for s in per_seed])
            for g in per_seed[0]["ood_rmse_by_group"]
        },
    }
    if "per_layer" in per_seed[0]:
        out["per_layer"] = [
            {
                "layer": entry["layer"],
                "id_rmse": mean_std([s["per_layer"][k]["id_rmse"] for s in per_seed]),
                "ood_rmse": mean_std([s["per_layer"][k]["ood_rmse"] for s in per_seed]),
            }
            for k, entry in enumerate(per_seed[0]["per_layer"])
        ]
    return out
