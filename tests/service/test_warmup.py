"""Warm-up compiles every batch bucket x length bucket in use; serving then never compiles."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from support.artifacts import direct_scores

from model.artifact import load_artifact
from service.metrics import Metrics
from service.scorer import ScoreInput
from service.scorer_setup import build_scorer
from service.settings import Settings
from service.warmup import full_plan, length_plan


@pytest.fixture(scope="module")
def warmed(artifacts):
    art = load_artifact(artifacts.v1)  # its own jit caches, not shared with other tests
    settings = Settings(redis_url=None, max_batch=2)
    scorer = build_scorer(art, settings, Metrics(), redis=None, warm=True)
    return art, scorer


def test_warm_up_covers_every_batch_and_length_bucket_in_use(warmed):
    art, scorer = warmed
    # A coarse grid (each compiled shape costs memory): rows x4, the side functions at one
    # row or a micro-batch, the pair function x8 up to 1,024, every other length bucket.
    assert scorer.backbone_buckets == (1, 4)  # max_batch 2 x 2 views
    assert scorer.head_buckets == scorer.side_buckets == (1, 2)
    assert scorer.pair_buckets == (1, 2, 16, 128, 1024)
    assert tuple(art.manifest["backbone"]["length_buckets"]) == (16, 32)
    assert scorer.length_buckets == (32,)
    in_use, longer = length_plan(scorer)
    lengths = in_use + longer
    assert lengths == (32,)
    backbone = {(s.rows, s.length) for s in full_plan(scorer) if s.function == "backbone"}
    assert backbone == set(itertools.product(scorer.backbone_buckets, lengths))
    # One compiled executable per shape, no more: the exported functions are jitted once.
    assert art._encode_fn._cache_size() == len(backbone)
    # factored views: the decomposed functions are compiled, the whole head is not needed
    assert scorer.decomposed and art._score_fn._cache_size() == 0
    for side in ("user", "item"):
        assert art._side_fns[side]._cache_size() == len(scorer.side_buckets)
    # the pair function as the scorer calls it: rows of the projection tables in, one
    # compiled call per pair bucket; the one on gathered parts is not needed
    assert art._pair_rows_fn._cache_size() == len(scorer.pair_buckets)
    assert art._pair_fn._cache_size() == 0


def test_serving_after_warm_up_compiles_nothing(warmed):
    art, scorer = warmed

    def compiled():
        fns = [
            art._encode_fn,
            art._score_fn,
            art._pair_fn,
            art._pair_rows_fn,
            *art._side_fns.values(),
        ]
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


# -- staged warm-up (service/warmup.py) ----------------------------------------------------

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts XLA backend compiles while active (a cache hit in memory is not one)."""

    def __init__(self):
        import jax

        self.active, self.count = False, 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if self.active and event == BACKEND_COMPILE:
            self.count += 1


@pytest.fixture(scope="module")
def staged(artifacts):
    from service.warmup import CompiledShapes, warm_first

    art = load_artifact(artifacts.v1)  # its own caches
    metrics = Metrics()
    shapes = CompiledShapes(art, metrics)
    settings = Settings(redis_url=None, max_batch=2)
    scorer = build_scorer(shapes, settings, metrics, redis=None, warm=False)
    seconds = warm_first(scorer, shapes)
    return art, shapes, scorer, metrics, seconds


