"""Online evaluation: each version judged by the ratings users send back (``POST /feedback``).

:class:`OnlineEvaluation` joins feedback events with what the versions predicted for their
pairs (``service/prediction_log.py``) and adds the errors to additive sums
(``service/online_stats.py``): per version over its lifetime (``<prefix>:eval:{<version>}``),
and per trial for the two versions compared and their paired sums
(``<prefix>:trial:{<trial>}:...``). Sums live in Redis hashes (shared by replicas,
``HINCRBYFLOAT``) and in process, and are Prometheus counters (RMSE in PromQL:
``sqrt(rate(squared) / rate(count))``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence

import redis

from service.cache import RedisTier
from service.metrics import Metrics
from service.online_stats import (
    RATINGS,
    SLICES,
    compare,
    error_increments,
    paired_increments,
    summarize,
)
from service.prediction_log import PredictionLog
from service.prediction_store import Prediction


class OnlineEvaluation:
    """Joins feedback with logged predictions and keeps the sums (module docstring).

    Args:
        log: where predictions were recorded.
        redis_tier: shared sums (None: in process only).
        ttl_s: Redis keeps a version's sums this long after their last update.
    """

    def __init__(
        self,
        log_: PredictionLog,
        metrics: Metrics,
        *,
        redis_tier: RedisTier | None,
        ttl_s: int,
        key_prefix: str,
    ):
        self.log = log_
        self.metrics = metrics
        self.redis = redis_tier
        self.ttl_s = ttl_s
        self.key_prefix = key_prefix
        self._local: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def eval_key(self, version: str, trial: str | None = None) -> str:
        """A version's sums: over its lifetime, or within one trial (``service/versions.py``)."""
        if trial is None:
            return f"{self.key_prefix}:eval:{{{version}}}"
        return f"{self.key_prefix}:trial:{{{trial}}}:{version}"

    def compare_key(self, trial: str) -> str:
        """The paired sums of one trial (a challenger against a champion)."""
        return f"{self.key_prefix}:trial:{{{trial}}}:paired"

    def join(
        self,
        users: Sequence[str],
        items: Sequence[str],
        ratings: Sequence[float],
        pair: tuple[str, str, str] | None,
    ) -> dict[str, int]:
        """Join feedback events with the predictions logged for their pairs and add the
        errors (blocking: Redis round trips; run off the event loop).

        Args:
            pair: ``(champion, challenger, trial)`` while a challenger is served: both
                versions' sums are also kept for the trial, and the paired sums on the pairs
                both predicted.

        Returns:
            Joined events per model version.
        """
        self.log.flush(timeout_s=0.5)
        found = self.log.lookup(users, items)
        per_version: dict[str, tuple[list[Prediction], list[float], list[str]]] = {}
        both: tuple[list, list, list, list] = ([], [], [], [])
        for u, y, preds in zip(users, ratings, found, strict=True):
            for version, p in preds.items():
                entry = per_version.setdefault(version, ([], [], []))
                entry[0].append(p)
                entry[1].append(float(y))
                entry[2].append(u)
            if pair is not None and pair[0] in preds and pair[1] in preds:
                both[0].append(preds[pair[0]])
                both[1].append(preds[pair[1]])
                both[2].append(float(y))
                both[3].append(u)
        updates: dict[str, dict[str, float]] = {}
        for version, (preds, ys, us) in per_version.items():
            inc = error_increments(preds, ys, us)
            updates[self.eval_key(version)] = inc
            if pair is not None and version in pair[:2]:
                updates[self.eval_key(version, pair[2])] = inc
            self._count(version, inc)
        if pair is not None and both[0]:
            inc = paired_increments(*both)
            updates[self.compare_key(pair[2])] = inc
            m = self.metrics
            m.online_paired.labels(champion=pair[0], challenger=pair[1]).inc(inc["n"])
            for kind in RATINGS:
                for side in ("champion", "challenger"):
                    m.online_paired_squared_error.labels(
                        champion=pair[0], challenger=pair[1], side=side, rating=kind
                    ).inc(inc[f"se_{side}:{kind}"])
        with self._lock:
            for key, inc in updates.items():
                mine = self._local.setdefault(key, {})
                for f, v in inc.items():
                    mine[f] = mine.get(f, 0.0) + v
        if self.redis is not None and updates:
            self._send(updates)
        return {v: len(x[0]) for v, x in per_version.items()}

    def _count(self, version: str, inc: dict[str, float]) -> None:
        m = self.metrics
        for s in SLICES:
            n = inc.get(f"{s}:n", 0.0)
            if not n:
                continue
            m.online_events.labels(model_version=version, slice=s).inc(n)
            for kind in RATINGS:
                m.online_squared_error.labels(model_version=version, slice=s, rating=kind).inc(
                    inc[f"{s}:se:{kind}"]
                )
                m.online_absolute_error.labels(model_version=version, slice=s, rating=kind).inc(
                    inc[f"{s}:ae:{kind}"]
                )

    def _send(self, updates: dict[str, dict[str, float]]) -> None:
        def write(client: redis.Redis) -> bool:
            with client.pipeline(transaction=False) as pipe:
                for key, inc in updates.items():
                    for f, v in inc.items():
                        pipe.hincrbyfloat(key, f, v)
                    pipe.expire(key, self.ttl_s)
                pipe.execute()
            return True

        if self.redis.call("online_eval", write) is None:
            # These events count in this process's figures only (GET /v1/models says which).
            self.metrics.online_eval_errors.inc()

    def sums(self, keys: Iterable[str]) -> tuple[dict[str, dict[str, float]], str]:
        """The sums under ``keys`` and where they came from: ``"redis"`` (every replica's) or
        ``"process"`` (this process's: no Redis, or it did not answer)."""
        keys = list(keys)
        if self.redis is not None and keys:

            def read(client: redis.Redis) -> list:
                with client.pipeline(transaction=False) as pipe:
                    for k in keys:
                        pipe.hgetall(k)
                    return pipe.execute()

            shared = self.redis.call("online_eval", read)
            if shared is not None:
                return {
                    k: {(f.decode() if isinstance(f, bytes) else f): float(v) for f, v in h.items()}
                    for k, h in zip(keys, shared, strict=True)
                }, "redis"
        with self._lock:
            return {k: dict(self._local.get(k, {})) for k in keys}, "process"

    def _trial_keys(self, pair: tuple[str, str, str]) -> list[str]:
        champion, challenger, trial = pair
        return [
            self.eval_key(champion, trial),
            self.eval_key(challenger, trial),
            self.compare_key(trial),
        ]

    def comparison(
        self,
        sums: dict[str, dict[str, float]],
        pair: tuple[str, str, str],
        *,
        rating: str,
        confidence: float,
    ) -> dict:
        """The trial ``pair``'s comparison (``service.online_stats.compare``) from ``sums``
        read by :meth:`sums` (keys of :meth:`report`, or :meth:`trial_sums`)."""
        a, b, paired = (sums[k] for k in self._trial_keys(pair))
        out = compare(a, b, paired, rating=rating, confidence=confidence)
        out.update(
            champion=pair[0],
            challenger=pair[1],
            trial=pair[2],
            challenger_events=int(b.get("all:n", 0.0)),
        )
        return out

    def trial_sums(self, pair: tuple[str, str, str]) -> dict[str, dict[str, float]]:
        """The sums of one trial (blocking: one Redis read)."""
        return self.sums(self._trial_keys(pair))[0]

    def report(
        self,
        versions: Sequence[str],
        pair: tuple[str, str, str] | None,
        *,
        rating: str,
        confidence: float,
    ) -> tuple[dict[str, dict], dict | None, str]:
        """``(per-version summaries over their lifetime, the comparison of the trial ``pair``
        or None, source)``, from one read of the sums."""
        keys = [self.eval_key(v) for v in versions]
        keys += self._trial_keys(pair) if pair is not None else []
        sums, source = self.sums(keys)
        per_version = {v: summarize(sums[self.eval_key(v)]) for v in versions}
        comparison = None
        if pair is not None:
            comparison = self.comparison(sums, pair, rating=rating, confidence=confidence)
        return per_version, comparison, source

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.log.close()
