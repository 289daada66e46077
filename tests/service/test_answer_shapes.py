"""The answers are built as plain values (orjson, no pydantic on the hot path); this checks
each one against its documented response model, field by field, so the two cannot drift:
a key the model lacks, a missing required key or a wrong type fails here."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from support.artifacts import ITEMS
from support.servers import loaded_client

from service.schemas import BatchPredictResponse, PredictResponse, RankResponse

KNOWN = {"user_id": "1", "item_id": "10"}
COLD = {"user_id": "new-user", "item_id": "cold-9", "item": {"title": "Space Oddity"}}


@pytest.fixture(scope="module")
def client(artifacts, compile_cache):
    with loaded_client(artifacts.v1, compile_cache) as c:
        yield c


def exactly(model: type[BaseModel], body: dict) -> None:
    """``body`` is valid for ``model`` and holds nothing ``model`` does not describe."""
    parsed = model.model_validate(body)
    assert parsed.model_dump(mode="json", exclude_unset=True) == body


def test_a_prediction_is_exactly_a_predict_response(client):
    for pair in (KNOWN, COLD):
        r = client.post("/predict-rating", json=pair)
        assert r.status_code == 200, r.text
        exactly(PredictResponse, r.json())


def test_a_batch_is_exactly_a_batch_predict_response(client):
    r = client.post("/predict-rating/batch", json={"requests": [KNOWN, COLD]})
    assert r.status_code == 200, r.text
    exactly(BatchPredictResponse, r.json())


@pytest.mark.parametrize("adapters", [False, True])
def test_a_ranking_is_exactly_a_rank_response(client, adapters):
    candidates = [{"item_id": i["item_id"]} for i in ITEMS] + [
        {"item_id": "cold-9", "item": {"title": "Space Oddity"}}
    ]
    body = {"user_id": "1", "candidates": candidates, "adapters": adapters}
    r = client.post("/rank", json=body)
    assert r.status_code == 200, r.text
    exactly(RankResponse, r.json())
    assert all(("adapters" in c) == adapters for c in r.json()["ranked"])


def test_a_drifted_answer_would_fail_this_check():
    """The check itself: an extra key or a missing one is caught."""
    good = {"item_id": "1", "rating": 3.0, "model_rating": 3.0, "ood_score": 1.0, "source": "model"}
    answer = {"model_version": "v", "user_id": "1", "cold_start": False, "user_source": "model"}
    exactly(RankResponse, {**answer, "ranked": [{**good, "cold_start": False}]})
    with pytest.raises(AssertionError):
        exactly(RankResponse, {**answer, "ranked": [{**good, "cold_start": False, "x": 1}]})
    with pytest.raises(ValueError):
        exactly(RankResponse, {**answer, "ranked": [good]})
