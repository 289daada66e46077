"""The online catalog: users and items registered between retrainings, then asked for by id.

A record (``model/catalog_format.py``) holds an entity's fields as the served model's dataset
spec declares them. Where it lives:

* **the catalog log** (``LEVI_CATALOG_DIR``): every accepted record, written and synced before
  the request is answered (``service/durable_log.py``: one file per process, rotation), so
  nothing answered is lost; it is what a Redis that lost its data is refilled from, and what
  ``python -m training --catalog DIR`` reads;
* **Redis** (``service/catalog_redis.py``), when configured: shared by every replica, keyed by
  data set and id (not by model version: records survive a retraining);
* **in every process** (``service/catalog_mirror.py``): all records of the served data set,
  so scoring resolves them without a round trip.

**Consistency.** A process sees its own writes at once. Every ``LEVI_CATALOG_SYNC_S`` (0.1 s)
its sync thread reads what other processes wrote: from Redis's change stream, or, without
Redis, from the other files of the log directory (the workers of ``--workers N`` share one).
So an update is answered by every replica and worker within about ``LEVI_CATALOG_SYNC_S`` plus
one poll (tested: within 1 s), while Redis answers. Entities are keyed by their fields in
the projection cache (``service/entity_store.py``), so once a process holds the new record
no projection computed from the old fields is used again.

**Redis down.** A write is logged and held here (answer ``"shared": "kept"``); when Redis
answers again the held records are written. When Redis lost its data (its epoch token
changed or vanished), was never reached since the start, or trimmed changes before this
process read them, the process writes every record it holds (those of its log directory and
those it learned) and reloads Redis's: each entity keeps its newest record, so any number of
processes may do this at once.

**Resolution when scoring** (:meth:`Catalog.resolve`): request fields > catalog record > the
model's tables > unknown (cold start), field by field; each answer says which source each
side came from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.catalog_format import KINDS, encode_records
from service.cache import RedisTier
from service.catalog_log_tail import LogTail
from service.catalog_mirror import CatalogMirror, Record
from service.catalog_redis import CatalogRedis, Position
from service.catalog_warmer import CatalogWarmer
from service.durable_log import DurableLog
from service.entity_store import FrozenFields
from service.errors import CatalogLogError, CatalogNotOpenError
from service.metrics import Metrics
from service.scorer import ScoreInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteResult:
    """What became of accepted records.

    Attributes:
        records: the records written (in request order).
        shared: ``applied`` (in Redis: every replica answers with them within the sync
            bound), ``kept`` (Redis did not answer: logged, served by this process, written to
            Redis when it answers) or ``local`` (no Redis: this process, and the processes
            sharing its log directory within the sync bound).
        queued: how many were queued for projection off the request path.
    """

    records: list[Record]
    shared: str
    queued: int


class Catalog:
    """The catalog of the served data set.

    Args:
        directory: ``LEVI_CATALOG_DIR``.
        redis_tier: the process's Redis tier, or None (in process plus the log).
        key_prefix: ``LEVI_CATALOG_KEY_PREFIX``.
        sync_s: seconds between two reads of other processes' writes.
        rotate_bytes, rotate_s: the log's rotation.
        warmer: projects registered entities off the request path (None: on first use).
    """

    def __init__(
        self,
        directory: Path,
        metrics: Metrics,
        *,
        redis_tier: RedisTier | None,
        key_prefix: str,
        sync_s: float,
        rotate_bytes: int,
        rotate_s: float,
        warmer: CatalogWarmer | None = None,
    ):
        self.directory = Path(directory)
        self.metrics = metrics
        self.redis_tier = redis_tier
        self.key_prefix = key_prefix
        self.sync_s = sync_s
        self.warmer = warmer
        self.log = DurableLog(
            self.directory,
            kind="catalog",
            setting="LEVI_CATALOG_DIR",
            rotate_bytes=rotate_bytes,
            rotate_s=rotate_s,
            error=CatalogLogError,
        )
        self.mirror = CatalogMirror()
        self.dataset: str | None = None
        self._store: CatalogRedis | None = None
        self._position: Position | None = None  # None: not synced with Redis yet
        self._refill = True
        self._unshared: dict[tuple[str, str], Record] = {}
        self._tail: LogTail | None = None
        self._lock = threading.Lock()  # _unshared, the clock
        self._sync_lock = threading.Lock()  # one sync step at a time
        self._clock = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def shared(self) -> bool:
        """Records are shared through Redis."""
        return self.redis_tier is not None

    # -- opening ----------------------------------------------------------------------------

    def open(self, dataset: str) -> None:
        """Hold the records of ``dataset``: those of the log directory, then (with Redis)
        refill Redis with them and load Redis's; start the sync thread. Blocking (reads the
        log directory). Opening the data set already open does nothing.
        """
        if dataset == self.dataset:
            return
        self._stop_thread()
        t0 = time.perf_counter()
        with self._sync_lock:
            self.mirror.clear()
            with self._lock:
                self._unshared.clear()
            self.dataset = dataset
            self._tail = LogTail(self.directory, dataset, skip_prefix=self.log.stem)
            from_log = self.mirror.apply(self._tail.read())
            self._store = None
            self._position, self._refill = None, True
            if self.redis_tier is not None:
                self._store = CatalogRedis(self.redis_tier, self.key_prefix, dataset)
                self._full_sync("start")
        self._count()
        if self._store is None:
            where = ""
        elif self._position is not None:
            where = ", then Redis's"
        else:
            where = "; Redis not reached yet: synced when it answers"
        log.info(
            "catalog of %s: %d users and %d items (%d records from %s%s) in %.1fs",
            dataset,
            self.mirror.size("user"),
            self.mirror.size("item"),
            len(from_log),
            self.directory,
            where,
            time.perf_counter() - t0,
        )
        self.warm_all()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sync_loop, name="levi-catalog", daemon=True)
        self._thread.start()

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=30)
            self._thread = None

    def close(self) -> None:
        self._stop_thread()
        self.log.close()

    def warm_all(self) -> int:
        """Queue every registered entity for projection (a new version was installed)."""
        if self.warmer is None:
            return 0
        return self.warmer.enqueue([r for k in KINDS for r in list(self.mirror.live(k).values())])

    # -- writes -----------------------------------------------------------------------------

    def _next_version(self, n: int) -> list[int]:
        """``n`` increasing versions: this process's clock in microseconds, never repeated."""
        with self._lock:
            start = max(time.time_ns() // 1000, self._clock + 1)
            self._clock = start + n - 1
        return list(range(start, start + n))

    def _require_open(self) -> str:
        if self.dataset is None:
            raise CatalogNotOpenError("the catalog opens once the model is loaded; retry later")
        return self.dataset

    def upsert(
        self, kind: str, entries: Sequence[tuple[str, Mapping[str, Any]]], origin: str
    ) -> WriteResult:
        """Register (or replace) the records of ``entries`` (``(id, checked fields)``).

        Blocking: the log write is synced to disk before this returns.

        Raises:
            CatalogNotOpenError: no model is served yet.
            CatalogLogError: the log could not be written; nothing was applied.
        """
        now = time.time()
        records = [
            Record(kind, entity_id, FrozenFields(fields), version, self.log.stem, now, origin)
            for (entity_id, fields), version in zip(
                entries, self._next_version(len(entries)), strict=True
            )
        ]
        return self._write(records)

    def delete(self, kind: str, entity_id: str) -> WriteResult | None:
        """Delete a registered entity (a tombstone record); None when it is not registered.

        Raises:
            CatalogNotOpenError, CatalogLogError: as :meth:`upsert`.
        """
        self._require_open()
        if self.mirror.get(kind, entity_id) is None:
            return None
        (version,) = self._next_version(1)
        tombstone = Record(
            kind, entity_id, FrozenFields({}), version, self.log.stem, time.time(), "delete", True
        )
        return self._write([tombstone])

    def _write(self, records: list[Record]) -> WriteResult:
        dataset = self._require_open()
        try:
            self.log.append_bytes(encode_records(r.to_json(dataset) for r in records))
        except CatalogLogError:
            self.metrics.catalog_log_errors.inc()
            raise
        applied = self.mirror.apply(records)
        shared = self._share(records)
        queued = self.warmer.enqueue(applied) if self.warmer is not None else 0
        for kind in KINDS:
            ups = sum(r.kind == kind and not r.deleted for r in records)
            if ups:
                self.metrics.catalog_upserts.labels(kind=kind, shared=shared).inc(ups)
            if deletes := sum(r.kind == kind and r.deleted for r in records):
                self.metrics.catalog_deletes.labels(kind=kind, shared=shared).inc(deletes)
        self._count()
        return WriteResult(records, shared, queued)

    def _share(self, records: list[Record]) -> str:
        store = self._store
        if self.redis_tier is None:
            return "local"
        if store is not None and store.available and store.write(records):
            return "applied"
        with self._lock:
            for r in records:
                self._unshared[(r.kind, r.id)] = r
        self.metrics.catalog_unshared.set(len(self._unshared))
        return "kept"

    # -- reads ------------------------------------------------------------------------------

    def get(self, kind: str, entity_id: str) -> Record | None:
        """The registered record of an entity, or None."""
        return self.mirror.get(kind, entity_id)

    def resolve(self, inputs: Sequence[ScoreInput]) -> Sequence[ScoreInput]:
        """``inputs`` with each side's catalog record under the request's fields.

        A side whose id is registered gets the record's fields, overridden field by field by
        the request's (``*_from``: ``request`` when the request sent fields, else
        ``catalog``); the scorer puts those over the model's tables. Sides not registered
        are left as they are. Costs one dictionary lookup per side when nothing is
        registered for a pair.
        """
        users, items = self.mirror.live("user"), self.mirror.live("item")
        if not users and not items:
            return inputs
        out = []
        for r in inputs:
            u = users.get(r.user_id) if users else None
            i = items.get(r.item_id) if items else None
            if u is None and i is None:
                out.append(r)
                continue
            out.append(
                ScoreInput(
                    r.user_id,
                    r.item_id,
                    _merged(u, r.user),
                    _merged(i, r.item),
                    user_from=r.user_from or _source(u, r.user),
                    item_from=r.item_from or _source(i, r.item),
                )
            )
        return out

    # -- keeping in step with the other processes ------------------------------------------

    def _count(self) -> None:
        for kind in KINDS:
            self.metrics.catalog_records.labels(kind=kind).set(self.mirror.size(kind))

    def _learned(self, records: list[Record]) -> None:
        """Records of other processes: held, queued for projection."""
        applied = self.mirror.apply(records)
        if applied:
            if self.warmer is not None:
                self.warmer.enqueue(applied)
            self._count()

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.sync_s):
            try:
                self.sync()
            except Exception:  # a bug here must not stop later syncs: log, go on
                log.exception("catalog sync failed; it goes on")

    def sync(self) -> None:
        """One sync step: other processes' writes (Redis's change stream, or the log
        directory without Redis); with Redis, also what waits to be written there."""
        with self._sync_lock:
            store = self._store
            if store is None:
                if self._tail is not None and self.redis_tier is None:
                    self._learned(self._tail.read())
                return
            if not store.available:
                return
            if self._position is None or self._refill:
                self._full_sync("reconnect" if self._position is None else "lost")
                return
            if self._unshared and not self._write_unshared(store):
                return
            while True:
                changes = store.poll(self._position)
                if changes is None:
                    return
                if changes.lost:
                    self.metrics.catalog_resyncs.labels(reason="lost").inc()
                    log.warning(
                        "catalog: Redis lost its records or trimmed changes not read yet; "
                        "writing back every record this process holds and reloading"
                    )
                    self._refill = True
                    self._full_sync("lost")
                    return
                self._position = changes.position
                self._learned(changes.records)
                if not changes.more:
                    return

    def _write_unshared(self, store: CatalogRedis) -> bool:
        with self._lock:
            held = dict(self._unshared)
        if not store.write(list(held.values())):
            return False
        with self._lock:
            for key, record in held.items():
                if self._unshared.get(key) is record:
                    del self._unshared[key]
            left = len(self._unshared)
        self.metrics.catalog_unshared.set(left)
        log.info("catalog: wrote %d records kept while Redis did not answer", len(held))
        return True

    def _full_sync(self, reason: str) -> bool:
        """Write every record held to Redis, then load Redis's; False when Redis did not
        answer (tried again at the next sync step)."""
        store = self._store
        assert store is not None
        with self._lock:
            held = dict(self._unshared)
        if not store.write(self.mirror.records()):
            return False
        position = store.position()
        if position is None:
            return False
        loaded = store.load_all()
        if loaded is None:
            return False
        self._learned(loaded)
        with self._lock:
            for key, record in held.items():
                if self._unshared.get(key) is record:
                    del self._unshared[key]
            left = len(self._unshared)
        self.metrics.catalog_unshared.set(left)
        self._position, self._refill = position, False
        if reason != "start":
            self.metrics.catalog_resyncs.labels(reason=reason).inc()
        log.info(
            "catalog: synced with Redis (%s): %d records written back, %d read",
            reason,
            len(self.mirror.records()),
            len(loaded),
        )
        return True


def _merged(record: Record | None, given: Mapping[str, Any]) -> Mapping[str, Any]:
    if record is None:
        return given
    if not given:
        return record.fields
    return {**record.fields, **given}


def _source(record: Record | None, given: Mapping[str, Any]) -> str:
    if given:
        return "request"
    return "catalog" if record is not None else ""