def _gauge(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def test_first_stage_is_one_requests_batch_at_the_longest_length_and_one_row_each(staged):
    from service.warmup import Shape, background_order, first_plan, full_plan

    _, shapes, scorer, metrics, _ = staged
    plan = full_plan(scorer)
    # backbone (1, 4) x lengths (32,); each side (1, 2); pair (1, 2, 16, 128, 1024)
    assert scorer.decomposed and len(plan) == 2 * 1 + 2 * 2 + len(scorer.pair_buckets)
    first = first_plan(plan, texts_per_request=2)
    assert first == (
        Shape("backbone", 4, 32),
        Shape("item_side", 1),
        Shape("pair", 1),
        Shape("user_side", 1),
    )
    assert shapes.compiled == set(first)
    rest = background_order(plan, first)
    n_row = len([s for s in rest if s.function != "backbone"])
    assert all(s.function != "backbone" for s in rest[:n_row])  # the cheap ones first
    assert rest[n_row] == Shape("backbone", 1, 32)  # then the backbone (one shape left here)
    assert set(rest) == set(plan) - set(first) and rest[-1] == Shape("backbone", 1, 32)
    assert _gauge(metrics, "levi_warmup_pending_shapes") == len(rest)


def test_between_the_stages_nothing_compiles_and_answers_are_the_artifacts(staged):
    art, shapes, scorer, _, _ = staged
    counter = CompileCounter()
    requests = [
        ScoreInput("1", "10"),
        ScoreInput("2", "11", user={"age": 40}),
        ScoreInput("new-user", "12", user={"occupation": "lawyer"}),
        ScoreInput("3", "cold-item", item={"title": "space oddity " * 9}),  # 32 tokens
        ScoreInput("4", "cold-no-title"),
    ]
    counter.active = True
    # 1-5 pairs: side and pair calls of 1-8 rows, backbone batches of 1-4 texts at 32
    # tokens: served from the 4-row x 32-token backbone and the 1-row side and pair
    # functions (split or padded).
    got = [scorer.score(requests[:n]) for n in (1, 2, 3, 5)]
    counter.active = False
    assert counter.count == 0, "a shape compiled while serving"
    assert not shapes.complete
    pairs = [
        {"user_id": r.user_id, "item_id": r.item_id, "user": dict(r.user), "item": dict(r.item)}
        for n in (1, 2, 3, 5)
        for r in requests[:n]
    ]
    want = direct_scores(art, pairs)
    np.testing.assert_allclose(
        np.concatenate([g.rating for g in got]), [w["rating"] for w in want], atol=1e-5
    )
    np.testing.assert_allclose(
        np.concatenate([g.adapters for g in got]), [w["adapters"] for w in want], atol=1e-5
    )


def test_background_stage_compiles_the_rest_then_calls_pass_through(staged, monkeypatch):
    import service.warmup
    from service.warmup import full_plan, warm_rest

    art, shapes, scorer, metrics, _ = staged
    before = scorer.score([ScoreInput("1", "10"), ScoreInput("2", "12")])
    # The stage runs the smallest compiled backbone shape once (its weights paged in before
    # any request needs them) and unmaps the compiler's code once every shape is compiled.
    events = []
    encode = type(art).encode
    monkeypatch.setattr(
        type(art),
        "encode",
        lambda self, ids, mask: events.append(("encode", ids.shape)) or encode(self, ids, mask),
    )
    monkeypatch.setattr(
        service.warmup,
        "release_compiler_code",
        lambda: events.append(("release", shapes.complete)) or 0,
    )
    counter = CompileCounter()
    counter.active = True
    warm_rest(scorer, shapes)
    counter.active = False
    assert events == [("encode", (4, 32)), ("release", True)]
    assert shapes.complete and set(full_plan(scorer)) <= shapes.compiled
    assert _gauge(metrics, "levi_warmup_pending_shapes") == 0
    assert counter.count <= len(full_plan(scorer))  # compiled once each, nothing run twice
    counter.count, counter.active = 0, True
    after = scorer.score([ScoreInput("1", "10"), ScoreInput("2", "12")])
    scorer.score([ScoreInput(f"u{i}", "11") for i in range(2)])
    counter.active = False
    assert counter.count == 0
    np.testing.assert_allclose(after.rating, before.rating, atol=1e-5)


def test_a_longer_shape_than_any_compiled_compiles_in_the_call(artifacts, caplog):
    from service.warmup import CompiledShapes, Shape

    shapes = CompiledShapes(artifacts.loader(artifacts.v1))
    shapes.compiled = {Shape("backbone", 2, 16), Shape("backbone", 8, 16), Shape("head", 4)}
    assert shapes._target(Shape("backbone", 1, 16)) == Shape("backbone", 2, 16)  # padded
    assert shapes._target(Shape("backbone", 3, 8)) == Shape("backbone", 8, 16)
    assert shapes._target(Shape("backbone", 20, 16)) == Shape("backbone", 8, 16)  # split
    assert shapes._target(Shape("head", 32)) == Shape("head", 4)
    with caplog.at_level("WARNING", logger="service.warmup"):
        assert shapes._target(Shape("backbone", 2, 32)) is None
    assert "compiling the backbone for 2 rows x 32 tokens while serving" in caplog.text
    assert Shape("backbone", 2, 32) in shapes.compiled  # the artifact's own jit keeps it
