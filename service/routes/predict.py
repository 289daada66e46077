"""``POST /predict-rating`` and ``POST /predict-rating/batch``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.deps import VERSION_HEADER, RequestedVersion, serving
from service.json_body import parsed_body
from service.schemas import (
    BatchPredictRequest,
    BatchPredictResponse,
    PredictRequest,
    PredictResponse,
)
from service.scoring import (
    ERRORS,
    add_scoring_route,
    json_response,
    predictions_in_order,
    refuse_larger_than,
    score_by_user,
)

router = APIRouter(tags=["predictions"])


async def predict_rating(request: Request):
    """Predict the rating of one user–item pair, with each layer's adapter rating."""
    # The body and header are read here, not declared: the hottest route skips FastAPI's
    # per-request parameter solving and parses the bytes in one pass (service/json_body.py).
    body = await parsed_body(request, PredictRequest)
    requested = request.headers.get(VERSION_HEADER)
    engine, settings = serving(request)
    payload = (("body",), body.user_id, body.item_id, body.user, body.item)
    scored = await score_by_user(engine, settings, [payload], requested)
    return json_response(scored[0].batch.predictions()[0])


add_scoring_route(
    router, "/predict-rating", predict_rating, body=PredictRequest, response_model=PredictResponse
)


@router.post("/predict-rating/batch", responses=ERRORS, response_model=BatchPredictResponse)
async def predict_rating_batch(
    body: BatchPredictRequest, request: Request, requested: RequestedVersion = None
):
    """Predict several pairs; answers keep the order of ``requests`` (each pair answered by
    the version of its user: see ``GET /v1/models``)."""
    engine, settings = serving(request)
    refuse_larger_than(len(body.requests), settings, "max_batch_request", "requests")
    payloads = [
        (("body", "requests", i), r.user_id, r.item_id, r.user, r.item)
        for i, r in enumerate(body.requests)
    ]
    scored = await score_by_user(engine, settings, payloads, requested, field="requests")
    return json_response({"predictions": predictions_in_order(scored, len(payloads))})
