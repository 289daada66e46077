"""The drift reference of an artifact: activation moments over the training pairs, the
prediction histogram and the adapters' disagreement over a fixed sample of them
(``model.reference.ReferenceStats``).

The moments are exact and cost one pass over the per-text tables (each text weighted by how
many training pairs use it). The histogram (40 bins) and the disagreement quantiles (up to
0.99) come from :data:`REFERENCE_SAMPLE` training pairs drawn with a fixed seed: at 65,536
pairs a bin's fraction has a standard error below 0.002 and the 0.99 quantile rests on about
650 pairs above it, far finer than the drift alerts read them; scoring every training pair
instead cost time and memory that grew with the ratings (a float per pair for the quantiles).
"""

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
REFERENCE_SAMPLE = 65_536  # training pairs scored for the histogram and the quantiles
SAMPLE_SEED = 0  # the same sample on every process of a run and in every run on the same data


def reference_rows(train: np.ndarray, size: int = REFERENCE_SAMPLE) -> np.ndarray:
    """A fixed sample of ``size`` training pair rows (all of them when fewer), sorted."""
    if len(train) <= size:
        return train
    pick = np.random.default_rng(SAMPLE_SEED).choice(len(train), size, replace=False)
    return train[np.sort(pick)]


def reference_stats(
    prep: Prepared, run: RunResult, device: DeviceData, cfg: TrainConfig
) -> dict[str, np.ndarray]:
    """Drift reference: activation moments over the training pairs; the prediction histogram
    and the disagreement quantiles over :func:`reference_rows` (every process of a run scores
    the same sample).

    Returns:
        ``activation_mean``, ``activation_var`` float32 ``[n_views, n_layers, d]``;
        ``prediction_hist`` (fractions, ``[HIST_BINS]``) over ``prediction_edges``
        ``[HIST_BINS + 1]``; ``disagreement_quantiles`` at ``QUANTILES``.
    """
    train = prep.rows["train"]
    acts = prep.activations
    means, variances = [], []
    for v, matrix in enumerate(acts.matrices):
        counts = np.zeros(len(matrix), np.float64)  # [n_texts]: training pairs per text
        for start in range(0, len(train), 1 << 20):  # no [n_train] index copy at once
            rows = train[start : start + (1 << 20)]
            counts += np.bincount(acts.index[rows, v], minlength=len(matrix))
        total = counts.sum()
        width = int(np.prod(matrix.shape[1:]))
        s1, s2 = np.zeros(width), np.zeros(width)
        for start in range(0, len(matrix), 8192):  # chunks: pair views have one row per rating
            block = matrix[start : start + 8192].reshape(-1, width).astype(np.float64)
            w = counts[start : start + 8192]  # [chunk] weights: one BLAS product per moment
            s1 += w @ block
            block *= block
            s2 += w @ block
        mean = (s1 / total).reshape(matrix.shape[1:])
        means.append(mean)
        variances.append(np.maximum(s2.reshape(matrix.shape[1:]) / total - mean**2, 0.0))
    head = run.head
    edges = np.linspace(head.rating_min, head.rating_max, HIST_BINS + 1)
    adapters = run_adapters(run, device, cfg, reference_rows(train))  # [sample, A]
    hist = np.histogram(predict_ratings(head, adapters), bins=edges)[0]
    spread = evaluate.disagreement(adapters)
    return {
        "activation_mean": np.stack(means).astype(np.float32),
        "activation_var": np.stack(variances).astype(np.float32),
        "prediction_hist": (hist / max(1, hist.sum())).astype(np.float32),
        "prediction_edges": edges.astype(np.float32),
        "disagreement_quantiles": np.quantile(spread, QUANTILES).astype(np.float32),
    }
