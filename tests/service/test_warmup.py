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
    assert scorer.pair_buckets == (1, 2, 8, 32, 128, 512, 1024)  # then x4 up to 1,024
    assert scorer.length_buckets == tuple(art.manifest["backbone"]["length_buckets"]) == (16, 32)
    lengths = scorer.length_buckets_in_use()
    assert lengths == (16, 32)
    assert set(scorer.warmed) == set(itertools.product(scorer.backbone_buckets, lengths))
    # One compiled executable per shape, no more: the exported functions are jitted once.
    assert art._encode_fn._cache_size() == len(scorer.warmed)
    # factored views: the decomposed functions are compiled, the whole head is not needed
    assert scorer.decomposed and art._score_fn._cache_size() == 0
    for side in ("user", "item"):
        assert art._side_fns[side]._cache_size() == len(scorer.head_buckets)
    assert art._pair_fn._cache_size() == len(scorer.pair_buckets)


def test_serving_after_warm_up_compiles_nothing(warmed):
    art, scorer = warmed

    def compiled():
        fns = [art._encode_fn, art._score_fn, art._pair_fn, *art._side_fns.values()]
        return [f._cache_size() for f in fns]

    before = compiled()
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
        assert len(results) == n and results.adapters.shape == (n, len(scorer.layers))
    for i, req in enumerate(requests):  # one at a time, new texts each round
        scorer.score([ScoreInput(f"u{i}", req.item_id, item=dict(req.item))])
    assert compiled() == before
    # ... and what it answers is the artifact's own score.
    pairs = [{"user_id": "3", "item_id": "cold-item", "item": {"title": long_title}}]
    got = scorer.score([ScoreInput("3", "cold-item", item={"title": long_title})])
    want = direct_scores(art, pairs)[0]
    assert float(got.rating[0]) == pytest.approx(want["rating"], abs=1e-5)
    np.testing.assert_allclose(got.adapters[0], want["adapters"], atol=1e-5)
    assert any("truncated" in w for w in got.warnings[0])
