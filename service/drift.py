"""Drift statistics against the training reference, with constant work per prediction.

* Prediction PSI: the bins of the last ``window`` predictions are kept in a ring buffer with
  running counts (one decrement + one increment per prediction), and the population
  stability index against the training histogram is recomputed over the fixed bins.
* Activation drift per layer: each prediction's pooled activations are measured as an RMS
  z-distance from the training mean (in units of the training standard deviation, averaged
  over views); an exponentially weighted mean of that distance is kept per layer. In
  distribution it stays near 1; a shifted population pushes it up.
"""

from __future__ import annotations

import threading

import numpy as np

PSI_EPS = 1e-4  # floor of bin shares, so an empty bin does not make the PSI infinite


class DriftMonitor:
    """Incremental drift windows for one model.

    Args:
        prediction_edges: ``[n_bins + 1]`` bin edges of the training prediction histogram.
        prediction_hist: ``[n_bins]`` training counts or shares per bin.
        activation_mean, activation_var: ``[n_views, n_layers, d]`` training statistics.
        window: predictions in the PSI window.
        halflife: predictions after which an old activation distance weighs half.
    """

    def __init__(
        self,
        prediction_edges: np.ndarray,
        prediction_hist: np.ndarray,
        activation_mean: np.ndarray,
        activation_var: np.ndarray,
        *,
        window: int = 2000,
        halflife: float = 500.0,
    ):
        self.edges = np.asarray(prediction_edges, dtype=np.float64)
        hist = np.asarray(prediction_hist, dtype=np.float64)
        self.reference = np.maximum(hist / max(hist.sum(), 1e-12), PSI_EPS)  # [n_bins]
        self.mean = np.asarray(activation_mean, dtype=np.float32)  # [n_views, n_layers, d]
        self.inv_std = 1.0 / np.sqrt(np.maximum(np.asarray(activation_var, np.float32), 1e-8))
        self.window = window
        self.decay = 0.5 ** (1.0 / halflife)
        self._ring = np.full(window, -1, dtype=np.int64)
        self._counts = np.zeros(len(self.reference), dtype=np.int64)
        self._pos = 0
        self._filled = 0
        self._drift = np.ones(self.mean.shape[1], dtype=np.float64)  # [n_layers]
        self._seen = 0
        self._lock = threading.Lock()

    @property
    def n_layers(self) -> int:
        return self.mean.shape[1]

    def update(self, ratings: np.ndarray, activations: np.ndarray) -> tuple[float, np.ndarray]:
        """Fold one batch in.

        Args:
            ratings: ``[b]`` predicted ratings.
            activations: ``[b, n_views, n_layers, d]`` pooled activations of those predictions.

        Returns:
            ``(psi, drift)``: the PSI over the window and the per-layer drift ``[n_layers]``.
        """
        inner = self.edges[1:-1]
        bins = np.searchsorted(inner, np.asarray(ratings, np.float64), side="right")
        z = (activations - self.mean[None]) * self.inv_std[None]  # [b, n_views, n_layers, d]
        dist = np.sqrt(np.mean(z * z, axis=-1)).mean(axis=1)  # [b, n_layers]
        with self._lock:
            for b in bins:
                old = self._ring[self._pos]
                if old >= 0:
                    self._counts[old] -= 1
                else:
                    self._filled += 1
                self._ring[self._pos] = b
                self._counts[b] += 1
                self._pos = (self._pos + 1) % self.window
            for row in dist:
                # Warm start: a plain mean over the first predictions, then exponential.
                self._seen += 1
                w = min(self.decay, 1.0 - 1.0 / self._seen)
                self._drift = w * self._drift + (1.0 - w) * row
            return self._psi(), self._drift.copy()

    def _psi(self) -> float:
        if self._filled == 0:
            return 0.0
        current = np.maximum(self._counts / self._filled, PSI_EPS)
        return float(np.sum((current - self.reference) * np.log(current / self.reference)))
