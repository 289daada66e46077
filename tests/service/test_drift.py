"""Drift windows: the vectorised batch update equals folding predictions in one by one."""

from __future__ import annotations

import numpy as np
import pytest

from service.drift import DriftMonitor


def _naive(monitor_args, batches):
    """The per-prediction definition: ring buffer of bins, warm-start then EWMA distances."""
    edges, hist, mean, var, window, halflife = monitor_args
    decay = 0.5 ** (1.0 / halflife)
    ring, drift, seen = [], np.ones(mean.shape[1]), 0
    for ratings, dist in batches:
        for r, row in zip(ratings, dist, strict=True):
            ring = (ring + [int(np.searchsorted(edges[1:-1], r, side="right"))])[-window:]
            seen += 1
            w = min(decay, 1.0 - 1.0 / seen)
            drift = w * drift + (1.0 - w) * row
    counts = np.bincount(ring, minlength=len(hist)) / len(ring)
    ref = np.maximum(hist / hist.sum(), 1e-4)
    cur = np.maximum(counts, 1e-4)
    return float(np.sum((cur - ref) * np.log(cur / ref))), drift


def test_batch_update_equals_one_by_one():
    rng = np.random.default_rng(0)
    edges = np.linspace(1, 5, 9)
    hist = rng.integers(1, 20, 8).astype(float)
    mean, var = rng.normal(size=(2, 3, 4)), rng.uniform(0.5, 2, size=(2, 3, 4))
    args = (edges, hist, mean, var, 50, 7.0)
    monitor = DriftMonitor(edges, hist, mean, var, window=50, halflife=7.0)
    batches = []
    for n in (1, 3, 40, 120, 2, 64):  # warm start inside a batch, batches beyond the window
        ratings = rng.uniform(0.5, 5.5, n)
        dist = rng.uniform(0.5, 3, size=(n, 3))
        batches.append((ratings, dist))
        psi, drift = monitor.update_distances(ratings, dist)
    want_psi, want_drift = _naive(args, batches)
    assert psi == pytest.approx(want_psi, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(drift, want_drift, rtol=1e-9)


def test_update_from_activations_is_the_mean_view_distance():
    rng = np.random.default_rng(1)
    mean, var = rng.normal(size=(2, 3, 4)), rng.uniform(0.5, 2, size=(2, 3, 4))
    a = DriftMonitor(np.linspace(1, 5, 5), np.ones(4), mean, var)
    b = DriftMonitor(np.linspace(1, 5, 5), np.ones(4), mean, var)
    acts = rng.normal(size=(6, 2, 3, 4))
    ratings = rng.uniform(1, 5, 6)
    _, via_acts = a.update(ratings, acts)
    _, via_dist = b.update_distances(ratings, b.view_distances(acts).mean(axis=1))
    np.testing.assert_allclose(via_acts, via_dist)
    per_view = b.view_distances(acts[:, 1:], views=np.array([1]))
    np.testing.assert_allclose(per_view, b.view_distances(acts)[:, 1:])
