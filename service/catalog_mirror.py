"""The catalog records a process holds: every user and item registered for its data set.

Each process keeps all of them in memory (about the size of their JSON per record), so a
scoring request resolves registered entities with one dictionary lookup per id and no Redis
round trip; the mirror is kept current by ``service/catalog.py`` (this process's writes at
once, other processes' through Redis or the shared log directory within the sync bound).

Records are ordered by ``(version, writer)`` (``model/catalog_format.py``): a record replaces
the held one only if it is newer, so records may arrive in any order, twice, or from several
sources. Deletions are kept as tombstones, so an older upsert arriving later cannot bring an
entity back.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from model.catalog_format import KINDS
from service.entity_store import FrozenFields


@dataclass(frozen=True)
class Record:
    """One version of one registered entity.

    Attributes:
        kind: ``user`` or ``item``.
        fields: its fields (checked against the served model's spec when accepted); empty for
            a tombstone. Read-only.
        version: microseconds of the accepting process's clock (increasing per process).
        writer: the accepting process's log name (breaks ties between processes).
        updated_at: seconds since the epoch when it was accepted.
        origin: ``put``, ``bulk``, ``import`` or ``delete``.
    """

    kind: str
    id: str
    fields: FrozenFields
    version: int
    writer: str
    updated_at: float
    origin: str
    deleted: bool = False

    @property
    def order(self) -> tuple[int, str]:
        return self.version, self.writer

    def to_json(self, dataset: str) -> dict[str, Any]:
        """The log line / Redis value of this record (``model/catalog_format.py``)."""
        return {
            "dataset": dataset,
            "kind": self.kind,
            "id": self.id,
            "fields": None if self.deleted else dict(self.fields),
            "deleted": self.deleted,
            "version": self.version,
            "writer": self.writer,
            "updated_at": self.updated_at,
            "origin": self.origin,
        }

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> Record:
        """A record from its JSON (already checked by ``model.catalog_format.check_record``)."""
        deleted = bool(doc.get("deleted"))
        return Record(
            kind=str(doc["kind"]),
            id=str(doc["id"]),
            fields=FrozenFields({} if deleted else doc.get("fields") or {}),
            version=int(doc["version"]),
            writer=str(doc["writer"]),
            updated_at=float(doc.get("updated_at") or 0.0),
            origin=str(doc.get("origin") or ""),
            deleted=deleted,
        )

    def updated_iso(self) -> str:
        return dt.datetime.fromtimestamp(self.updated_at, dt.UTC).isoformat(timespec="milliseconds")


class CatalogMirror:
    """Every record of one data set held by this process, by kind and id.

    Reads (:meth:`live`, :meth:`get`) take no lock: a dictionary read is atomic, and a record
    is replaced whole.
    """

    def __init__(self) -> None:
        self._all: dict[str, dict[str, Record]] = {k: {} for k in KINDS}  # tombstones too
        self._live: dict[str, dict[str, Record]] = {k: {} for k in KINDS}
        self._lock = threading.Lock()

    def apply(self, records: Iterable[Record]) -> list[Record]:
        """Hold the records newer than those held; returns them (in order)."""
        applied = []
        with self._lock:
            for r in records:
                held = self._all[r.kind].get(r.id)
                if held is not None and held.order >= r.order:
                    continue
                self._all[r.kind][r.id] = r
                if r.deleted:
                    self._live[r.kind].pop(r.id, None)
                else:
                    self._live[r.kind][r.id] = r
                applied.append(r)
        return applied

    def live(self, kind: str) -> dict[str, Record]:
        """id -> record of the registered (not deleted) entities of ``kind`` (do not modify)."""
        return self._live[kind]

    def get(self, kind: str, entity_id: str) -> Record | None:
        """The registered record of an entity (None when absent or deleted)."""
        return self._live[kind].get(entity_id)

    def held(self, kind: str, entity_id: str) -> Record | None:
        """The newest record held, a tombstone included."""
        return self._all[kind].get(entity_id)

    def records(self) -> list[Record]:
        """Every record held (tombstones included), for refilling a shared store."""
        with self._lock:
            return [r for kind in KINDS for r in self._all[kind].values()]

    def size(self, kind: str) -> int:
        """Registered (live) entities of ``kind``."""
        return len(self._live[kind])

    def clear(self) -> None:
        with self._lock:
            for kind in KINDS:
                self._all[kind] = {}
                self._live[kind] = {}
