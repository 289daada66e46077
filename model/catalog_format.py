"""The catalog log's record format: the contract between the service that writes it
(``service/catalog.py``, ``PUT /v1/items/{id}`` and friends) and the trainer that reads it
(``python -m training --catalog DIR``).

JSON lines, one record per line, UTF-8, in files named ``catalog-*.jsonl``::

    {"dataset": "movielens-100k", "kind": "item", "id": "new-1",
     "fields": {"title": "Alien (1979)"}, "deleted": false,
     "version": 1764477000123456, "writer": "catalog-host-12-20251130T041500-9f1c2a",
     "updated_at": 1764477000.123, "origin": "put"}

``kind`` is ``user`` or ``item``; ``fields`` the entity's fields as the served model's
dataset spec declares them (checked when accepted; ``null`` for a deletion); ``version`` the
accepting process's clock in microseconds, made increasing per process; ``writer`` that
process's log name. Of several records of one ``(dataset, kind, id)`` the one with the
greatest ``(version, writer)`` wins, wherever and in whatever order they were read, so
copies of a file, several replicas' directories and replays never change the outcome. A
deletion is a record too (a tombstone), so an older upsert read later cannot bring the entity
back. A process appends whole lines and syncs them before it answers; a crash can leave one
partial last line (never answered), which readers skip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from model.json_lines import read_json_lines

PREFIX = "catalog-"
SUFFIX = ".jsonl"
KINDS = ("user", "item")
REQUIRED = ("dataset", "kind", "id", "version", "writer")
ORIGINS = ("put", "bulk", "import", "delete")


def order_key(record: Mapping[str, Any]) -> tuple[int, str]:
    """What orders two records of one entity: the greater one is the newer."""
    return int(record["version"]), str(record["writer"])


def entity_key(record: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(dataset, kind, id)`` of a record."""
    return str(record["dataset"]), str(record["kind"]), str(record["id"])


def encode_records(records: Iterable[Mapping[str, Any]]) -> bytes:
    """The log lines of ``records`` (each ends with a newline)."""
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def check_record(record: Any, where: str) -> dict[str, Any]:
    """``record`` if it is a catalog record.

    Raises:
        ValueError: what is missing or wrong, naming ``where``.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: not a catalog record (not an object)")
    if missing := [f for f in REQUIRED if f not in record]:
        raise ValueError(f"{where}: not a catalog record (missing {', '.join(missing)})")
    if record["kind"] not in KINDS:
        raise ValueError(f"{where}: kind {record['kind']!r} is not one of {', '.join(KINDS)}")
    fields = record.get("fields")
    if not record.get("deleted") and not isinstance(fields, dict):
        raise ValueError(f"{where}: fields must be an object")
    return record


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of one log file.

    Returns:
        ``(records, skipped)``: ``skipped`` counts a partial last line (a crash mid-write of
        a record that was never answered).

    Raises:
        ValueError: a complete line that is not a record (names the file and the line).
    """
    values, skipped = read_json_lines(path)
    return [check_record(r, f"{path}, line {n}") for n, r in values], skipped


def is_catalog_file(path: Path) -> bool:
    """Whether ``path`` is named as a catalog log file."""
    name = Path(path).name
    return name.startswith(PREFIX) and name.endswith(SUFFIX)


def latest(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The newest record of every ``(dataset, kind, id)`` (tombstones included)."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in records:
        key = entity_key(r)
        old = out.get(key)
        if old is None or order_key(r) > order_key(old):
            out[key] = dict(r)
    return out
