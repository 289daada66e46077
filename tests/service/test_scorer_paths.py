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


def test_score_warm_answers_only_what_is_projected_and_never_waits(art):
    """The event loop's path (service/batcher.py): the same answers as score() once every
    entity is projected in process; None, having done and counted nothing, while any entity
    is not projected or another thread holds the scorer."""
    settings = Settings(redis_url=None, max_batch=4)
    metrics = Metrics()
    scorer = build_scorer(art, settings, metrics, redis=None, warm=False)

    def predictions():
        return metrics.registry.get_sample_value("levi_predictions_total") or 0.0

    assert scorer.score_warm(INPUTS) is None  # nothing projected yet: no encode on the loop
    assert len(scorer.projections["user"]) == len(scorer.projections["item"]) == 0
    assert predictions() == 0.0
    want = scorer.score(INPUTS)  # projects every entity (the scorer thread's path)
    got = scorer.score_warm(INPUTS)
    assert got is not None and predictions() == 2 * len(INPUTS)
    np.testing.assert_allclose(got.rating, want.rating, atol=1e-6)
    np.testing.assert_allclose(got.adapters, want.adapters, atol=1e-6)
    assert got.cold_item.tolist() == want.cold_item.tolist()
    assert got.warnings == want.warnings
    assert got.item_source.tolist() == want.item_source.tolist()
    one_new = [*INPUTS, ScoreInput("1", "never-seen", {}, {"title": "Brand New (2026)"})]
    assert scorer.score_warm(one_new) is None  # one entity to encode: the scorer thread's
    assert predictions() == 2 * len(INPUTS)
    with scorer._lock:  # e.g. a large job's preparation step on another thread
        assert scorer.score_warm(INPUTS) is None


def test_score_warm_leaves_large_batches_and_redis_corrections_to_the_scorer_thread(art):
    from service.scorer import INLINE_MAX_PAIRS

    scorer = build_scorer(
        art, Settings(redis_url=None), Metrics(), redis=None, warm=False, corrections=True
    )
    scorer.score(INPUTS)
    assert scorer.score_warm(INPUTS) is not None  # corrections kept in process: inline
    many = [INPUTS[0]] * (INLINE_MAX_PAIRS + 1)  # one pair call of more rows than the cap
    assert scorer.score_warm(many) is None
    scorer.corrections.redis = object()  # a Redis tier: reading it is a round trip
    assert scorer.score_warm(INPUTS) is None
