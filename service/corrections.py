"""The online corrections' shared state: per user and item, ``(count, sum)`` of residuals.

The arithmetic is ``model.corrections`` (shrunk offsets, progressive updates); this module
keeps the state every replica shares:

* **Redis**, when configured: per model version and side, two hashes keyed by entity id,
  ``levi:fb:{<version>}:item:n`` (counts) and ``...:item:s`` (residual sums), so every replica
  answers with the same corrections and a reload (a new version) starts fresh. A batch of
  feedback is applied by one Lua script that first sets a marker key for the batch id
  (``SET NX``): applied atomically, and exactly once even when the reply is lost and the batch
  is replayed. The hashes expire ``ttl_s`` after the last write (an old version's state goes
  away by itself). Keys of one version share a hash tag (``{<version>}``): one slot in a
  cluster.
* **In process**, always: without Redis it is the state; with Redis it mirrors what was last
  read, plus this process's own increments. While Redis is down answers go on from it, and the
  increments of each batch are kept (at most ``max_backlog`` events; beyond, the oldest are
  dropped and counted) and replayed, in order, when Redis answers again.

All Redis calls go through the activation cache's :class:`service.cache.RedisTier` (timeouts
and back-off), so an outage costs no request more than one timeout.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from model.corrections import DEFAULT_SHRINKAGE, Replay, Shrinkage, offset, replay
from model.features import FeatureSpec
from service.cache import RedisTier
from service.metrics import Metrics, observe_many
from service.results import ScoreBatch

log = logging.getLogger(__name__)

SIDES = ("user", "item")
KEY_PREFIX = "levi:fb"

# KEYS: the batch's marker, user counts, user sums, item counts, item sums.
# ARGV: ttl, then per side: the number of entities, then (id, count, sum) per entity.
_APPLY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return {redis.call('HLEN', KEYS[2]), redis.call('HLEN', KEYS[4])}
end
local i = 2
for side = 0, 1 do
  local n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do
    redis.call('HINCRBY', KEYS[2 + 2 * side], ARGV[i], ARGV[i + 1])
    redis.call('HINCRBYFLOAT', KEYS[3 + 2 * side], ARGV[i], ARGV[i + 2])
    i = i + 3
  end
end
for k = 2, 5 do redis.call('EXPIRE', KEYS[k], ARGV[1]) end
return {redis.call('HLEN', KEYS[2]), redis.call('HLEN', KEYS[4])}
"""


def shrinkage_of(manifest: dict) -> Shrinkage:
    """The artifact's fitted shrinkage (manifest ``corrections``), or the default for an
    artifact trained before they were fitted."""
    doc = manifest.get("corrections")
    if not doc:
        return DEFAULT_SHRINKAGE
    return Shrinkage.from_json(doc)


def item_vocabulary(features: FeatureSpec) -> Callable[[str], bool] | None:
    """Whether an item id is in the model's vocabulary (None: the id is no model input)."""
    column = features.id_column("item")
    return None if column < 0 else features.categorical[column].known


@dataclass(frozen=True)
class Increments:
    """One feedback batch's additions: per side, entity id -> ``(count, residual sum)``."""

    batch_id: str
    per_side: dict[str, dict[str, tuple[int, float]]]
    n_events: int


def _aggregate(ids: Sequence[str], residual: np.ndarray) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for key, value in zip(ids, residual.tolist(), strict=True):
        n, s = out.get(key, (0, 0.0))
        out[key] = (n + 1, s + value)
    return out


