"""The feedback log's file format: the contract between the service that writes it
(``service/feedback_log.py``) and the trainer that reads it (``python -m training --feedback``).

JSON lines (``*.jsonl``), one accepted event per line, UTF-8::

    {"event_id": "9f1c...", "received_at": 1764477000.123, "model_version": "...",
     "dataset": "movielens-100k", "user_id": "196", "item_id": "242", "rating": 4.0,
     "timestamp": 1764476990, "model_rating": 3.71, "served_rating": 3.84,
     "user": {...} | null, "item": {...} | null}

``event_id`` is assigned by the service and unique; ``timestamp`` is the event's time (int
seconds since the epoch, valid as ``model/timestamps.py`` defines; the client's, else the time
it was received). A process appends whole lines
and syncs them to disk before it answers, so a crash can leave at most one partial last line
of an event that was never answered; readers skip it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from model.json_lines import read_json_lines

FIELDS = (
    "event_id",
    "received_at",
    "model_version",
    "dataset",
    "user_id",
    "item_id",
    "rating",
    "timestamp",
    "model_rating",
    "served_rating",
    "user",
    "item",
)
_FIELD_SET = frozenset(FIELDS)
REQUIRED = ("event_id", "user_id", "item_id", "rating", "timestamp")
SUFFIX = ".jsonl"


def encode_events(events: Iterable[Mapping[str, Any]]) -> bytes:
    """The log lines of ``events`` (each ends with a newline).

    Raises:
        ValueError: an event whose fields are not exactly :data:`FIELDS` (the one list of
            them: a writer cannot drift from what readers expect).
    """
    lines = []
    for e in events:
        if e.keys() != _FIELD_SET:
            extra, missing = sorted(e.keys() - _FIELD_SET), sorted(_FIELD_SET - e.keys())
            raise ValueError(f"not a feedback event: extra fields {extra}, missing {missing}")
        lines.append(orjson.dumps(e) + b"\n")
    return b"".join(lines)


def read_events(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The events of one log file.

    Returns:
        ``(events, skipped)``: ``skipped`` counts a partial last line (a crash mid-write of an
        event that was never answered).

    Raises:
        ValueError: a complete line that is not an event (names the file and the line).
    """
    values, skipped = read_json_lines(path)
    events = []
    for number, event in values:
        if not isinstance(event, dict) or (missing := [f for f in REQUIRED if f not in event]):
            what = f"missing {', '.join(missing)}" if isinstance(event, dict) else "not an object"
            raise ValueError(f"{path}, line {number}: not a feedback event ({what})")
        events.append(event)
    return events, skipped
