"""Client event ids of ``POST /feedback`` as idempotency keys: a retry or a conflict.

An ``event_id`` names one event. Sent again with the same payload it is a retry (logged
again, learned once: ``service/corrections.py``, ``first_seen``); sent again with another
payload it is a client bug that would silently lose a rating, so it is refused with 409
naming ``body.events.<i>.event_id`` and nothing of the request is logged or learned, as the
idempotency-key conventions say (IETF draft "The Idempotency-Key HTTP Header Field").

The payload is compared by a fingerprint of what the event says: user_id, item_id, rating
(as a number: 4 and 4.0 are one), timestamp (as an instant: ``2026-11-30T04:30:00Z`` and
``2026-11-30T05:30:00+01:00`` are one; absent stays absent, so a retry without a timestamp
matches), and the user / item fields (null fields left out).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from service.corrections import OnlineCorrections
from service.errors import EventIdConflictError
from service.schemas import ErrorResponse, FeedbackEvent

FINGERPRINT_PREFIX = "fp1:"  # a new normalisation gets a new prefix

REUSED_ID_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorResponse,
        "description": "an event_id was received before with another payload (each entry "
        "names body.events.<i>.event_id); nothing of the request was applied",
    }
}


def _instant(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # naive: UTC, as the feedback log reads it
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    return value


def _present(fields: Mapping[str, Any] | None) -> dict[str, Any] | None:
    kept = {k: v for k, v in (fields or {}).items() if v is not None}
    return kept or None


def event_fingerprint(event: FeedbackEvent) -> str:
    """A short digest of what ``event`` says (everything but its ``event_id``)."""
    payload = {
        "user_id": event.user_id,
        "item_id": event.item_id,
        "rating": float(event.rating),
        "timestamp": _instant(event.timestamp),
        "user": _present(event.user),
        "item": _present(event.item),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return FINGERPRINT_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:32]


async def refuse_reused_event_ids(
    events: Sequence[FeedbackEvent], corrections: OnlineCorrections | None
) -> None:
    """409 when an event's ``event_id`` came before with another payload: earlier in this
    request, or (with corrections on) in an earlier request within ``LEVI_FEEDBACK_DEDUP_S``.

    Ids are remembered by the online corrections' dedup state (Redis for every replica, else
    this process): with ``LEVI_CORRECTIONS=0`` only repeats inside one request are found.

    Raises:
        EventIdConflictError: 409 with one entry per reused id: ``loc``, ``msg``, ``type``.
    """
    prints = [event_fingerprint(e) for e in events]
    ids = [e.event_id for e in events]
    reused: dict[int, str] = {}
    first: dict[str, int] = {}
    for j, i in enumerate(ids):
        if i is None:
            continue
        k = first.setdefault(i, j)
        if prints[k] != prints[j]:
            reused[j] = f"as events.{k} of this request"
    if corrections is not None:
        for j in await asyncio.to_thread(corrections.conflicts, ids, prints):
            reused.setdefault(j, f"in the last {corrections.dedup_s} s (LEVI_FEEDBACK_DEDUP_S)")
    if not reused:
        return
    detail = [
        {
            "type": "event_id_reused",
            "loc": ["body", "events", j, "event_id"],
            "msg": f"event_id {ids[j]!r} was received {where} with another payload (user_id, "
            "item_id, rating, timestamp, user, item); an event_id names one event: give a new "
            "rating a new id, and send a retry with the payload of the first attempt",
        }
        for j, where in sorted(reused.items())
    ]
    raise EventIdConflictError(detail)
