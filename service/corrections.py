"""The online corrections' shared state: per user and item, ``(count, sum)`` of residuals.

The arithmetic is ``model.corrections`` (shrunk offsets, progressive updates); this module
keeps the state every replica shares:

* **Redis**, when configured: per model version and side one hash, fields ``n:<id>`` (count)
  and ``s:<id>`` (residual sum), ``levi:fb:{<version>}:item``, so every replica answers with
  the same corrections and a new version starts from zero; count and sum live in one key, so
  an eviction takes both or neither, and one ``HMGET`` reads them together. A batch of feedback
  is applied by one Lua script, atomically and at most once: each process numbers its batches
  and the script applies a batch only if its number is above the last one applied for that
  process (``...:applied``, one field per process), so a batch replayed after a lost reply
  is not counted twice. The hashes expire ``ttl_s`` after the last write. Keys of a version
  share a hash tag (``{<version>}``): one slot in a cluster.
* **In process**, always: without Redis it is the state; with Redis it mirrors what was last
  read, plus this process's own increments. While Redis is down (or this process has
  increments waiting for it) answers come from it, and the increments are kept (merged, at
  most ``max_backlog`` events; beyond, the oldest are dropped and counted) and replayed in
  order when Redis answers again: fully by the next feedback request, a few batches per
  scoring call otherwise, so a replay never holds up predictions for long.

All Redis calls go through :class:`service.cache.RedisTier` (timeouts and back-off), so an
outage costs no request more than one timeout.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
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
MERGE_EVENTS = 5_000  # kept increments never sent are merged into batches of about this size
REPLAY_PER_READ = 4  # kept batches a scoring call may replay before it reads
RECENT_IDS = 1_000_000  # client event ids a process remembers (within LEVI_FEEDBACK_DEDUP_S)
# The stored payload of an id recorded without a fingerprint (and by earlier versions, which
# stored "1"): such an id is a duplicate whatever the payload, never a conflict.
UNKNOWN_PAYLOAD = "1"

# KEYS: user hash, item hash, applied hash. ARGV: ttl, writer, batch number, then per side the
# number of entities and (id, count, sum) per entity. The batch number is recorded last, so a
# script that fails half-way is retried whole (HINCRBY* on fields the script owns only fail
# on a corrupted hash).
_APPLY = """
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
if tonumber(ARGV[3]) > last then
  local i = 4
  for side = 1, 2 do
    local n = tonumber(ARGV[i]); i = i + 1
    for _ = 1, n do
      redis.call('HINCRBY', KEYS[side], 'n:' .. ARGV[i], ARGV[i + 1])
      redis.call('HINCRBYFLOAT', KEYS[side], 's:' .. ARGV[i], ARGV[i + 2])
      i = i + 3
    end
  end
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
end
for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ARGV[1]) end
return {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[2])}
"""


def shrinkage_of(manifest: dict) -> Shrinkage:
    """The artifact's fitted shrinkage (manifest ``corrections``), or the default for an
    artifact trained before they were fitted."""
    doc = manifest.get("corrections")
    if not doc:
        return DEFAULT_SHRINKAGE
    return Shrinkage.from_json(doc)


KNOWN_IDS_KEPT = 65_536  # item ids whose vocabulary answer is kept (OnlineCorrections)


def item_vocabulary(features: FeatureSpec) -> Callable[[str], bool] | None:
    """Whether an item id is in the model's vocabulary (None: the id is no model input)."""
    column = features.id_column("item")
    return None if column < 0 else features.categorical[column].known


@dataclass
class Pending:
    """Increments waiting for Redis: per side, entity id -> ``(count, residual sum)``.

    ``number`` is given when the batch is first sent (batches are sent in order); one never
    sent may still take more increments (merged).
    """

    per_side: dict[str, dict[str, tuple[int, float]]]
    n_events: int
    number: int | None = None

    def merge(self, other: Pending) -> None:
        for side, per_entity in other.per_side.items():
            mine = self.per_side[side]
            for entity, (n, s) in per_entity.items():
                n0, s0 = mine.get(entity, (0, 0.0))
                mine[entity] = (n0 + n, s0 + s)
        self.n_events += other.n_events


