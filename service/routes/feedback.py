"""``POST /feedback``: ratings users gave, logged durably, then learned from online.

Each event is scored by the served model (its ``model_rating``, the rating without
corrections, is what the residual is taken from), written to the feedback log and synced to
disk (``service/feedback_log.py``), and only then applied to
the online corrections (``service/corrections.py``). The answer comes after the log write:
an answered event is on disk; a log that cannot be written is a 503 naming the reason, and
nothing of the request is applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import numpy as np
from fastapi import APIRouter, HTTPException, status
from fastapi.exceptions import RequestValidationError

from service.deps import EngineDep, SettingsDep
from service.feedback_log import FeedbackLogError
from service.routes.predict import (
    ERRORS,
    checked_inputs,
    json_response,
    refuse_larger_than,
    score,
    served_scorer,
)
from service.schemas import ErrorResponse, FeedbackEvent, FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["feedback"])
log = logging.getLogger(__name__)


def check_ratings(events: list[FeedbackEvent], rating_range: tuple[float, float]) -> None:
    """422 naming ``body.events.<i>.rating`` for ratings outside the model's range."""
    lo, hi = rating_range
    errors = [
        {
            "type": "less_than_equal" if e.rating > hi else "greater_than_equal",
            "loc": ("body", "events", i, "rating"),
            "msg": f"rating {e.rating:g} is outside the served model's rating range "
            f"[{lo:g}, {hi:g}]",
            "input": e.rating,
        }
        for i, e in enumerate(events)
        if not lo <= e.rating <= hi
    ]
    if errors:
        raise RequestValidationError(errors)


@router.post(
    "/feedback",
    responses={
        **ERRORS,
        503: {
            "model": ErrorResponse,
            "description": "not ready, queue full, feedback disabled or the log not writable "
            "(the reason is given; nothing of the request was applied)",
        },
    },
    response_model=FeedbackResponse,
)
async def feedback(body: FeedbackRequest, engine: EngineDep, settings: SettingsDep):
    """Record ratings users gave: logged for retraining, learned by the online corrections."""
    refuse_larger_than(len(body.events), settings, "max_feedback_events", "events")
    scorer = served_scorer(engine)
    if engine.feedback_log is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "feedback is disabled: set LEVI_FEEDBACK_DIR to a writable directory",
        )
    check_ratings(body.events, scorer.rating_range)
    payloads = [
        (("body", "events", i), e.user_id, e.item_id, e.user, e.item)
        for i, e in enumerate(body.events)
    ]
    inputs = checked_inputs(engine, payloads)
    batch = await score(engine, settings, inputs)
    received = time.time()
    dataset = str(scorer.artifact.dataset.get("name", ""))
    events = [
        {
            "event_id": e.event_id or uuid.uuid4().hex,
            "received_at": received,
            "model_version": batch.model_version,
            "dataset": dataset,
            "user_id": e.user_id,
            "item_id": e.item_id,
            "rating": e.rating,
            "timestamp": int(received) if e.timestamp is None else e.timestamp,  # checked
            "model_rating": m,
            "served_rating": r,
            "user": given.user or None,  # the checked fields, as the model reads them
            "item": given.item or None,
        }
        for e, given, m, r in zip(
            body.events, inputs, batch.model_rating.tolist(), batch.rating.tolist(), strict=True
        )
    ]
    try:
        await asyncio.to_thread(engine.feedback_log.append, events)
    except FeedbackLogError as e:
        engine.metrics.feedback_log_errors.inc()
        log.error("feedback refused: %s", e)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"feedback not recorded: {e}"
        ) from None
    engine.metrics.feedback_events.inc(len(events))
    status_, duplicates = await _learn(engine, inputs, batch, body.events)
    return json_response(
        {
            "accepted": len(events),
            "event_ids": [e["event_id"] for e in events],
            "model_version": batch.model_version,
            "corrections": status_,
            "duplicates": duplicates,
        }
    )


async def _learn(engine, inputs, batch, events) -> tuple[str, int]:
    """Apply the logged events to the corrections of the model that scored them (those with
    an event_id already received excepted); ``(status, duplicates)``."""
    scorer = engine.scorer
    if scorer is None or scorer.corrections is None:
        return "off", 0
    if scorer.model_version != batch.model_version:
        return "skipped", 0
    corrections = scorer.corrections
    ids = [e.event_id for e in events]
    fresh = await asyncio.to_thread(corrections.first_seen, ids)
    rows = np.flatnonzero(fresh)
    try:
        if len(rows):
            await asyncio.to_thread(
                corrections.record,
                [inputs[j].user_id for j in rows],
                [inputs[j].item_id for j in rows],
                batch.model_rating[rows],
                np.array([events[j].rating for j in rows], np.float64),
            )
    except Exception:  # logged (accepted) but not learned: a retry must be learned
        await asyncio.to_thread(corrections.forget, [ids[j] for j in rows])
        log.exception("feedback logged but not applied to the corrections")
        return "skipped", 0
    except BaseException:  # cancelled (shutdown): give the ids back, go on cancelling
        corrections.forget([ids[j] for j in rows])
        raise
    duplicates = len(events) - len(rows)
    if not len(rows):
        return "duplicate", duplicates
    return ("kept" if corrections.backlog_events else "applied"), duplicates
