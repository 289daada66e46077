"""The drift reference of an artifact: activation moments, the prediction histogram and
the adapters' disagreement over the training pairs (``model.reference.ReferenceStats``)."""

from __future__ import annotations

import numpy as np

from training import evaluate
from training.config import TrainConfig
from training.fit import DeviceData, run_adapters
from training.prepare import Prepared
from training.train import (
    RunResult,
    predict_ratings,
)

QUANTILES = (0.5, 0.9, 0.99)
HIST_BINS = 40
STREAM_ROWS = 65_536  # training pairs scored per chunk


def reference_stats(
    prep: Prepared, run: RunResult, device: DeviceData, cfg: TrainConfig
) -> dict[str, np.ndarray]:
    """Drift reference over the training pairs: activation moments, predictions, disagreement.

    Returns:
        ``activation_mean``, ``activation_var`` float32 ``[n_views, n_layers, d]``;
        ``prediction_hist`` (fractions, ``[HIST_BINS]``) over ``prediction_edges``
        ``[HIST_BINS + 1]``; ``disagreement_quantiles`` at ``QUANTILES``.
    """
    train = prep.rows["train"]
    acts = prep.activations
    means, variances = [], []
    for v, matrix in enumerate(acts.matrices):
        counts = np.bincount(acts.index[train, v], minlength=len(matrix)).astype(np.float64)
        total = counts.sum()
        s1 = np.zeros(matrix.shape[1:]), np.zeros(matrix.shape[1:])
        for start in range(0, len(matrix), 8192):  # chunks: pair views have one row per rating
            block = matrix[start : start + 8192].astype(np.float64)  # [chunk, n_layers, d]
            w = counts[start : start + 8192, None, None]
            s1[0][...] += (w * block).sum(0)
            s1[1][...] += (w * block**2).sum(0)
        mean = s1[0] / total
        means.append(mean)
        variances.append(np.maximum(s1[1] / total - mean**2, 0.0))
    head = run.head
    edges = np.linspace(head.rating_min, head.rating_max, HIST_BINS + 1)
    hist = np.zeros(HIST_BINS, np.int64)
    spread = np.empty(len(train), np.float64)  # [n_train]: one figure a pair, for quantiles
    for start in range(0, len(train), STREAM_ROWS):  # no [n_train, A] adapters at once
        rows = train[start : start + STREAM_ROWS]
        adapters = run_adapters(run, device, cfg, rows)  # [chunk, A]
        hist += np.histogram(predict_ratings(head, adapters), bins=edges)[0]
        spread[start : start + len(rows)] = evaluate.disagreement(adapters)
    return {
        "activation_mean": np.stack(means).astype(np.float32),
        "activation_var": np.stack(variances).astype(np.float32),
        "prediction_hist": (hist / max(1, hist.sum())).astype(np.float32),
        "prediction_edges": edges.astype(np.float32),
        "disagreement_quantiles": np.quantile(spread, QUANTILES).astype(np.float32),
    }