def _decoded(value: bytes | str | None) -> str | None:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _differ(stored: str | None, fingerprint: str) -> bool:
    """Whether an id stored with ``stored`` now comes with another payload (unknown payloads
    never differ)."""
    unknown = (None, UNKNOWN_PAYLOAD)
    return stored not in unknown and fingerprint not in unknown and stored != fingerprint


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
        shrinkage: ``k_item`` / ``k_user`` / ``k_item_oov`` (the manifest's ``corrections``).
        rating_range: answers are clipped to it.
        redis_tier: the shared Redis, or None (in-process state only).
        ttl_s: expiry of the Redis hashes after their last write.
        max_backlog: events whose increments are kept while Redis is down.
        item_known: whether an item id is in the model's vocabulary; the others (cold-start
            items) use ``shrinkage.k_item_oov``. None: every item uses ``k_item``.
        dedup_s: how long a client-supplied event id is remembered, so a retried request
            is not learned twice (``first_seen``).
        mirror_size: with Redis, entities per side whose state this process mirrors (the
            least recently read go first; during an outage an evicted entity answers without
            its correction until Redis returns). Without Redis the process's state is the
            only one and is not bounded.
    """

    def __init__(
        self,
        model_version: str,
        shrinkage: Shrinkage,
        rating_range: tuple[float, float],
        metrics: Metrics,
        *,
        redis_tier: RedisTier | None,
        ttl_s: int,
        max_backlog: int,
        key_prefix: str,
        item_known: Callable[[str], bool] | None = None,
        mirror_size: int,
        dedup_s: int,
    ):
        self.model_version = model_version
        self.item_known = item_known
        # The answer per id, kept for the ids seen most recently: a /rank asks about each of
        # its candidates on every call.
        self._item_known = functools.lru_cache(maxsize=KNOWN_IDS_KEPT)(item_known or bool)
        self.shrinkage = shrinkage
        self.rating_range = rating_range
        self.metrics = metrics
        self.redis = redis_tier
        self.ttl_s = ttl_s
        self.max_backlog = max_backlog
        base = f"{key_prefix}:{{{model_version}}}"
        self._keys = {s: f"{base}:{s}" for s in SIDES}
        self._applied = f"{base}:applied"
        self._seen = f"{base}:seen:"
        self.dedup_s = dedup_s
        # client event id -> (when, payload fingerprint), oldest first
        self._recent: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._writer = uuid.uuid4().hex  # this process's batches, numbered from 1
        self._numbers = itertools.count(1)
        self.mirror_size = mirror_size
        self._local: dict[str, OrderedDict[str, tuple[int, float]]] = {
            s: OrderedDict() for s in SIDES
        }
        self._backlog: deque[Pending] = deque()
        self._backlog_events = 0
        self._lock = threading.Lock()  # the local state and the backlog
        self._record_lock = threading.Lock()  # one feedback batch at a time per process
        self._replay_lock = threading.Lock()  # one replay at a time: batches go in order
        self._script = None if redis_tier is None else redis_tier.client.register_script(_APPLY)

    # -- state ------------------------------------------------------------------------------

    def _read_redis(self, ids: dict[str, list[str]]) -> dict[str, list] | None:
        sides = [side for side in SIDES if ids[side]]

        def read(client: redis.Redis) -> list:
            # MULTI/EXEC (one slot): both sides as of one moment
            with client.pipeline(transaction=True) as pipe:
                for side in sides:
                    fields = [f"n:{i}" for i in ids[side]] + [f"s:{i}" for i in ids[side]]
                    pipe.hmget(self._keys[side], fields)
                return pipe.execute()

        values = self.redis.call("feedback_read", read) if sides else []
        if values is None:
            return None
        out = {}
        for side, row in zip(sides, values, strict=True):
            half = len(ids[side])
            out[side] = list(zip(row[:half], row[half:], strict=True))
        return out

    def state(self, ids: dict[str, list[str]]) -> dict[str, dict[str, tuple[int, float]]]:
        """``(count, sum)`` of the distinct ``ids`` per side (absent ids: no feedback yet).

        From Redis when it answers and nothing of this process waits to be replayed (a few
        kept batches are replayed first), else from the in-process state.
        """
        fresh = None
        if self.redis is not None:
            if self._backlog:
                self._replay(limit=REPLAY_PER_READ, wait=False)
            if not self._backlog:
                fresh = self._read_redis(ids)
        with self._lock:
            if fresh is None:
                return {
                    s: {i: self._local[s][i] for i in ids[s] if i in self._local[s]} for s in SIDES
                }
            out: dict[str, dict[str, tuple[int, float]]] = {s: {} for s in SIDES}
            for side, rows in fresh.items():
                local = self._local[side]
                for entity, (n, total) in zip(ids[side], rows, strict=True):
                    if n is None or total is None:  # absent (or half evicted): none yet
                        local.pop(entity, None)
                        continue
                    local[entity] = out[side][entity] = (int(n), float(total))
                    local.move_to_end(entity)
            self._trim()
            return out

    def _trim(self) -> None:
        """Keep the Redis mirror within ``mirror_size`` per side (under ``_lock``)."""
        if self.redis is None:
            return
        for local in self._local.values():
            while len(local) > self.mirror_size:
                local.popitem(last=False)

    def item_oov(self, items: Sequence[str]) -> np.ndarray | None:
        """bool ``[n]``: the item id is out of the model's vocabulary (None: not told)."""
        if self.item_known is None:
            return None
        known = self._item_known
        return np.fromiter((not known(i) for i in items), bool, len(items))

    def offsets(self, users: Sequence[str], items: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The user and item offsets ``[n]`` (float64) of pairs, from the current state.

        Computed once per distinct id with feedback (an id without any has offset 0: the
        shrinkage ``k`` is positive), then spread to the pairs: a ``/rank`` of many
        candidates of one user does no per-pair Python work here."""
        distinct = {"user": list(dict.fromkeys(users)), "item": list(dict.fromkeys(items))}
        state = self.state(distinct)
        out = []
        for side, ids in (("user", users), ("item", items)):
            names, known = distinct[side], state[side]
            per = np.zeros(len(names), np.float64)
            if known:
                at = [j for j, i in enumerate(names) if i in known]
                seen = [names[j] for j in at]
                n = np.array([known[i][0] for i in seen], np.float64)
                s = np.array([known[i][1] for i in seen], np.float64)
                k = (
                    self.shrinkage.k_user
                    if side == "user"
                    else self.shrinkage.item_k(self.item_oov(seen))
                )
                per[at] = offset(n, s, k)
            if len(names) == len(ids):  # all distinct: ``names`` is ``ids`` in order
                out.append(per)
            else:
                position = {i: j for j, i in enumerate(names)}
                out.append(per[np.fromiter(map(position.__getitem__, ids), np.intp, len(ids))])
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

    def first_seen(
        self,
        event_ids: Sequence[str | None],
        fingerprints: Sequence[str] | None = None,
    ) -> np.ndarray:
        """bool ``[n]``: which events to learn from: False for a client-supplied id already
        received in the last ``dedup_s`` seconds (a retried request), True otherwise.

        With Redis every replica sees every id (``SET NX`` with a TTL, one key per id); this
        process's own recent ids count too (at most ``RECENT_IDS``), so an id first received
        while Redis was down is still known here when it is retried after Redis returns. A
        caller that then fails to learn the events gives the ids back (:meth:`forget`).

        Args:
            event_ids: ``[n]`` client ids (None: the service assigned one, never a repeat).
            fingerprints: ``[n]`` payload fingerprints
                (:func:`service.idempotency.event_fingerprint`), stored with each new id so
                that :meth:`conflicts` can tell a retry from a reuse with another payload.
                Ids a concurrent request claimed with another payload are logged.
        """
        keep = np.ones(len(event_ids), bool)
        prints = list(fingerprints) if fingerprints is not None else [UNKNOWN_PAYLOAD] * len(keep)
        given = [(j, i, prints[j]) for j, i in enumerate(event_ids) if i is not None]
        if not given:
            return keep
        claimed = None
        if self.redis is not None:

            def claim(client: redis.Redis) -> list:
                with client.pipeline(transaction=False) as pipe:
                    for _, i, fp in given:
                        pipe.set(self._seen + i, fp, nx=True, ex=self.dedup_s)
                        pipe.get(self._seen + i)  # ours, or the payload it was first seen with
                    return pipe.execute()

            claimed = self.redis.call("feedback_dedup", claim)
        now = time.monotonic()
        raced = []
        with self._lock:
            while self._recent and now - next(iter(self._recent.values()))[0] > self.dedup_s:
                self._recent.popitem(last=False)
            for k, (j, i, fp) in enumerate(given):
                new, first = True, fp  # first: the payload the id was first received with
                if claimed is not None:
                    new, first = bool(claimed[2 * k]), _decoded(claimed[2 * k + 1]) or fp
                old = self._recent.get(i)
                if old is not None:  # e.g. first received while Redis was down
                    new, first = False, old[1]
                keep[j] = new
                if not new and _differ(first, fp):
                    raced.append(i)
                self._recent[i] = (now, first)
                self._recent.move_to_end(i)
            while len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
        if raced:
            # Requests checked by conflicts() at the same moment: both were logged, the first
            # one claimed the id and is learned; retraining counts the id once.
            log.warning(
                "event_id(s) %s arrived at the same time with another payload; the first is "
                "learned, the others only logged",
                ", ".join(raced[:10]),
            )
        return keep

    def conflicts(self, event_ids: Sequence[str | None], fingerprints: Sequence[str]) -> list[int]:
        """Positions of events whose client id was received (and learned) in the last
        ``dedup_s`` seconds with another payload: a reused id, not a retry.

        Read-only: Redis's record of every replica when it answers, and this process's own
        recent ids. Ids recorded without a fingerprint (before fingerprints were stored)
        never conflict.
        """
        given = [(j, i) for j, i in enumerate(event_ids) if i is not None]
        if not given:
            return []
        stored: list | None = None
        if self.redis is not None:
            keys = [self._seen + i for _, i in given]
            stored = self.redis.call("feedback_dedup", lambda c: c.mget(keys))
        now = time.monotonic()
        out = []
        with self._lock:
            for k, (j, i) in enumerate(given):
                local = self._recent.get(i)
                fresh = local is not None and now - local[0] <= self.dedup_s
                if fresh and _differ(local[1], fingerprints[j]):
                    out.append(j)
                    continue
                if stored is not None and _differ(_decoded(stored[k]), fingerprints[j]):
                    out.append(j)
        return out

    def forget(self, event_ids: Sequence[str | None]) -> None:
        """Give back ids :meth:`first_seen` claimed for events that were not learned after
        all, so that a retry of them is (best effort with Redis)."""
        given = [i for i in event_ids if i is not None]
        with self._lock:
            for i in given:
                self._recent.pop(i, None)
        if given and self.redis is not None:
            self.redis.call("feedback_dedup", lambda c: c.delete(*[self._seen + i for i in given]))

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
            if self.redis is not None:
                self._replay(limit=None, wait=True)  # what waits goes first, in order
            distinct = {"user": list(dict.fromkeys(users)), "item": list(dict.fromkeys(items))}
            state = self.state(distinct)

            def base(side: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
                rows = [state[side].get(i, (0, 0.0)) for i in ids]
                return (
                    np.array([r[0] for r in rows], np.float64),
                    np.array([r[1] for r in rows], np.float64),
                )

            result = replay(
                model_rating,
                rating,
                users,
                items,
                self.shrinkage,
                user_state=base("user", users),
                item_state=base("item", items),
                item_oov=self.item_oov(items),
            )
            pending = Pending(
                {
                    "user": _aggregate(users, result.user_residual),
                    "item": _aggregate(items, result.item_residual),
                },
                len(users),
            )
            with self._lock:
                for side, per_entity in pending.per_side.items():
                    local = self._local[side]
                    for entity, (dn, ds) in per_entity.items():
                        n, s = state[side].get(entity, (0, 0.0))
                        local[entity] = (n + dn, s + ds)
                        local.move_to_end(entity)
                self._trim()
            if self.redis is None:
                for side in SIDES:
                    self.metrics.corrected_entities.labels(side=side).set(len(self._local[side]))
            elif self._backlog or not self._send(pending):
                self._keep(pending)
            return result

    def _send(self, pending: Pending) -> bool:
        """Apply ``pending`` in Redis (at most once); False when Redis did not answer."""
        if not self.redis.available:
            return False  # not sent: it keeps no number and may still be merged
        if pending.number is None:
            pending.number = next(self._numbers)
        args: list = [self.ttl_s, self._writer, pending.number]
        for side in SIDES:
            per_entity = pending.per_side[side]
            args.append(len(per_entity))
            for entity, (n, total) in per_entity.items():
                args += [entity, n, repr(total)]
        keys = [self._keys["user"], self._keys["item"], self._applied]
        sizes = self.redis.call(
            "feedback_write", lambda client: self._script(keys=keys, args=args, client=client)
        )
        if sizes is None:
            return False
        for side, size in zip(SIDES, sizes, strict=True):
            self.metrics.corrected_entities.labels(side=side).set(int(size) // 2)
        return True

    def _keep(self, pending: Pending) -> None:
        with self._lock:
            tail = self._backlog[-1] if self._backlog else None
            if tail is not None and tail.number is None and tail.n_events < MERGE_EVENTS:
                tail.merge(pending)
            else:
                self._backlog.append(pending)
            self._backlog_events += pending.n_events
            while self._backlog_events > self.max_backlog and len(self._backlog) > 1:
                dropped = self._backlog.popleft()
                self._backlog_events -= dropped.n_events
                self.metrics.feedback_replay.labels(result="dropped").inc(dropped.n_events)
                log.warning(
                    "feedback replay backlog over %d events: dropped the increments of %d "
                    "events from Redis's corrections (they stay in the feedback log)",
                    self.max_backlog,
                    dropped.n_events,
                )
            self.metrics.feedback_backlog.set(self._backlog_events)

    def _replay(self, *, limit: int | None, wait: bool) -> None:
        """Send kept batches in order (at most ``limit``); ``wait`` False: skip if another
        thread is replaying."""
        if not self._replay_lock.acquire(blocking=wait):
            return
        try:
            for _ in range(limit) if limit is not None else itertools.count():
                with self._lock:
                    if not self._backlog:
                        return
                    head = self._backlog[0]
                if not self._send(head):
                    return
                with self._lock:
                    self._backlog.popleft()
                    self._backlog_events -= head.n_events
                    self.metrics.feedback_backlog.set(self._backlog_events)
                self.metrics.feedback_replay.labels(result="replayed").inc(head.n_events)
                log.info("replayed the corrections of %d feedback events to Redis", head.n_events)
        finally:
            self._replay_lock.release()

    def discard_backlog(self) -> None:
        """Drop what waits for Redis (a reload replaced this model version), counted."""
        with self._lock:
            if self._backlog_events:
                log.warning(
                    "model %s replaced while %d feedback events waited for Redis: their "
                    "corrections are dropped (the feedback log keeps them)",
                    self.model_version,
                    self._backlog_events,
                )
                self.metrics.feedback_replay.labels(result="dropped").inc(self._backlog_events)
            self._backlog.clear()
            self._backlog_events = 0
            self.metrics.feedback_backlog.set(0)

    @property
    def backlog_events(self) -> int:
        return self._backlog_events
