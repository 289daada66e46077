"""``POST /rank``: one user's candidates ordered by predicted rating.

Scored by the same vectorised path as ``/predict-rating/batch`` (so the ratings are the
same for the same pairs); the user's side of the head is computed once for all candidates.
Each item may be a candidate once: a repeated ``item_id`` is a 422 naming the repeat (two
entries of one item could carry different fields, and a ranking lists an item once).
"""

from __future__ import annotations

from operator import itemgetter

import numpy as np
from fastapi import APIRouter, Request

from service.deps import VERSION_HEADER, serving
from service.entity_fields import check_fields
from service.json_body import parsed_body
from service.results import SOURCES, ScoreBatch, adapter_list
from service.schemas import RankRequest, RankResponse
from service.scorer import NO_FIELDS, ScoreInput
from service.scoring import (
    add_scoring_route,
    count_route,
    json_response,
    refuse_duplicate_ids,
    refuse_larger_than,
    resolved,
    route,
    score,
    served_rollout,
)

router = APIRouter(tags=["predictions"])
_ITEM_ID = itemgetter("item_id")


def refuse_duplicate_candidates(item_ids: list[str]) -> None:
    """422 naming ``body.candidates.<i>.item_id`` of every repeated item id (after the first
    occurrence); ``item_ids`` are the candidates' in request order.

    Raises:
        RequestValidationError: some item id is a candidate more than once.
    """
    refuse_duplicate_ids(
        item_ids,
        lambda i: ("body", "candidates", i, "item_id"),
        "item_id",
        "candidate",
        "list each item once",
        " (drop the repeat, or keep one entry with the item fields you mean)",
    )


def ranked(body: RankRequest, item_ids: list[str], batch: ScoreBatch) -> dict:
    """The response body: candidates by rating (with the online corrections), highest first;
    ties keep request order. ``item_ids``: the candidates' in request order."""
    order = np.argsort(-batch.rating, kind="stable")
    if body.top_k is not None:
        order = order[: body.top_k]
    top = batch.take(order)
    rows = zip(
        map(item_ids.__getitem__, order.tolist()),
        top.rating.tolist(),
        top.model_rating.tolist(),
        top.ood_score.tolist(),
        top.cold_item.tolist(),
        map(SOURCES.__getitem__, top.item_source.tolist()),
        top.warnings,  # tuples: JSON arrays to orjson
        strict=True,
    )
    out = [
        {
            "item_id": item_id,
            "rating": r,
            "model_rating": m,
            "ood_score": o,
            "cold_start": cold,
            "source": source,
            "warnings": w,
        }
        for item_id, r, m, o, cold, source, w in rows
    ]
    if body.adapters:
        for entry, a in zip(out, top.adapters.tolist(), strict=True):
            entry["adapters"] = adapter_list(batch.layers, a)
    return {
        "model_version": batch.model_version,
        "user_id": body.user_id,
        "cold_start": bool(batch.cold_user[0]),
        "user_source": SOURCES[int(batch.user_source[0])],
        "ranked": out,
    }


async def rank(request: Request):
    """Rank candidate items for one user by predicted rating (``top_k`` to cut the list); one
    version (the user's) ranks every candidate."""
    # Parsed and validated in one pass from the bytes (service/json_body.py): a thousand
    # candidates are not first built as Python dicts and then walked again.
    body = await parsed_body(request, RankRequest)
    requested = request.headers.get(VERSION_HEADER)
    engine, settings = serving(request)
    candidates = body.candidates
    refuse_larger_than(len(candidates), settings, "max_rank_candidates", "candidates")
    item_ids = list(map(_ITEM_ID, candidates))
    refuse_duplicate_candidates(item_ids)
    rollout = served_rollout(engine)
    version = route(rollout, body.user_id, requested)
    scorer = version.scorer
    # The user's fields once, the item fields of the candidates that have any: 422s name
    # the field. Candidates without fields share one empty mapping.
    given = [i for i, c in enumerate(candidates) if c.get("item")]
    payloads = [(("body",), body.user, None)]
    payloads += [(("body", "candidates", i), None, candidates[i]["item"]) for i in given]
    fields = check_fields(scorer.request_models, payloads)
    user = fields[0][0] or NO_FIELDS
    items = [NO_FIELDS] * len(candidates)
    for i, (_, item) in zip(given, fields[1:], strict=True):
        items[i] = item
    uid = body.user_id
    inputs = resolved(
        engine,
        [ScoreInput(uid, i, user, item) for i, item in zip(item_ids, items, strict=True)],
    )
    count_route(engine, rollout, version, requested)
    batch = await score(engine, settings, inputs, version, "candidates")
    engine.answered(rollout, version, inputs, batch)
    return json_response(ranked(body, item_ids, batch))


add_scoring_route(router, "/rank", rank, body=RankRequest, response_model=RankResponse)
