"""Warm-up compiles every batch bucket x length bucket in use; serving then never compiles."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import direct_scores

from model.artifact import load_artifact
from service.engine import build_scorer
from service.metrics import Metrics
from service.scorer import ScoreInput
from service.settings import Settings


@pytest.fixture(scope="module")
def warmed(artifacts):
    art = load_artifact(artifacts.v1)  # its own jit caches, not shared with other tests
    settings = Settings(redis_url=None, max_batch=2)
    scorer = build_scorer(art, settings, Metrics(), redis=None, warm=True)
    return art, scorer


def test_warm_up_covers_every_batch_and_length_bucket_in_use(warmed):
    art, scorer = warmed
    assert scorer.backbone_buckets == (1, 2, 4)  # max_batch 2 x 2 views
    assert scorer.head_buckets == (1, 2)
    assert scorer.length_buckets == tuple(art.manifest["backbone"]["length_buckets"]) == (16, 32)
    lengths = scorer.length_buckets_in_use()
    assert lengths == (16, 32)
    assert set(scorer.warmed) == set(itertools.product(scorer.backbone_buckets, lengths))
    # One compiled executable per shape, no more: the exported functions are jitted once.
    assert art._encode_fn._cache_size() == len(scorer.warmed)
    assert art._score_fn._cache_size() == len(scorer.head_buckets)


def test_serving_after_warm_up_compiles_nothing(warmed):
    art, scorer = warmed
    encode_before, score_before = art._encode_fn._cache_size(), art._score_fn._cache_size()
    long_title = " ".join(["space oddity"] * 20)  # truncated at max_length 32
    requests = [
        ScoreInput("1", "10"),
        ScoreInput("2", "11", user={"age": 40}),
        ScoreInput("new-user", "12", user={"occupation": "lawyer"}),
        ScoreInput("3", "cold-item", item={"title": long_title, "genres": ("Crime",)}),
        ScoreInput("4", "cold-no-title"),
    ]
    for n in (1, 2, 3, 5):
        results = scorer.score(requests[:n])
        assert len(results) == n
    for i, req in enumerate(requests):  # one at a time, new texts each round
        scorer.score([ScoreInput(f"u{i}", req.item_id, item=dict(req.item))])
    assert art._encode_fn._cache_size() == encode_before
    assert art._score_fn._cache_size() == score_before
    # ... and what it answers is the artifact's own score.
    pairs = [{"user_id": "3", "item_id": "cold-item", "item": {"title": long_title}}]
    got = scorer.score([ScoreInput("3", "cold-item", item={"title": long_title})])[0]
    want = direct_scores(art, pairs)[0]
    assert got.rating == pytest.approx(want["rating"], abs=1e-5)
    np.testing.assert_allclose([r for _, r in got.adapters], want["adapters"], atol=1e-5)
