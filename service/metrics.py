"""Every Prometheus metric of the service (DESIGN.md, "Metrics"), on a per-app registry.

No user or item id is ever a label: labels are endpoints, status codes, cache tiers, 1-based
encoder layers, entity kinds and the model version.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATING_BUCKETS = tuple(1.0 + 0.25 * i for i in range(17))  # 1.0 .. 5.0
DISAGREEMENT_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0)
OOD_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)


class Metrics:
    """The service's metrics, registered on their own :class:`CollectorRegistry`.

    A registry per app (not the process-global one) lets tests build several apps in one
    process and keeps ``/metrics`` to exactly what this service defines.
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "levi_requests", "HTTP requests by route and status code.",
            ["endpoint", "status"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "levi_request_duration_seconds", "HTTP request latency by route.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "levi_batch_size", "Predictions scored together in one micro-batch.",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "levi_queue_wait_seconds", "Time a prediction waited in the micro-batch queue.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.backbone_seconds = Histogram(
            "levi_backbone_seconds", "Time of one backbone call encoding cache misses.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.head_seconds = Histogram(
            "levi_head_seconds", "Time of one head call on a padded batch.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.cache_lookups = Counter(
            "levi_activation_cache_lookups",
            "Activation cache lookups by tier (local, redis) and result (hit, miss, error, "
            "bypass = Redis skipped while backing off after errors).",
            ["tier", "result"], registry=r,
        )  # fmt: skip
        self.cache_errors = Counter(
            "levi_activation_cache_errors",
            "Failed Redis calls by operation (get, set).", ["op"], registry=r,
        )  # fmt: skip
        self.redis_up = Gauge(
            "levi_activation_cache_redis_up",
            "1 while Redis is in use, 0 while backing off after errors (absent: no Redis).",
            registry=r,
        )
        self.projection_lookups = Counter(
            "levi_projection_cache_lookups",
            "Per-entity head projections found in (hit) or added to (miss) the in-process "
            "cache, by side (user, item).",
            ["side", "result"], registry=r,
        )  # fmt: skip
        self.prediction_rating = Histogram(
            "levi_prediction_rating", "Predicted ratings (ensemble, clipped).",
            buckets=RATING_BUCKETS, registry=r,
        )  # fmt: skip
        self.adapter_rating = Histogram(
            "levi_adapter_rating", "Per-adapter ratings by 1-based encoder layer.",
            ["layer"], buckets=RATING_BUCKETS, registry=r,
        )  # fmt: skip
        self.adapter_disagreement = Histogram(
            "levi_adapter_disagreement",
            "Standard deviation of the adapter ratings of one prediction.",
            buckets=DISAGREEMENT_BUCKETS, registry=r,
        )  # fmt: skip
        self.ood_score = Histogram(
            "levi_ood_score", "OOD score of each prediction (see the artifact's calibration).",
            buckets=OOD_BUCKETS, registry=r,
        )  # fmt: skip
        self.unknown_entities = Counter(
            "levi_unknown_entities",
            "Predictions whose user or item is not in the model's tables (cold start).",
            ["kind"], registry=r,
        )  # fmt: skip
        self.predictions = Counter(
            "levi_predictions", "Predictions scored (the denominator of unknown-entity rates).",
            registry=r,
        )  # fmt: skip
        self.prediction_psi = Gauge(
            "levi_prediction_psi",
            "Population stability index of the recent predictions against training.",
            registry=r,
        )
        self.activation_drift = Gauge(
            "levi_activation_drift",
            "Recent RMS z-distance of pooled activations from the training mean, by 1-based "
            "layer (about 1 in distribution).",
            ["layer"], registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "levi_model_info", "The model being served (value 1).",
            ["model_version", "backbone"], registry=r,
        )  # fmt: skip
        self.model_reloads = Counter(
            "levi_model_reloads", "Model reloads by result (success, failure).",
            ["result"], registry=r,
        )  # fmt: skip
        for kind in ("user", "item"):
            self.unknown_entities.labels(kind=kind)
        for result in ("success", "failure"):
            self.model_reloads.labels(result=result)

    def set_model(self, model_version: str, backbone: str) -> None:
        """Make ``levi_model_info`` name exactly the model now served."""
        self.model_info.clear()
        self.model_info.labels(model_version=model_version, backbone=backbone).set(1)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, as one vectorised update.

    Counts per bucket come from one ``np.searchsorted`` (a value goes to the first bucket
    whose upper bound is >= it, as ``Histogram.observe`` does), then each bucket and the sum
    are incremented once. Falls back to per-value observations if prometheus-client's
    histogram internals (``_upper_bounds``, ``_buckets``, ``_sum``) ever change.
    """
    values = np.asarray(values, np.float64).ravel()
    if not values.size:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for v in values:
            histogram.observe(float(v))
        return
    index = np.searchsorted(np.asarray(bounds, np.float64), values, side="left")
    counts = np.bincount(index, minlength=len(bounds))
    for i in np.flatnonzero(counts):
        buckets[int(i)].inc(int(counts[i]))
    total.inc(float(values.sum()))
