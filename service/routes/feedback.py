"""``POST /feedback``: ratings users gave, logged durably, then learned from online.

Each event is scored by every served version (champion, and challenger if any: each one's
``model_rating``, the rating without corrections, is what its residual is taken from),
written to the feedback log with the version that answers its user and synced to disk
(``service/feedback_log.py``), and only then applied to each version's online corrections
(``service/corrections.py``) and joined with the predictions the versions made for the pair
(``service/online_eval.py``; the gate may then decide). The answer comes after the log
write: an answered event is on disk; a log that cannot be written is a 503 naming the
reason, and nothing of the request is applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import numpy as np
from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from service.deps import EngineDep, SettingsDep
from service.errors import FeedbackDisabledError, FeedbackLogError
from service.idempotency import REUSED_ID_RESPONSES, event_fingerprint, refuse_reused_event_ids
from service.schemas import ErrorResponse, FeedbackEvent, FeedbackRequest, FeedbackResponse
from service.scoring import (
    ERRORS,
    checked_inputs,
    json_response,
    refuse_larger_than,
    resolved,
    route,
    score,
    served_rollout,
)

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
        **REUSED_ID_RESPONSES,
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
    rollout = served_rollout(engine)
    if engine.feedback_log is None:
        raise FeedbackDisabledError(
            "feedback is disabled: set LEVI_FEEDBACK_DIR to a writable directory"
        )
    check_ratings(body.events, rollout.champion.scorer.rating_range)
    payloads = [
        (("body", "events", i), e.user_id, e.item_id, e.user, e.item)
        for i, e in enumerate(body.events)
    ]
    served = rollout.served()
    # Checked once: a challenger takes the champion's request fields (service.versions).
    inputs = checked_inputs(rollout.champion.scorer, payloads)
    # 409 before anything is kept: an event_id reused with another payload.
    await refuse_reused_event_ids(body.events, rollout.champion.scorer.corrections)
    # Scored as answers are: with the catalog records of registered entities; the log keeps
    # the request's own fields (the catalog has its own log).
    scored = resolved(engine, inputs)
    batches = await asyncio.gather(*(score(engine, settings, scored, v, "events") for v in served))
    received = time.time()
    dataset = str(rollout.champion.scorer.artifact.dataset.get("name", ""))
    # Each event is logged with the answer of the version its user is routed to.
    which = [served.index(route(rollout, e.user_id, None)) for e in body.events]
    model_ratings = [b.model_rating.tolist() for b in batches]
    served_ratings = [b.rating.tolist() for b in batches]
    events = [
        {
            "event_id": e.event_id or uuid.uuid4().hex,
            "received_at": received,
            "model_version": served[k].model_version,
            "dataset": dataset,
            "user_id": e.user_id,
            "item_id": e.item_id,
            "rating": e.rating,
            "timestamp": int(received) if e.timestamp is None else e.timestamp,  # checked
            "model_rating": model_ratings[k][j],
            "served_rating": served_ratings[k][j],
            "user": given.user or None,  # the checked fields, as the model reads them
            "item": given.item or None,
        }
        for j, (e, given, k) in enumerate(zip(body.events, inputs, which, strict=True))
    ]
    try:
        await asyncio.to_thread(engine.feedback_log.append, events)
    except FeedbackLogError as e:
        engine.metrics.feedback_log_errors.inc()
        log.error("feedback refused: %s", e)
        raise FeedbackLogError(f"feedback not recorded: {e}") from None
    engine.metrics.feedback_events.inc(len(events))
    outcomes = [
        await _learn(engine, v, inputs, b, body.events)
        for v, b in zip(served, batches, strict=True)
    ]
    status_, duplicates, fresh = outcomes[0]
    await _evaluate(engine, rollout, body.events, fresh)
    return json_response(
        {
            "accepted": len(events),
            "event_ids": [e["event_id"] for e in events],
            "model_version": rollout.champion.model_version,
            "corrections": status_,
            "duplicates": duplicates,
        }
    )


async def _evaluate(engine, rollout, events: list[FeedbackEvent], fresh: np.ndarray) -> None:
    """Join the new events with the versions' logged predictions (never fails the answer),
    then let the gate look."""
    if engine.online is None or not fresh.any():
        return
    rows = np.flatnonzero(fresh).tolist()
    pair = rollout.trial_pair()
    try:
        await asyncio.to_thread(
            engine.online.join,
            [events[j].user_id for j in rows],
            [events[j].item_id for j in rows],
            [events[j].rating for j in rows],
            pair,
        )
    except Exception:  # the events are logged and learned; only the figures miss them
        log.exception("joining feedback with logged predictions failed")
        return
    engine.gate.consider()


async def _learn(engine, version, inputs, batch, events) -> tuple[str, int, np.ndarray]:
    """Apply the logged events to ``version``'s corrections (those with an event_id already
    received excepted); ``(status, duplicates, which events were new)``."""
    everything = np.ones(len(events), bool)
    scorer = version.scorer
    if scorer.corrections is None:
        return "off", 0, everything
    if engine.rollout is None or all(v is not version for v in engine.rollout.served()):
        return "skipped", 0, everything
    corrections = scorer.corrections
    ids = [e.event_id for e in events]
    prints = [event_fingerprint(e) for e in events]
    fresh = await asyncio.to_thread(corrections.first_seen, ids, prints)
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
        return "skipped", 0, np.asarray(fresh, bool)
    except BaseException:  # cancelled (shutdown): give the ids back, go on cancelling
        corrections.forget([ids[j] for j in rows])
        raise
    duplicates = len(events) - len(rows)
    if not len(rows):
        return "duplicate", duplicates, np.asarray(fresh, bool)
    status_ = "kept" if corrections.backlog_events else "applied"
    return status_, duplicates, np.asarray(fresh, bool)
