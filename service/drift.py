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
        return self.update_distances(ratings, self.view_distances(activations).mean(axis=1))

    def view_distances(self, activations: np.ndarray, views: np.ndarray | None = None):
        """RMS z-distance of each view's activations from the training mean.

        Args:
            activations: ``[b, V, n_layers, d]``.
            views: which reference views the ``V`` views are (default: all, in order).

        Returns:
            ``[b, V, n_layers]``; a pair's drift input is the mean over its views.
        """
        mean = self.mean if views is None else self.mean[views]
        inv_std = self.inv_std if views is None else self.inv_std[views]
        z = (activations - mean[None]) * inv_std[None]  # [b, V, n_layers, d]
        return np.sqrt(np.mean(z * z, axis=-1))

    def update_distances(self, ratings: np.ndarray, dist: np.ndarray) -> tuple[float, np.ndarray]:
        """Fold one batch in from its per-pair distances ``[b, n_layers]`` (the mean over a
        pair's views of :meth:`view_distances`); returns ``(psi, drift)`` as :meth:`update`."""
        inner = self.edges[1:-1]
        bins = np.searchsorted(inner, np.asarray(ratings, np.float64), side="right")
        dist = np.asarray(dist, np.float64)
        with self._lock:
            self._push_bins(bins[-self.window :])
            k = 0
            # Warm start: a plain mean over the first predictions, then exponential.
            while k < len(dist) and 1.0 - 1.0 / (self._seen + 1) < self.decay:
                self._seen += 1
                w = 1.0 - 1.0 / self._seen
                self._drift = w * self._drift + (1.0 - w) * dist[k]
                k += 1
            rest = dist[k:]
            if len(rest):  # w = decay from here on: the recurrence in closed form
                n = len(rest)
                weights = (1.0 - self.decay) * self.decay ** np.arange(n - 1, -1, -1)
                self._drift = self.decay**n * self._drift + weights @ rest
                self._seen += n
            return self._psi(), self._drift.copy()

    def _push_bins(self, bins: np.ndarray) -> None:
        """Write bins into the ring (at most ``window`` of them), keeping the counts."""
        n = len(bins)
        if not n:
            return
        positions = (self._pos + np.arange(n)) % self.window
        old = self._ring[positions]
        gone = old[old >= 0]
        np.subtract.at(self._counts, gone, 1)
        self._filled += int(np.sum(old < 0))
        self._ring[positions] = bins
        np.add.at(self._counts, bins, 1)
        self._pos = int((self._pos + n) % self.window)

    def _psi(self) -> float:
        if self._filled == 0:
            return 0.0
        current = np.maximum(self._counts / self._filled, PSI_EPS)
        return float(np.sum((current - self.reference) * np.log(current / self.reference)))
