"""The vectorised scorer: its projection cache changes nothing but speed."""

from __future__ import annotations

import numpy as np
import pytest
from support.artifacts import direct_scores

from model.artifact import load_artifact
from service.metrics import Metrics
from service.scorer import ScoreInput
from service.scorer_setup import build_scorer
from service.settings import Settings

PAIRS = [
    {"user_id": "1", "item_id": "10"},
    {"user_id": "2", "item_id": "11", "user": {"age": 40}},
    {"user_id": "1", "item_id": "12"},
    {"user_id": "new-user", "item_id": "12", "user": {"occupation": "lawyer"}},
    {"user_id": "3", "item_id": "cold", "item": {"title": "Heat (1995)", "genres": ["Crime"]}},
    {"user_id": "1", "item_id": "10"},  # a repeat within the batch
    {"user_id": "4", "item_id": "cold-no-fields"},
]
INPUTS = [
    ScoreInput(p["user_id"], p["item_id"], p.get("user", {}), p.get("item", {})) for p in PAIRS
]


@pytest.fixture(scope="module")
def art(artifacts):
    return load_artifact(artifacts.v1)


@pytest.mark.parametrize("capacity", [1, 3, 20_000])
def test_every_cache_size_answers_as_the_whole_head(art, capacity):
    settings = Settings(redis_url=None, max_batch=4, projection_cache_size=capacity)
    scorer = build_scorer(art, settings, Metrics(), redis=None, warm=False)
    want = direct_scores(art, PAIRS)
    for _ in range(2):  # cold caches, then whatever they kept
        got = scorer.score(INPUTS)
        np.testing.assert_allclose(got.rating, [w["rating"] for w in want], atol=1e-5)
        np.testing.assert_allclose(got.adapters, [w["adapters"] for w in want], atol=1e-5)
        np.testing.assert_allclose(got.ood_score, [w["ood_score"] for w in want], atol=1e-4)
        assert got.cold_user.tolist() == [False, False, False, True, False, False, False]
        assert got.cold_item.tolist() == [False, False, False, False, True, False, True]
        assert got.warnings[0] == () and any("cold start" in w for w in got.warnings[4])
    assert len(scorer.projections["item"]) <= capacity