class OnlineCorrections:
    """Corrections of one served model version (a reload builds a new one).

    Args:
        model_version: namespaces the Redis state.
        shrinkage: ``k_item`` / ``k_user`` (the manifest's ``corrections``).
        rating_range: answers are clipped to it.
        redis_tier: the shared Redis, or None (in-process state only).
        ttl_s: expiry of the Redis hashes after their last write.
        max_backlog: events whose increments are kept while Redis is down.
        item_known: whether an item id is in the model's vocabulary; the others (cold-start
            items) use ``shrinkage.k_item_oov``. None: every item uses ``k_item``.
    """

    def __init__(
        self,
        model_version: str,
        shrinkage: Shrinkage,
        rating_range: tuple[float, float],
        metrics: Metrics,
        *,
        redis_tier: RedisTier | None = None,
        ttl_s: int = 30 * 24 * 3600,
        max_backlog: int = 100_000,
        key_prefix: str = KEY_PREFIX,
        item_known: Callable[[str], bool] | None = None,
    ):
        self.model_version = model_version
        self.item_known = item_known
        self.shrinkage = shrinkage
        self.rating_range = rating_range
        self.metrics = metrics
        self.redis = redis_tier
        self.ttl_s = ttl_s
        self.max_backlog = max_backlog
        base = f"{key_prefix}:{{{model_version}}}"
        self._marker = f"{base}:applied:"
        self._keys = {s: (f"{base}:{s}:n", f"{base}:{s}:s") for s in SIDES}
        self._local: dict[str, dict[str, tuple[int, float]]] = {s: {} for s in SIDES}
        self._backlog: deque[Increments] = deque()
        self._backlog_events = 0
        self._lock = threading.Lock()  # the local state and the backlog
        self._record_lock = threading.Lock()  # one feedback batch at a time per process
        self._script = None if redis_tier is None else redis_tier.client.register_script(_APPLY)

    # -- state ------------------------------------------------------------------------------

    def _read_redis(self, ids: dict[str, list[str]]) -> dict[str, list] | None:
        def read(client: redis.Redis) -> list:
            with client.pipeline(transaction=False) as pipe:
                for side in SIDES:
                    if ids[side]:
                        pipe.hmget(self._keys[side][0], ids[side])
                        pipe.hmget(self._keys[side][1], ids[side])
                return pipe.execute()

        values = self.redis.call("feedback_read", read)
        if values is None:
            return None
        out, k = {}, 0
        for side in SIDES:
            if ids[side]:
                out[side] = list(zip(values[k], values[k + 1], strict=True))
                k += 2
        return out

    def state(self, ids: dict[str, list[str]]) -> dict[str, dict[str, tuple[int, float]]]:
        """``(count, sum)`` of the distinct ``ids`` per side (absent ids: no feedback yet).

        From Redis when it answers (and nothing of this process waits to be replayed), else
        from the in-process state.
        """
        fresh = None
        if self.redis is not None and self._replay_backlog():
            fresh = self._read_redis(ids)
        with self._lock:
            if fresh is None:
                return {s: {i: self._local[s][i] for i in ids[s] if i in self._local[s]}
                        for s in SIDES}  # fmt: skip
            out: dict[str, dict[str, tuple[int, float]]] = {s: {} for s in SIDES}
            for side, rows in fresh.items():
                local = self._local[side]
                for entity, (n, s) in zip(ids[side], rows, strict=True):
                    if n is None:
                        local.pop(entity, None)
                        continue
                    local[entity] = out[side][entity] = (int(n), float(s))
            return out

    def item_oov(self, items: Sequence[str]) -> np.ndarray | None:
        """bool ``[n]``: the item id is out of the model's vocabulary (None: not told)."""
        if self.item_known is None:
            return None
        oov = {i: not self.item_known(i) for i in dict.fromkeys(items)}
        return np.fromiter((oov[i] for i in items), bool, len(items))

    def offsets(self, users: Sequence[str], items: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The user and item offsets ``[n]`` (float64) of pairs, from the current state."""
        distinct = {"user": list(dict.fromkeys(users)), "item": list(dict.fromkeys(items))}
        state = self.state(distinct)
        k = {"user": self.shrinkage.k_user, "item": self.shrinkage.item_k(self.item_oov(items))}
        out = []
        for side, ids in (("user", users), ("item", items)):
            known = state[side]
            n = np.fromiter((known.get(i, (0, 0.0))[0] for i in ids), np.float64, len(ids))
            s = np.fromiter((known.get(i, (0, 0.0))[1] for i in ids), np.float64, len(ids))
            out.append(offset(n, s, k[side]))
        return out[0], out[1]

    def apply(self, batch: ScoreBatch, users: Sequence[str], items: Sequence[str]) -> ScoreBatch:
        """``batch`` with the current offsets added to its ratings (clipped to the range)."""
        user, item = self.offsets(users, items)
        corrected = batch.corrected(user, item, self.rating_range)
        observe_many(
            self.metrics.correction_magnitude,
            np.abs(corrected.user_correction + corrected.item_correction),
        )
        return corrected

    # -- feedback ---------------------------------------------------------------------------

    def record(
        self,
        users: Sequence[str],
        items: Sequence[str],
        model_rating: np.ndarray,
        rating: np.ndarray,
    ) -> Replay:
        """Apply feedback events, in order: each event's residuals join its entities' sums.

        Args:
            users, items: ``[n]`` ids; model_rating: the model's own ratings ``[n]``;
            rating: the ratings users gave ``[n]``.

        Returns:
            the offsets each event was answered with and the residuals it added.
        """
        with self._record_lock:
            distinct = {"user": list(dict.fromkeys(users)), "item": list(dict.fromkeys(items))}
            state = self.state(distinct)

            def base(side: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
                rows = [state[side].get(i, (0, 0.0)) for i in ids]
                return (np.array([r[0] for r in rows], np.float64),
                        np.array([r[1] for r in rows], np.float64))  # fmt: skip

            result = replay(
                model_rating, rating, users, items, self.shrinkage,
                user_state=base("user", users), item_state=base("item", items),
                item_oov=self.item_oov(items),
            )  # fmt: skip
            increments = Increments(
                uuid.uuid4().hex,
                {"user": _aggregate(users, result.user_residual),
                 "item": _aggregate(items, result.item_residual)},
                len(users),
            )  # fmt: skip
            with self._lock:
                for side, per_entity in increments.per_side.items():
                    local = self._local[side]
                    for entity, (dn, ds) in per_entity.items():
                        n, s = state[side].get(entity, (0, 0.0))
                        local[entity] = (n + dn, s + ds)
            if self.redis is not None:
                self._write_or_keep(increments)
            else:
                for side in SIDES:
                    size = len(self._local[side])
                    self.metrics.corrected_entities.labels(side=side).set(size)
            return result

    def _write(self, increments: Increments) -> bool:
        args: list = [self.ttl_s]
        for side in SIDES:
            per_entity = increments.per_side[side]
            args.append(len(per_entity))
            for entity, (n, s) in per_entity.items():
                args += [entity, n, repr(s)]
        keys = [self._marker + increments.batch_id, *self._keys["user"], *self._keys["item"]]
        sizes = self.redis.call(
            "feedback_write", lambda client: self._script(keys=keys, args=args, client=client)
        )
        if sizes is None:
            return False
        for side, size in zip(SIDES, sizes, strict=True):
            self.metrics.corrected_entities.labels(side=side).set(int(size))
        return True

    def _write_or_keep(self, increments: Increments) -> None:
        if self._replay_backlog() and self._write(increments):
            return
        with self._lock:
            self._backlog.append(increments)
            self._backlog_events += increments.n_events
            while self._backlog_events > self.max_backlog and len(self._backlog) > 1:
                dropped = self._backlog.popleft()
                self._backlog_events -= dropped.n_events
                self.metrics.feedback_replay.labels(result="dropped").inc(dropped.n_events)
                log.warning(
                    "feedback replay backlog over %d events: dropped the increments of %d "
                    "events from Redis's corrections (they stay in the feedback log)",
                    self.max_backlog, dropped.n_events,
                )  # fmt: skip
            self.metrics.feedback_backlog.set(self._backlog_events)

    def _replay_backlog(self) -> bool:
        """Replay the kept increments in order; True when none is left."""
        while True:
            with self._lock:
                if not self._backlog:
                    return True
                head = self._backlog[0]
            if not self._write(head):
                return False
            with self._lock:
                if self._backlog and self._backlog[0] is head:
                    self._backlog.popleft()
                    self._backlog_events -= head.n_events
                self.metrics.feedback_replay.labels(result="replayed").inc(head.n_events)
                self.metrics.feedback_backlog.set(self._backlog_events)
            log.info("replayed the corrections of %d feedback events to Redis", head.n_events)

    @property
    def backlog_events(self) -> int:
        return self._backlog_events
