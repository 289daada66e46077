"""What the scoring routes share: limits, field checks, version routing and the call into the
micro-batcher. Failures are raised as the service's errors (service/errors.py) and answered
by the app's one handler.

Routes import this module, never each other. A request is routed once
(:func:`route`): the version a client names in the ``X-Model-Version`` header, else the
challenger for users in the canary share, else the champion. Lists of pairs of several
users (``/predict-rating/batch``, ``/feedback``) are split by the version of each user and
scored per version (:func:`score_by_user`); a ``/rank`` has one user, so one version ranks all
its candidates. After each answer the engine logs the predictions for the online evaluation
and queues the shadow scoring (:meth:`service.engine.Engine.answered`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from service.deps import documented_version_header
from service.engine import Engine
from service.entity_fields import check_fields
from service.errors import ModelNotReadyError, TooLargeError
from service.json_body import documented_body
from service.metrics import labelled
from service.raw_route import RequestRoute
from service.results import ScoreBatch, dumps
from service.schemas import ErrorResponse
from service.scorer import ScoreInput, Scorer
from service.settings import Settings
from service.versions import Rollout, Version

# (loc prefix, user_id, item_id, user object, item object) of one pair of a request body
Payload = tuple[tuple, str, str, dict | None, dict | None]
# The documented errors of every scoring route.
ERRORS = {
    400: {"model": ErrorResponse, "description": "body is not valid JSON"},
    404: {
        "model": ErrorResponse,
        "description": "the X-Model-Version header names no loaded version or alias",
    },
    413: {"model": ErrorResponse, "description": "body or list too large"},
    503: {"model": ErrorResponse, "description": "not ready or queue full (see Retry-After)"},
    504: {"model": ErrorResponse, "description": "not scored within the request timeout"},
}


def add_scoring_route(
    router: APIRouter,
    path: str,
    endpoint: Callable[[Request], Awaitable[Response]],
    *,
    body: type[BaseModel],
    response_model: type[BaseModel],
) -> None:
    """Register a hot scoring route (``POST``): ``endpoint(request)`` reads its ``body`` with
    :func:`service.json_body.parsed_body` and the ``X-Model-Version`` header itself
    (:class:`service.raw_route.RequestRoute`); both are documented as declared ones would be,
    with :data:`ERRORS`."""
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        route_class_override=RequestRoute,
        responses=ERRORS,
        response_model=response_model,
        openapi_extra=documented_body(body) | documented_version_header(),
    )


def served_rollout(engine: Engine) -> Rollout:
    """What is served now (read once per request).

    Raises:
        ModelNotReadyError: while no model is loaded (503, with the reason).
    """
    rollout = engine.rollout
    if rollout is None:
        raise ModelNotReadyError(engine.not_ready_reason())
    return rollout


def served_scorer(engine: Engine) -> Scorer:
    """The champion's scorer.

    Raises:
        ModelNotReadyError: while no model is loaded (503, with the reason).
    """
    return served_rollout(engine).champion.scorer


def route(rollout: Rollout, user_id: str, requested: str | None) -> Version:
    """The version that answers ``user_id`` (module docstring).

    Raises:
        UnknownVersionError: ``requested`` is not loaded (404 naming the header).
    """
    return rollout.route(user_id, requested)


def count_route(engine: Engine, rollout: Rollout, version: Version, requested: str | None) -> None:
    """One scoring job in ``levi_routed_requests_total{alias}``."""
    alias = "champion" if version is rollout.champion else "challenger"
    labelled(engine.metrics.routed, "named" if requested else alias).inc()


def checked_inputs(scorer: Scorer, payloads: Sequence[Payload]) -> list[ScoreInput]:
    """Score inputs, the ``user`` / ``item`` objects checked against ``scorer``'s fields.

    Raises:
        RequestValidationError: an unknown field or a wrong type (422 naming the field).
    """
    fields = check_fields(scorer.request_models, [(p[0], p[3], p[4]) for p in payloads])
    return [
        ScoreInput(user_id=p[1], item_id=p[2], user=user, item=item)
        for p, (user, item) in zip(payloads, fields, strict=True)
    ]


def resolved(engine: Engine, inputs: Sequence[ScoreInput]) -> Sequence[ScoreInput]:
    """``inputs`` with the catalog records of their registered users and items under the
    request's fields (``service/catalog.py``): what scoring reads."""
    catalog = engine.catalog
    return inputs if catalog is None else catalog.resolve(inputs)


def refuse_larger_than(count: int, settings: Settings, setting: str, field: str) -> None:
    """413 when a body lists more entries than one call may: the setting ``setting`` (e.g.
    ``max_rank_candidates``) or the queue bound, whichever is lower (a request larger than the
    queue bound could never be admitted: not a 503 that retrying cannot fix).

    Raises:
        TooLargeError: 413 naming the field, the limit and its setting.
    """
    own = getattr(settings, setting)
    if own <= settings.queue_bound:
        limit, setting = own, f"LEVI_{setting.upper()}"
    else:
        limit, setting = settings.queue_bound, "LEVI_QUEUE_BOUND"
    if count > limit:
        raise TooLargeError(
            f"{field}: {count} entries; at most {limit} per call ({setting}; split the list)",
        )


MAX_LISTED_DUPLICATES = 20  # repeated ids listed in one 422; the rest are counted


