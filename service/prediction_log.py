"""The prediction log of the online evaluation: what each version predicted for each
``(user, item)`` pair it answered or shadowed, kept ``ttl_s``.

With Redis: one hash per pair, ``<prefix>:pred:<hash of user, item>``, one field per model
version (model rating, served rating, cold-start item, OOD flag), so one ``HGETALL`` joins an
event with every version's prediction, on any replica. Always also in process (bounded LRU):
the state without Redis, the fallback while it is down (service/prediction_store.py: numpy
columns in write order, about 170 bytes a pair). Writes happen on a background thread from a
bounded queue (dropped and counted when full), never on the request path. The join
itself is ``service/online_eval.py``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

import numpy as np
import redis

from service.cache import RedisTier
from service.metrics import Metrics
from service.prediction_store import Prediction, PredictionStore
from service.results import ScoreBatch

log = logging.getLogger(__name__)

OOD_MEDIAN = 1.0  # ood_score is the adapters' spread over its training median


def pair_key(user_id: str, item_id: str) -> str:
    """A fixed-size key of one (user, item) pair (ids may be long or contain anything)."""
    raw = f"{user_id}\x1f{item_id}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


class PredictionLog:
    """Predictions per pair and version, for ``ttl_s`` (module docstring).

    Args:
        redis_tier: the shared Redis, or None (in process only).
        ttl_s: how long a prediction can be joined with feedback.
        max_pairs: pairs kept in process (least recently written first out).
        queue_pairs: predictions waiting for the writer thread; beyond, new ones are dropped
            and counted (``levi_prediction_log_total{result="dropped"}``).
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        redis_tier: RedisTier | None,
        ttl_s: int,
        max_pairs: int,
        queue_pairs: int,
        key_prefix: str,
    ):
        self.metrics = metrics
        self.redis = redis_tier
        self.ttl_s = ttl_s
        self.max_pairs = max_pairs
        self.queue_pairs = queue_pairs
        self.key_prefix = key_prefix
        self._local = PredictionStore(max_pairs, ttl_s)
        self._queue: deque[tuple[str, list[str], list[str], ScoreBatch]] = deque()
        self._queued = 0
        self._lock = threading.Lock()  # the queue (held briefly: record() runs on the loop)
        self._store = threading.Lock()  # the in-process pairs (writer thread vs lookups)
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="levi-prediction-log", daemon=True)
        self._thread.start()

    def redis_key(self, key: str) -> str:
        return f"{self.key_prefix}:pred:{key}"

    # -- writing --------------------------------------------------------------------------

    def record(
        self,
        model_version: str,
        users: Sequence[str],
        items: Sequence[str],
        batch: ScoreBatch,
    ) -> bool:
        """Queue ``batch``'s predictions for their pairs (non-blocking); False when dropped."""
        n = len(batch)
        if n == 0:
            return True
        if self._stopped or self._queued + n > self.queue_pairs:
            self.metrics.prediction_log.labels(result="dropped").inc(n)
            return False
        # The arrays as they are (sliced views): made into predictions on the writer thread.
        entry = (model_version, list(users), list(items), batch)
        with self._lock:
            self._queue.append(entry)
            self._queued += n
            self._wake.notify()
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._busy = False
                    self._idle.notify_all()
                    self._wake.wait()
                if self._stopped and not self._queue:
                    self._busy = False
                    self._idle.notify_all()
                    return
                work = list(self._queue)
                self._queue.clear()
                self._busy = True
            try:
                self._write(work)
            except Exception:  # never let the writer die: predictions are best effort
                log.exception("writing predictions for the online evaluation failed")
            with self._lock:
                self._queued -= sum(len(w[1]) for w in work)

    def _write(self, work: list[tuple[str, list[str], list[str], ScoreBatch]]) -> None:
        stored = 0
        # One write per version of everything queued (single predictions come one at a time),
        # keys made outside the lock: the costly part.
        by_version: dict[str, list[tuple[list[str], list[str], ScoreBatch]]] = {}
        for version, users, items, batch in work:
            by_version.setdefault(version, []).append((users, items, batch))
        for version, parts in by_version.items():
            keys = [k for users, items, _ in parts for k in PredictionStore.keys(users, items)]
            model = np.concatenate([b.model_rating for _, _, b in parts])
            rating = np.concatenate([b.rating for _, _, b in parts])
            cold = np.concatenate([b.cold_item for _, _, b in parts])
            ood_high = np.concatenate([b.ood_score for _, _, b in parts]) > OOD_MEDIAN
            for start in range(0, len(keys), 2048):  # short holds: lookups wait a chunk
                stop = start + 2048
                with self._store:
                    self._local.put(
                        version,
                        keys[start:stop],
                        model[start:stop],
                        rating[start:stop],
                        cold[start:stop],
                        ood_high[start:stop],
                        time.monotonic(),
                    )
            stored += len(keys)
        self.metrics.prediction_log.labels(result="stored").inc(stored)
        if self.redis is None or not stored:
            return

        def rows():
            for version, users, items, batch in work:
                preds = (
                    Prediction(m, r, c, o > OOD_MEDIAN)
                    for m, r, c, o in zip(
                        batch.model_rating.tolist(),
                        batch.rating.tolist(),
                        batch.cold_item.tolist(),
                        batch.ood_score.tolist(),
                        strict=True,
                    )
                )
                for u, i, p in zip(users, items, preds, strict=True):
                    yield u, i, version, p

        def write(client: redis.Redis) -> bool:
            with client.pipeline(transaction=False) as pipe:
                for u, i, version, p in rows():
                    name = self.redis_key(pair_key(u, i))  # fixed-size keys in Redis
                    pipe.hset(name, version, p.encode())
                    pipe.expire(name, self.ttl_s)
                pipe.execute()
            return True

        if self.redis.call("prediction_log", write) is None:
            self.metrics.prediction_log.labels(result="redis_error").inc(stored)

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until every prediction queued so far is written; False on timeout."""
        until = time.monotonic() + timeout_s
        with self._lock:
            while self._queue or self._busy:
                left = until - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=5)

    # -- reading --------------------------------------------------------------------------

    def lookup(self, users: Sequence[str], items: Sequence[str]) -> list[dict[str, Prediction]]:
        """Every version's prediction of each pair (``{}`` for a pair never predicted or
        expired): Redis when it answers, merged with this process's own."""
        keys = list(zip(users, items, strict=True))
        local = PredictionStore.keys(users, items)
        with self._store:
            out = self._local.get(local, time.monotonic())
        if self.redis is None or not keys:
            return out

        def read(client: redis.Redis) -> list:
            with client.pipeline(transaction=False) as pipe:
                for u, i in keys:
                    pipe.hgetall(self.redis_key(pair_key(u, i)))
                return pipe.execute()

        shared = self.redis.call("get", read)
        if shared is None:
            return out
        for mine, theirs in zip(out, shared, strict=True):
            for version, raw in theirs.items():
                p = Prediction.decode(raw)
                name = version.decode() if isinstance(version, bytes) else version
                if p is not None and name not in mine:
                    mine[name] = p
        return out
