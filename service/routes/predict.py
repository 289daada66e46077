"""``POST /predict-rating`` and ``POST /predict-rating/batch``."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, HTTPException, status

from service.batcher import DeadlineError, QueueFullError
from service.deps import EngineDep, SettingsDep
from service.engine import Engine, ModelNotReadyError
from service.entity_fields import check_fields
from service.schemas import (
    AdapterRating,
    BatchPredictRequest,
    BatchPredictResponse,
    ColdStart,
    ErrorResponse,
    PredictRequest,
    PredictResponse,
)
from service.scorer import ScoreInput, ScoreResult
from service.settings import Settings

router = APIRouter(tags=["predictions"])

ERRORS = {
    400: {"model": ErrorResponse, "description": "body is not valid JSON"},
    413: {"model": ErrorResponse, "description": "body or batch too large"},
    503: {"model": ErrorResponse, "description": "not ready or queue full (see Retry-After)"},
    504: {"model": ErrorResponse, "description": "not scored within the request timeout"},
}


def to_inputs(
    engine: Engine, requests: Sequence[PredictRequest], prefix: tuple
) -> list[ScoreInput]:
    """Score inputs, the ``user`` / ``item`` objects checked against the served model's fields.

    Raises:
        RequestValidationError: an unknown field or a wrong type (422 naming the field).
    """
    scorer = engine.scorer
    if scorer is None:
        raise _not_ready(engine)
    many = len(prefix) > 1
    fields = check_fields(
        scorer.request_models,
        [((*prefix, i) if many else prefix, r.user, r.item) for i, r in enumerate(requests)],
    )
    return [
        ScoreInput(user_id=r.user_id, item_id=r.item_id, user=user, item=item)
        for r, (user, item) in zip(requests, fields, strict=True)
    ]


def _not_ready(engine: Engine) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        engine.not_ready_reason(),
        headers={"Retry-After": "5"},
    )


def to_response(res: ScoreResult) -> PredictResponse:
    return PredictResponse(
        rating=res.rating,
        adapters=[AdapterRating(layer=lay, rating=r) for lay, r in res.adapters],
        ood_score=res.ood_score,
        model_version=res.model_version,
        cold_start=ColdStart(user=res.cold_user, item=res.cold_item),
        warnings=list(res.warnings),
    )


async def score(
    engine: Engine,
    settings: Settings,
    requests: Sequence[PredictRequest],
    prefix: tuple = ("body",),
) -> list[PredictResponse]:
    """Score through the micro-batcher, mapping overload and deadlines to 503 / 504.

    Args:
        prefix: where the requests sit in the body, for error locations (``("body",)`` or
            ``("body", "requests")``).
    """
    if not engine.ready:
        raise _not_ready(engine)
    inputs = to_inputs(engine, requests, prefix)
    try:
        results = await engine.batcher.submit(inputs, settings.request_timeout_s)
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
    return [to_response(r) for r in results]


@router.post("/predict-rating", responses=ERRORS)
async def predict_rating(
    body: PredictRequest, engine: EngineDep, settings: SettingsDep
) -> PredictResponse:
    """Predict the rating of one user–item pair, with each layer's adapter rating."""
    return (await score(engine, settings, [body]))[0]


@router.post("/predict-rating/batch", responses=ERRORS)
async def predict_rating_batch(
    body: BatchPredictRequest, engine: EngineDep, settings: SettingsDep
) -> BatchPredictResponse:
    """Predict several pairs; answers keep the order of ``requests``."""
    # A batch larger than the queue bound could never be admitted: 413, not a 503 to retry.
    limit = min(settings.max_batch_request, settings.queue_bound)
    if len(body.requests) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"requests: {len(body.requests)} entries; at most {limit} per call (split the batch)",
        )
    return BatchPredictResponse(
        predictions=await score(engine, settings, body.requests, ("body", "requests"))
    )
