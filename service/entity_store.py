"""Columnar entity store: the model's known users and items, how an entity of a request is
resolved into the record the model reads, and per-entity projections.

* :class:`EntityResolver`: a request's entity (id and fields: the request's own, or its
  catalog record's, ``service/catalog.py``) -> its record, whether it is a cold start, and
  the warnings its fields earn (values out of the vocabulary, numbers far outside what
  training saw, an unknown id without fields).
* :class:`EntityTable`: one side's artifact table (Arrow), looked up by id in batches (a dict
  from id to row: about 120 bytes per entity, as a pandas index was). Nothing is encoded or
  rendered per entity at load time; records are materialised only for the entities whose
  projections are computed.
* :class:`ProjectionCache`: an LRU of per-entity partial products of the head (the
  first-layer decomposition, ``model.decomposed``) in preallocated arrays (one row per slot),
  keyed by ``(entity id, the request's fields)``. It lives in process and belongs to one
  model version (a reload builds a new scorer and a new cache), so a reload never reads
  another model's projections; the model-independent backbone activations stay in the shared
  activation cache (Redis).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from model.aligned_arrays import aligned_zeros
from model.decomposed_layout import SIDES
from model.features import FeatureSpec, as_values, entity_record
from model.templates import ViewSet
from service.results import NO_WARNINGS

Key = tuple[str, tuple]  # (entity id, sorted request fields)


def freeze(fields: Mapping[str, Any]) -> tuple:
    """A hashable, order-independent form of a request's fields (lists become tuples).

    Entities are keyed by ``(id, frozen fields)``, so fields that change (a request's, or a
    catalog record's: ``service/catalog_mirror.py``) give a new key: projections computed
    from other fields are never read for them."""
    if not fields:
        return ()
    if isinstance(fields, FrozenFields):
        return fields.frozen
    return tuple(
        sorted((k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in fields.items())
    )


class FrozenFields(dict):
    """Fields that are read many times and never changed (a catalog record's): their frozen
    form is computed once, not per request. Do not modify one."""

    __slots__ = ("frozen",)

    def __init__(self, fields: Mapping[str, Any]):
        super().__init__(fields)
        self.frozen = freeze(dict(fields))


class EntityTable:
    """One side's known entities (the artifact's users or items table, as Arrow), with a dict
    from id to row; a call converts only the rows it asks for.

    No pandas in the serving process (docs/PROFILING.md, "Third pass"): rows are taken with an
    index array built from its buffer, since ``pa.array`` of a numpy or Python sequence
    imports pandas (pyarrow's pandas shim). A ``timestamp[ns]`` column still does when its
    rows are converted (pyarrow returns ``pandas.Timestamp`` for them).

    Args:
        table: the table (``model.artifact.Artifact.users`` / ``items``); ``key`` its id column
            (read as strings).

    Raises:
        KeyError: ``key`` is not a column of ``table``.
    """

    def __init__(self, table: pa.Table, key: str):
        self.key = key
        self.table = table
        self.index = {str(i): row for row, i in enumerate(table.column(key).to_pylist())}

    def __len__(self) -> int:
        return self.table.num_rows

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """int64 ``[n]`` table rows of ``ids``; -1 for an unknown id."""
        index = self.index
        return np.fromiter((index.get(i, -1) for i in ids), np.int64, len(ids))

    def head(self, n: int) -> list[dict[str, Any]]:
        """The records of the first ``n`` entities (as :meth:`records` gives them)."""
        return [entity_record(r) for r in self.table.slice(0, n).to_pylist()]

    def records(self, ids: Sequence[str], rows: np.ndarray) -> list[dict[str, Any]]:
        """Records of ``ids`` (known rows from the table; unknown ones hold only their id)."""
        known = rows >= 0
        out: list[dict[str, Any]] = [{self.key: i} for i in ids]
        if known.any():
            picked = np.ascontiguousarray(rows[known], np.int64)
            index = pa.Array.from_buffers(pa.int64(), len(picked), [None, pa.py_buffer(picked)])
            for j, rec in zip(
                np.flatnonzero(known), self.table.take(index).to_pylist(), strict=True
            ):
                rec = entity_record(rec)
                rec[self.key] = ids[j]
                out[j] = rec
        return out


class EntityResolver:
    """Records of a side's entities as the model reads them.

    Known entities start from the artifact's table; the given fields (already checked
    against the model's spec) override them; unknown ids get a record with only their id and
    the given fields (cold start: out-of-vocabulary slots and their text views). Multi-valued
    fields are split as training split them (the column's ``sep``).

    Args:
        tables: ``{"user": EntityTable, "item": EntityTable}`` of the artifact.
        features: the artifact's typed columns.
        views: its text views (which fields a cold start's hint names).
    """

    def __init__(self, tables: Mapping[str, EntityTable], features: FeatureSpec, views: ViewSet):
        self.tables = tables
        self.features = features
        self._columns = {e: {c.name: c for c in features.fields_of(e)} for e in SIDES}
        used = {f for v in views.views for f in v.fields}  # what the text views read
        self._text_fields = {
            e: [c.name for c in features.fields_of(e) if c.name in used] for e in SIDES
        }

    def resolve(
        self, side: str, keys: Sequence[Key]
    ) -> tuple[list[dict], list[bool], list[tuple[str, ...]]]:
        """Records of distinct ``(id, frozen fields)`` keys of one side, whether each is a
        cold start, and each one's warnings (``[len(keys)]`` each)."""
        ids = [k[0] for k in keys]
        rows = self.tables[side].rows(ids)
        records = self.tables[side].records(ids, rows)
        cold = (rows < 0).tolist()
        warnings: list[tuple[str, ...]] = []
        columns = self._columns[side]
        for j, (_, frozen) in enumerate(keys):
            notes = []
            if cold[j] and not frozen:  # with fields: said per answer (service/scorer.py)
                notes.append(self.cold_warning(side))
            for name, value in frozen:
                col = columns.get(name)
                if col is not None and col.kind == "multi_categorical":
                    value = as_values(value, col.sep)
                records[j][name] = value
                if col is not None and col.mlp and col.kind != "numeric" and not col.known(value):
                    notes.append(
                        f"{side}.{name}: value(s) not in the model's vocabulary were read as "
                        "out-of-vocabulary (the text view still reads them)"
                    )
                elif col is not None and (far := col.far_outside(value)) is not None:
                    notes.append(far)
            warnings.append(tuple(notes) if notes else NO_WARNINGS)
        return records, cold, warnings

    def cold_warning(self, side: str) -> str:
        """The warning of an unknown ``side`` entity answered without any fields."""
        fields = self._text_fields[side] or [c.name for c in self.features.fields_of(side)]
        hint = (
            f"; send {', '.join(f'{side}.{f}' for f in fields)}, or register it "
            f"(PUT /v1/{side}s/{{{side}_id}}), for a better answer"
        )
        return f"unknown {side} without fields: answered from the out-of-vocabulary slot" + (
            hint if fields else ""
        )


@dataclass
class Slot:
    """Where one entity's projections live, and what its answers say about it."""

    row: int
    cold: bool
    warnings: tuple[str, ...]


class ProjectionCache:
    """LRU of per-entity projections in preallocated arrays.

    Args:
        shapes: part name -> per-entity shape (``model.decomposed_layout.part_widths`` + extras).
        capacity: most entities kept; the least recently used is replaced.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], capacity: int):
        self.capacity = max(1, int(capacity))
        # Untouched pages are mapped lazily: memory grows with the entities seen. Aligned, so
        # the pair function reads them in place (service/scorer.py).
        self.arrays = {k: aligned_zeros((self.capacity, *s), np.float32) for k, s in shapes.items()}
        self._slots: OrderedDict[Hashable, Slot] = OrderedDict()
        self._free = list(range(self.capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self._slots)

    def missing(self, keys: Iterable[Hashable]) -> list[Hashable]:
        """The keys among ``keys`` that are not cached, in order (nothing marked used; safe
        to call from another thread than the one that scores: dict lookups only)."""
        slots = self._slots
        return [k for k in keys if k not in slots]

    def slots(self, keys: Sequence[Hashable]) -> list[Slot | None]:
        """Each key's slot, None where it is not cached (the found ones marked as recently
        used)."""
        found = list(map(self._slots.get, keys))
        move = self._slots.move_to_end
        for k, slot in zip(keys, found, strict=True):
            if slot is not None:
                move(k)
        return found

    def put(
        self,
        keys: Sequence[Hashable],
        parts: Mapping[str, np.ndarray],
        cold: Sequence[bool],
        warnings: Sequence[tuple[str, ...]],
    ) -> None:
        """Store the parts of new keys (rows aligned with ``keys``), evicting the oldest."""
        for j, k in enumerate(keys):
            if k in self._slots:
                continue
            if self._free:
                row = self._free.pop()
            else:
                _, old = self._slots.popitem(last=False)
                row = old.row
            for name, a in self.arrays.items():
                a[row] = parts[name][j]
            self._slots[k] = Slot(row, bool(cold[j]), tuple(warnings[j]))