def refuse_duplicate_ids(
    ids: Sequence[str],
    loc: Callable[[int], tuple],
    name: str,
    entry: str,
    hint: str,
    detail: str = "",
) -> None:
    """422 naming every entry whose id repeats an earlier one's (at most
    ``MAX_LISTED_DUPLICATES`` listed), e.g. ``body.candidates.<i>.item_id``.

    Args:
        loc: the ``loc`` of entry ``i``'s id (the list's ``loc`` is its first two parts);
            name: the id's field name; entry: what an entry is called in the message
            ("candidate"); hint: what to do; detail: said after the hint on each entry.

    Raises:
        RequestValidationError: some id is given more than once.
    """
    first: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []
    for i, x in enumerate(ids):
        j = first.setdefault(x, i)
        if j != i:
            repeats.append((i, j))
    if not repeats:
        return
    errors: list[dict] = [
        {
            "type": f"duplicate_{name}",
            "loc": loc(i),
            "msg": f"{name} {ids[i]!r} is also {entry} {j}; {hint}{detail}",
            "input": ids[i],
        }
        for i, j in repeats[:MAX_LISTED_DUPLICATES]
    ]
    if len(repeats) > MAX_LISTED_DUPLICATES:
        errors.append(
            {
                "type": f"duplicate_{name}",
                "loc": loc(repeats[MAX_LISTED_DUPLICATES][0])[:2],
                "msg": f"{len(repeats) - MAX_LISTED_DUPLICATES} more repeated {name}s "
                f"({len(repeats)} in all); {hint}",
            }
        )
    raise RequestValidationError(errors)


def json_response(content: object) -> Response:
    """The answer serialised once from plain values (orjson), not through pydantic models."""
    return Response(dumps(content), media_type="application/json")


def refuse_costlier_than(tokens: int, settings: Settings, field: str) -> None:
    """413 when a request brings more new text to encode than one call may
    (``LEVI_MAX_COLD_TOKENS``): it could not be answered within the deadline anyway.

    Raises:
        TooLargeError: 413 naming the field, the estimate and the setting.
    """
    # Above the queue's own bound a request could never be admitted: a 413, not a 503.
    limit = min(settings.max_cold_tokens, settings.queue_tokens)
    if tokens > limit:
        raise TooLargeError(
            f"{field}: about {tokens} tokens of new text to encode (entities the service has "
            f"not seen: their fields or unknown ids); at most {limit} per call "
            "(LEVI_MAX_COLD_TOKENS, LEVI_QUEUE_TOKENS): split the list",
        )


async def score(
    engine: Engine,
    settings: Settings,
    inputs: Sequence[ScoreInput],
    version: Version,
    field: str = "body",
) -> ScoreBatch:
    """Score ``inputs`` with ``version`` through the micro-batcher (admitted by pairs and by
    the new text they bring).

    Raises:
        TooLargeError: more new text than one call may encode (413).
        QueueFullError, DeadlineError, ModelNotReadyError: overloaded (503), not scored in
            time (504), no model (503).
    """
    new, uncached = version.scorer.estimate_cold_tokens(inputs)
    refuse_costlier_than(new, settings, field)
    return await engine.batcher.submit(
        inputs, settings.request_timeout_s, version.scorer, cold_tokens=uncached
    )


@dataclass(frozen=True)
class Scored:
    """The pairs of one version within a request: their positions, inputs and answers."""

    version: Version
    positions: list[int]
    inputs: Sequence[ScoreInput]
    batch: ScoreBatch


async def score_by_user(
    engine: Engine,
    settings: Settings,
    payloads: Sequence[Payload],
    requested: str | None,
    *,
    field: str = "body",
    answered: bool = True,
) -> list[Scored]:
    """Route each pair by its user, check its fields against its version, score each
    version's pairs as one job (concurrently).

    Args:
        answered: the answers go to a client: log them for the online evaluation and
            shadow them (:meth:`Engine.answered`); False for feedback's own scoring.
    """
    rollout = served_rollout(engine)
    groups: dict[int, tuple[Version, list[int]]] = {}
    for j, p in enumerate(payloads):
        version = route(rollout, p[1], requested)
        groups.setdefault(id(version), (version, []))[1].append(j)
    for version, _ in groups.values():
        count_route(engine, rollout, version, requested)
    parts = [
        (
            version,
            positions,
            resolved(engine, checked_inputs(version.scorer, [payloads[j] for j in positions])),
        )
        for version, positions in groups.values()
    ]
    if len(parts) == 1:  # the common case (one version): no task for asyncio.gather to make
        version, _, inputs = parts[0]
        batches = [await score(engine, settings, inputs, version, field)]
    else:
        batches = await asyncio.gather(*(score(engine, settings, x, v, field) for v, _, x in parts))
    out = [Scored(v, pos, x, b) for (v, pos, x), b in zip(parts, batches, strict=True)]
    if answered:
        for s in out:
            engine.answered(rollout, s.version, s.inputs, s.batch)
    return out


def predictions_in_order(scored: Sequence[Scored], n: int) -> list[dict]:
    """``PredictResponse``-shaped answers of every pair, in request order."""
    out: list[dict] = [{}] * n
    for s in scored:
        for j, answer in zip(s.positions, s.batch.predictions(), strict=True):
            out[j] = answer
    return out
