"""``POST /predict-rating`` and ``POST /predict-rating/batch``."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, HTTPException, Response, status

from service.batcher import DeadlineError, QueueFullError
from service.deps import EngineDep, SettingsDep
from service.engine import Engine, ModelNotReadyError
from service.entity_fields import check_fields
from service.results import ScoreBatch, dumps
from service.schemas import (
    BatchPredictRequest,
    BatchPredictResponse,
    ErrorResponse,
    PredictRequest,
    PredictResponse,
)
from service.scorer import ScoreInput, Scorer
from service.settings import Settings

router = APIRouter(tags=["predictions"])

ERRORS = {
    400: {"model": ErrorResponse, "description": "body is not valid JSON"},
    413: {"model": ErrorResponse, "description": "body or batch too large"},
    503: {"model": ErrorResponse, "description": "not ready or queue full (see Retry-After)"},
    504: {"model": ErrorResponse, "description": "not scored within the request timeout"},
}
# (loc prefix, user_id, item_id, user object, item object) of one pair of a request body
Payload = tuple[tuple, str, str, dict | None, dict | None]


def not_ready(engine: Engine) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        engine.not_ready_reason(),
        headers={"Retry-After": "5"},
    )


def served_scorer(engine: Engine) -> Scorer:
    """The scorer of the model being served.

    Raises:
        HTTPException: 503 (with the reason) while no model is loaded.
    """
    scorer = engine.scorer
    if scorer is None:
        raise not_ready(engine)
    return scorer


def checked_inputs(engine: Engine, payloads: Sequence[Payload]) -> list[ScoreInput]:
    """Score inputs, the ``user`` / ``item`` objects checked against the served model's fields.

    Raises:
        HTTPException: 503 while no model is loaded.
        RequestValidationError: an unknown field or a wrong type (422 naming the field).
    """
    scorer = served_scorer(engine)
    fields = check_fields(scorer.request_models, [(p[0], p[3], p[4]) for p in payloads])
    return [
        ScoreInput(user_id=p[1], item_id=p[2], user=user, item=item)
        for p, (user, item) in zip(payloads, fields, strict=True)
    ]


def refuse_larger_than(count: int, settings: Settings, setting: str, field: str) -> None:
    """413 when a body lists more entries than one call may: the setting ``setting`` (e.g.
    ``max_rank_candidates``) or the queue bound, whichever is lower (a request larger than the
    queue bound could never be admitted: not a 503 that retrying cannot fix).

    Raises:
        HTTPException: 413 naming the field, the limit and its setting.
    """
    limit = min(getattr(settings, setting), settings.queue_bound)
    setting = f"LEVI_{setting.upper()}"
    if count > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{field}: {count} entries; at most {limit} per call ({setting}; split the list)",
        )


def json_response(content: object) -> Response:
    """The answer serialised once from plain values (orjson), not through pydantic models."""
    return Response(dumps(content), media_type="application/json")


async def score(engine: Engine, settings: Settings, inputs: Sequence[ScoreInput]) -> ScoreBatch:
    """Score through the micro-batcher, mapping overload and deadlines to 503 / 504."""
    if not engine.ready:
        raise not_ready(engine)
    try:
        return await engine.batcher.submit(inputs, settings.request_timeout_s)
    except QueueFullError as e:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"overloaded: {e}", headers={"Retry-After": "1"}
        ) from None
    except DeadlineError as e:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, str(e)) from None
    except ModelNotReadyError as e:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(e), headers={"Retry-After": "5"}
        ) from None


@router.post("/predict-rating", responses=ERRORS, response_model=PredictResponse)
async def predict_rating(body: PredictRequest, engine: EngineDep, settings: SettingsDep):
    """Predict the rating of one user–item pair, with each layer's adapter rating."""
    payload = (("body",), body.user_id, body.item_id, body.user, body.item)
    inputs = checked_inputs(engine, [payload])
    return json_response((await score(engine, settings, inputs)).predictions()[0])


@router.post("/predict-rating/batch", responses=ERRORS, response_model=BatchPredictResponse)
async def predict_rating_batch(body: BatchPredictRequest, engine: EngineDep, settings: SettingsDep):
    """Predict several pairs; answers keep the order of ``requests``."""
    refuse_larger_than(len(body.requests), settings, "max_batch_request", "requests")
    inputs = checked_inputs(
        engine,
        [
            (("body", "requests", i), r.user_id, r.item_id, r.user, r.item)
            for i, r in enumerate(body.requests)
        ],
    )
    batch = await score(engine, settings, inputs)
    return json_response({"predictions": batch.predictions()})
