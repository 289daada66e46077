"""Every Prometheus metric of the service (README.md, "Monitoring"), on a per-app registry.

No user or item id is ever a label: labels are endpoints, status codes, cache tiers, 1-based
encoder layers, entity kinds and the model version.

With several uvicorn workers (``python -m service --workers N``) prometheus-client runs in its
multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set by the parent before any worker starts
(service/workers.py), every value is kept in a per-process file there, and a scrape of any
worker reads all of them (:func:`exposition`). Counters and histograms are summed over the
workers (dead ones included, so counters never go down); each gauge says how its per-worker
values combine (``multiprocess_mode``, chosen below and listed in deploy/README.md), and the
``live*`` modes drop the values of workers that are gone.

``_created`` series are off (:func:`prometheus_client.disable_created_metrics`): they double the
series count and no dashboard or alert reads them.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from service.metrics_files import LiveModelInfo

log = logging.getLogger(__name__)

disable_created_metrics()  # before any metric is built: they read it at construction


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATING_BUCKET_COUNT = 16  # equal-width buckets over the served model's rating range


def rating_buckets(lo: float, hi: float) -> tuple[float, ...]:
    """Bucket upper bounds of the rating histograms: ``RATING_BUCKET_COUNT`` equal steps from
    ``lo`` to ``hi`` (the manifest's ``rating_range``; 1-5 gives 1.0, 1.25, ..., 5.0)."""
    step = (hi - lo) / RATING_BUCKET_COUNT
    return tuple(round(lo + step * i, 6) for i in range(RATING_BUCKET_COUNT + 1))


DISAGREEMENT_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0)
CORRECTION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
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
            "levi_requests",
            "HTTP requests by route and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "levi_request_duration_seconds",
            "HTTP request latency by route.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "levi_batch_size",
            "Predictions scored together in one micro-batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.scheduler_dropped = Counter(
            "levi_scheduler_dropped_pairs",
            "Pairs of large requests whose remaining scoring steps were dropped because nobody "
            "waited for them any more (the client gave up, or the deadline passed).",
            registry=r,
        )
        self.queue_wait = Histogram(
            "levi_queue_wait_seconds",
            "Time a prediction waited in the micro-batch queue.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backbone_seconds = Histogram(
            "levi_backbone_seconds",
            "Time of one backbone call encoding cache misses.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.head_seconds = Histogram(
            "levi_head_seconds",
            "Time of one head call on a padded batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "levi_activation_cache_lookups",
            "Activation cache lookups by tier (local, redis) and result (hit, miss, error, "
            "bypass = Redis skipped while backing off after errors).",
            ["tier", "result"],
            registry=r,
        )
        self.cache_errors = Counter(
            "levi_activation_cache_errors",
            "Failed Redis calls by operation: get, set (activation cache), feedback_read, "
            "feedback_dedup (corrections), prediction_log, online_eval (online evaluation). "
            "One Redis and one back-off for all: the first failure may be any of them.",
            ["op"],
            registry=r,
        )
        self.redis_up = Gauge(
            "levi_activation_cache_redis_up",
            "1 while Redis is in use, 0 while backing off after errors (absent: no Redis).",
            registry=r,
            multiprocess_mode="livemin",  # 0 while any worker backs off
        )
        self.projection_lookups = Counter(
            "levi_projection_cache_lookups",
            "Per-entity head projections found in (hit) or added to (miss) the in-process "
            "cache, by side (user, item).",
            ["side", "result"],
            registry=r,
        )
        # Their buckets follow the served model's rating range (use_rating_scale).
        self.prediction_rating: Histogram | None = None
        self.adapter_rating: Histogram | None = None
        self.rating_range: tuple[float, float] | None = None
        self._rating_lock = threading.Lock()  # two versions may load at once
        self.adapter_disagreement = Histogram(
            "levi_adapter_disagreement",
            "Standard deviation of the adapter ratings of one prediction.",
            buckets=DISAGREEMENT_BUCKETS,
            registry=r,
        )
        self.ood_score = Histogram(
            "levi_ood_score",
            "OOD score of each prediction (see the artifact's calibration).",
            buckets=OOD_BUCKETS,
            registry=r,
        )
        self.unknown_entities = Counter(
            "levi_unknown_entities",
            "Predictions whose user or item is not in the model's tables (cold start).",
            ["kind"],
            registry=r,
        )
        self.predictions = Counter(
            "levi_predictions",
            "Predictions scored (the denominator of unknown-entity rates).",
            registry=r,
        )
        # Drift gauges: each worker's window is a sample of the same traffic; the scrape shows
        # the most recently updated one (max would bias upwards with the worker count).
        self.prediction_psi = Gauge(
            "levi_prediction_psi",
            "Population stability index of the recent predictions against training.",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.activation_drift = Gauge(
            "levi_activation_drift",
            "Recent RMS z-distance of pooled activations from the training mean, by 1-based "
            "layer (about 1 in distribution).",
            ["layer"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        # One series per live worker (a `pid` label is added), so a mixed pod shows.
        self.model_info = Gauge(
            "levi_model_info",
            "The model being served (value 1).",
            ["model_version", "backbone"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self._model_labels: tuple[str, str] | None = None
        self._version_labels: set[tuple[str, str]] = set()
        self.warmup_pending = Gauge(
            "levi_warmup_pending_shapes",
            "Input shapes of the served model not compiled yet: ready comes after the shapes "
            "first traffic needs, the rest compile in the background (0 = all compiled).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.warmup_seconds = Gauge(
            "levi_warmup_seconds",
            "Seconds the last model load took, by stage: load (read and check the artifact), "
            "first (compile what first traffic needs; ready after it), background (the rest).",
            ["stage"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_reloads = Counter(
            "levi_model_reloads",
            "Model reloads by result (success, failure).",
            ["result"],
            registry=r,
        )
        # Feedback and online corrections (service/corrections.py, service/feedback_log.py).
        self.feedback_events = Counter(
            "levi_feedback_events",
            "Feedback events accepted (logged, then applied).",
            registry=r,
        )
        self.feedback_log_errors = Counter(
            "levi_feedback_log_errors",
            "Feedback requests refused (503) because the feedback log could not be written.",
            registry=r,
        )
        self.correction_magnitude = Histogram(
            "levi_correction_magnitude",
            "Absolute online correction (user + item offsets) added to each answer, in "
            "rating units.",
            buckets=CORRECTION_BUCKETS,
            registry=r,
        )
        self.corrected_entities = Gauge(
            "levi_corrected_entities",
            "Users / items of the served model version with feedback (their corrections).",
            ["side"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.feedback_backlog = Gauge(
            "levi_feedback_replay_backlog",
            "Feedback events whose corrections wait for Redis (kept while it is down).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.feedback_replay = Counter(
            "levi_feedback_replay",
            "Feedback events whose corrections were replayed to Redis after an outage "
            "(replayed), or dropped from a full backlog (dropped; still in the log).",
            ["result"],
            registry=r,
        )
        # The online catalog (service/catalog.py, service/catalog_warmer.py).
        self.catalog_records = Gauge(
            "levi_catalog_records",
            "Registered (not deleted) users and items of the served data set held by the process.",
            ["kind"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.catalog_upserts = Counter(
            "levi_catalog_upserts",
            "Catalog records accepted (logged), by kind and by what became of them: applied "
            "(written to Redis), kept (Redis did not answer: written when it does), local "
            "(no Redis).",
            ["kind", "shared"],
            registry=r,
        )
        self.catalog_deletes = Counter(
            "levi_catalog_deletes",
            "Catalog records deleted, by kind and shared (as levi_catalog_upserts_total).",
            ["kind", "shared"],
            registry=r,
        )
        self.catalog_lookups = Counter(
            "levi_catalog_lookups",
            "Users and items of answered pairs by where their fields came from: request, "
            "catalog, model (the model's tables), unknown (cold start without fields).",
            ["kind", "source"],
            registry=r,
        )
        self.catalog_pending_encodes = Gauge(
            "levi_catalog_pending_encodes",
            "Registered entities waiting for their text to be encoded and projected off the "
            "request path.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.catalog_encodes = Counter(
            "levi_catalog_encodes",
            "Registered entities projected off the request path, by result: done, dropped "
            "(queue full: computed on first use), failed.",
            ["result"],
            registry=r,
        )
        self.catalog_unshared = Gauge(
            "levi_catalog_unshared_records",
            "Catalog records accepted while Redis did not answer, waiting to be written there.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.catalog_resyncs = Counter(
            "levi_catalog_resyncs",
            "Full catalog syncs with Redis (every record held written back, Redis's reloaded) "
            "by reason: reconnect (Redis not reached at start), lost (Redis lost its records "
            "or trimmed changes before they were read).",
            ["reason"],
            registry=r,
        )
        self.catalog_log_errors = Counter(
            "levi_catalog_log_errors",
            "Catalog writes refused (503) because the catalog log could not be written.",
            registry=r,
        )
        for kind in ("user", "item"):
            self.catalog_records.labels(kind=kind)
            for source in ("request", "catalog", "model", "unknown"):
                self.catalog_lookups.labels(kind=kind, source=source)
            for shared in ("applied", "kept", "local"):
                self.catalog_upserts.labels(kind=kind, shared=shared)
                self.catalog_deletes.labels(kind=kind, shared=shared)
        for result in ("done", "dropped", "failed"):
            self.catalog_encodes.labels(result=result)
        for reason in ("reconnect", "lost"):
            self.catalog_resyncs.labels(reason=reason)
        # Versions and online evaluation (service/versions.py, service/online_eval.py).
        self.model_versions = Gauge(
            "levi_model_version_info",
            "Loaded model versions by alias (champion, challenger, previous; value 1) and the "
            'challenger\'s canary share (alias="canary", value 0-1).',
            ["alias", "model_version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.routed = Counter(
            "levi_routed_requests",
            "Scoring requests by the alias that answered them (champion, challenger, or "
            "named: a version asked for with the X-Model-Version header).",
            ["alias"],
            registry=r,
        )
        self.shadow = Counter(
            "levi_shadow_pairs",
            "Pairs scored in shadow (off the request path) by result: scored, dropped (queue "
            "full), expired (not reached in time), failed.",
            ["result"],
            registry=r,
        )
        self.rollout_decisions = Counter(
            "levi_rollout_decisions",
            "Rollout changes by decision (challenger, remove_challenger, promote, rollback, "
            "reload) and trigger (admin, gate).",
            ["decision", "trigger"],
            registry=r,
        )
        self.prediction_log = Counter(
            "levi_prediction_log",
            "Predictions kept for the online evaluation by result: stored, dropped (writer "
            "queue full), redis_error (kept in process only).",
            ["result"],
            registry=r,
        )
        self.online_events = Counter(
            "levi_online_feedback_joined",
            "Feedback events joined with a version's logged prediction, by model version and "
            "slice (all, cold_item, known_item, ood_high, ood_low).",
            ["model_version", "slice"],
            registry=r,
        )
        self.online_squared_error = Counter(
            "levi_online_squared_error",
            "Sum of squared errors of joined feedback events, by model version, slice and "
            "rating (served: with online corrections; model: the model alone). RMSE = "
            "sqrt(rate(this) / rate(levi_online_feedback_joined_total)).",
            ["model_version", "slice", "rating"],
            registry=r,
        )
        self.online_absolute_error = Counter(
            "levi_online_absolute_error",
            "Sum of absolute errors of joined feedback events (as levi_online_squared_error).",
            ["model_version", "slice", "rating"],
            registry=r,
        )
        self.online_paired = Counter(
            "levi_online_paired",
            "Feedback events whose pair both the champion and the challenger predicted.",
            ["champion", "challenger"],
            registry=r,
        )
        self.online_paired_squared_error = Counter(
            "levi_online_paired_squared_error",
            "Sum over paired events (both versions predicted the pair) of each side's squared "
            "error, by side (champion, challenger) and rating (served, model): the mean "
            "difference is (rate(side=challenger) - rate(side=champion)) / "
            "rate(levi_online_paired_total).",
            ["champion", "challenger", "side", "rating"],
            registry=r,
        )
        self.online_eval_errors = Counter(
            "levi_online_eval_redis_errors",
            "Feedback batches whose online-evaluation sums could not be added in Redis (they "
            "count in this process's figures only).",
            registry=r,
        )
        for result in ("scored", "dropped", "expired", "failed"):
            self.shadow.labels(result=result)
        for decision in ("challenger", "remove_challenger", "promote", "rollback", "reload"):
            for trigger in ("admin", "gate"):
                self.rollout_decisions.labels(decision=decision, trigger=trigger)
        for result in ("stored", "dropped", "redis_error"):
            self.prediction_log.labels(result=result)
        # Slow and surplus clients (service/connections.py).
        self.open_connections = Gauge(
            "levi_open_connections",
            "HTTP connections open within LEVI_MAX_CONNECTIONS (summed over workers).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_refused = Counter(
            "levi_connections_refused",
            "Connections opened beyond LEVI_MAX_CONNECTIONS: answered 503 with Retry-After, or "
            "closed when they sent no whole request within 1 s.",
            registry=r,
        )
        self.receive_timeouts = Counter(
            "levi_receive_timeouts",
            "Connections closed because a request did not arrive whole within "
            "LEVI_RECEIVE_TIMEOUT_S, by phase: silent (nothing sent; closed without an answer), "
            "headers or body (the request was partly received; answered 408).",
            ["phase"],
            registry=r,
        )
        for phase in ("silent", "headers", "body"):
            self.receive_timeouts.labels(phase=phase)
        self.damaged_metric_files = Counter(
            "levi_metrics_damaged_files",
            "Multiprocess metric value files a scrape left out because they could not be read "
            "(0 bytes, cut short, garbage), by action: removed (its worker is gone) or skipped "
            "(left in place: its worker runs). Counted once per file per scrape.",
            ["action"],
            registry=r,
        )
        for action in ("removed", "skipped"):
            self.damaged_metric_files.labels(action=action)
        for side in ("user", "item"):
            self.corrected_entities.labels(side=side)
        for result in ("replayed", "dropped"):
            self.feedback_replay.labels(result=result)
        for kind in ("user", "item"):
            self.unknown_entities.labels(kind=kind)
        for result in ("success", "failure"):
            self.model_reloads.labels(result=result)

    def use_rating_scale(self, lo: float, hi: float) -> None:
        """Register ``levi_prediction_rating`` and ``levi_adapter_rating`` with buckets over
        ``[lo, hi]`` (:func:`rating_buckets`), once: the first served model's range fixes them
        for the process (Prometheus buckets cannot change). A later model with another range
        is observed in the same buckets, and the mismatch is logged."""
        with self._rating_lock:
            self._use_rating_scale(float(lo), float(hi))

    def _use_rating_scale(self, lo: float, hi: float) -> None:
        if self.rating_range is not None:
            if self.rating_range != (lo, hi):
                log.warning(
                    "model rating range [%g, %g] differs from the rating histograms' [%g, %g] "
                    "(fixed by the first model this process served); restart to rebucket",
                    lo,
                    hi,
                    *self.rating_range,
                )
            return
        buckets = rating_buckets(lo, hi)
        self.prediction_rating = Histogram(
            "levi_prediction_rating",
            "Predicted ratings (ensemble, clipped), buckets over the model's rating range.",
            buckets=buckets,
            registry=self.registry,
        )
        self.adapter_rating = Histogram(
            "levi_adapter_rating",
            "Per-adapter ratings by 1-based encoder layer, buckets over the rating range.",
            ["layer"],
            buckets=buckets,
            registry=self.registry,
        )
        self.rating_range = (lo, hi)

    def set_model(self, model_version: str, backbone: str) -> None:
        """Make ``levi_model_info`` name exactly the model now served.

        The previous model's series is set to 0 before it is removed: in multiprocess mode
        removing a child leaves its last value in this worker's file, and :func:`exposition`
        leaves zero-valued ``levi_model_info`` series out.
        """
        if self._model_labels is not None:
            old_version, old_backbone = self._model_labels
            self.model_info.labels(model_version=old_version, backbone=old_backbone).set(0)
        self.model_info.clear()
        self.model_info.labels(model_version=model_version, backbone=backbone).set(1)
        self._model_labels = (model_version, backbone)

    def set_versions(self, aliases: dict[str, str], canary: float) -> None:
        """Make ``levi_model_version_info`` name exactly the loaded versions (alias ->
        model version) and the canary share (as :meth:`set_model` does for one model)."""
        for labels in list(self._version_labels):
            self.model_versions.labels(*labels).set(0)
        self.model_versions.clear()
        self._version_labels = set()
        for alias, version in aliases.items():
            self.model_versions.labels(alias=alias, model_version=version).set(1)
            self._version_labels.add((alias, version))
        if "challenger" in aliases:
            self.model_versions.labels(alias="canary", model_version=aliases["challenger"]).set(
                canary
            )
            self._version_labels.add(("canary", aliases["challenger"]))


def multiprocess_dir() -> str | None:
    """The multiprocess directory of this process (set by ``python -m service --workers N``)."""
    return os.environ.get(MULTIPROC_ENV) or None


def exposition(metrics: Metrics) -> bytes:
    """The text exposition of a scrape: this app's registry, or every worker's values
    (damaged value files left out: ``service/metrics_files.py``)."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(metrics.registry)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiveModelInfo(path, metrics.damaged_metric_files))
    return generate_latest(registry)


def labelled(metric, *values: str):
    """``metric.labels(*values)``, resolved once per metric and label values (``labels()``
    takes a lock and builds a key on every call; a hot path's children are few and fixed)."""
    children = metric.__dict__.setdefault("_levi_children", {})
    child = children.get(values)
    if child is None:
        child = children[values] = metric.labels(*values)
    return child


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
    edges = getattr(histogram, "_levi_edges", None)  # the bounds as an array, once each
    if edges is None:
        edges = histogram._levi_edges = np.asarray(bounds, np.float64)
    index = np.searchsorted(edges, values, side="left")
    counts = np.bincount(index, minlength=len(bounds))
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))
    total.inc(float(values.sum()))
