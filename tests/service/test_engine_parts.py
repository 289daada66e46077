"""Drift windows, the Redis circuit breaker and the micro-batcher, each on its own."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time

import numpy as np
import pytest

from service.arrival_rate import ArrivalRate
from service.batcher import MicroBatcher
from service.cache import ActivationCache, LocalLRU, RedisTier
from service.drift import DriftMonitor
from service.errors import DeadlineError, QueueFullError
from service.metrics import Metrics
from service.scorer import ScoreInput


def _monitor(window=500):
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(2, 3, 8)).astype(np.float32)
    var = np.full((2, 3, 8), 4.0, np.float32)
    edges = np.linspace(1, 5, 9)
    hist = np.array([1, 2, 5, 10, 20, 25, 15, 5], float)
    return DriftMonitor(edges, hist, mean, var, window=window, halflife=100), rng, edges, hist


def test_psi_is_small_in_distribution_and_large_after_a_shift():
    mon, rng, edges, hist = _monitor()
    bins = rng.choice(len(hist), size=500, p=hist / hist.sum())
    ratings = edges[bins] + 0.25  # inside each bin
    acts = mon.mean[None] + 2.0 * rng.normal(size=(500, 2, 3, 8)).astype(np.float32)
    psi, drift = mon.update(ratings, acts)
    assert psi < 0.05
    np.testing.assert_allclose(drift, 1.0, atol=0.1)  # RMS z-distance ~1 in distribution
    psi, drift = mon.update(np.full(500, 1.1), acts + 6.0)  # all low ratings, shifted acts
    assert psi > 1.0
    assert (drift > 2.0).all()


def test_redis_tier_backs_off_counts_errors_and_comes_back():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = Metrics()
    tier = RedisTier(
        f"redis://127.0.0.1:{port}/0",
        metrics,
        ttl_s=60,
        timeout_s=0.05,
        backoff_s=0.1,
        backoff_max_s=0.2,
    )
    cache = ActivationCache(
        "fp", (2, 3), "float16", metrics, local=LocalLRU(10), remote=tier, key_prefix="levi:act"
    )
    t0 = time.perf_counter()
    assert cache.get_many(["a", "b"]) == {}
    assert time.perf_counter() - t0 < 1.0  # time-boxed
    assert not tier.available
    assert cache.get_many(["c"]) == {}  # skipped while backing off
    get = metrics.registry.get_sample_value
    assert get("levi_activation_cache_errors_total", {"op": "get"}) == 1
    assert get("levi_activation_cache_lookups_total", {"tier": "redis", "result": "error"}) == 2
    assert get("levi_activation_cache_lookups_total", {"tier": "redis", "result": "bypass"}) == 1
    time.sleep(0.15)
    assert tier.available
    # Stored values are rounded through the storage dtype, so every tier answers alike.
    stored = cache.put_many({"k": np.full((2, 3), 1 / 3, np.float32)})
    assert stored["k"].dtype == np.float32 and stored["k"][0, 0] == np.float16(1 / 3)


class _Answers(list):
    """What a recording scorer returns: one label per pair, sliceable like a ScoreBatch."""

    def slice(self, start, stop):
        return _Answers(self[start:stop])


def _results(target, batch, background=False):
    """A score function of MicroBatcher: ``(target, pairs, background)`` -> answers."""
    return _Answers(f"{r.user_id}:{len(batch)}" for r in batch)


def _recording_scorer():
    """A scorer that answers like ``_results`` and the list of batch sizes it was called with."""
    seen = []

    def score(target, batch, background=False):
        seen.append(len(batch))
        return _results(target, batch)

    return score, seen


def test_micro_batcher_gathers_concurrent_requests_and_bounds_the_queue():
    async def scenario():
        score, seen = _recording_scorer()

        b = MicroBatcher(score, Metrics(), max_batch=8, max_delay_s=0.05, queue_bound=10)
        await b.start()
        answers = await asyncio.gather(
            *(b.submit([ScoreInput(str(i), "x")], 5.0) for i in range(6))
        )
        assert [a[0] for a in answers] == [f"{i}:6" for i in range(6)]  # one batch, in order
        with pytest.raises(QueueFullError, match="bound is 10"):
            await b.submit([ScoreInput("u", "i")] * 11, 5.0)
        await b.stop()
        return seen

    assert asyncio.run(scenario()) == [6]


def test_micro_batcher_keeps_jobs_whole():
    """A request's pairs are one job: never split across calls, a large job scored alone."""

    async def scenario():
        score, seen = _recording_scorer()
        b = MicroBatcher(score, Metrics(), max_batch=8, max_delay_s=0.05, queue_bound=100)
        await b.start()
        big = [ScoreInput(f"b{i}", "x") for i in range(11)]
        small = [ScoreInput(f"s{i}", "x") for i in range(3)]
        answers = await asyncio.gather(b.submit(big, 5.0), b.submit(small, 5.0))
        assert b.pending == 0
        await b.stop()
        return seen, answers

    seen, (big, small) = asyncio.run(scenario())
    assert sorted(seen) == [3, 11]  # the 11-pair job alone, whole; the 3-pair job after it
    assert big == [f"b{i}:11" for i in range(11)] and small == [f"s{i}:3" for i in range(3)]


def test_micro_batcher_deadline_and_errors_reach_the_caller():
    release = threading.Event()

    def slow(target, batch, background=False):
        release.wait(5)
        if batch[0].user_id == "boom":
            raise ValueError("scorer failed")
        return _results(target, batch)

    async def scenario():
        b = MicroBatcher(slow, Metrics(), max_batch=4, max_delay_s=0.0, queue_bound=100)
        await b.start()
        with pytest.raises(DeadlineError):
            await b.submit([ScoreInput("1", "x")], 0.1)
        release.set()
        with pytest.raises(ValueError, match="scorer failed"):
            await b.submit([ScoreInput("boom", "x")], 5.0)
        assert await b.submit([ScoreInput("2", "x")], 5.0) == ["2:1"]
        await b.stop()

    asyncio.run(scenario())


def test_arrival_rate_tracks_a_steady_rate_and_decays_when_idle():
    rate = ArrivalRate(tau_s=0.2)
    assert rate.rate(0.0) == 0.0
    t = 0.0
    for _ in range(2000):  # 1000 pairs/s for 2 s
        t += 0.001
        rate.observe(t)
    assert rate.rate(t) == pytest.approx(1000, rel=0.01)
    assert rate.expected_within(t, 0.002) == pytest.approx(2.0, rel=0.01)
    # Pending pairs are taken out: one lone arrival is no evidence of a second.
    lone = ArrivalRate(tau_s=0.2)
    lone.observe(5.0)
    assert lone.expected_within(5.0, 0.5) == pytest.approx(2.5)
    assert lone.expected_within(5.0, 0.5, pending=1) == 0.0
    assert rate.rate(t + 1.0) < 1000 * math.exp(-4.9)  # five time constants later
    rate.observe(t + 1.0, n=10)  # a batch request counts its pairs
    assert rate.rate(t + 1.0) > 10 / 0.2


def test_micro_batcher_skips_the_wait_for_a_lone_client():
    """One request at a time: each is scored alone and none waits max_delay for company."""

    async def scenario():
        b = MicroBatcher(_results, Metrics(), max_batch=8, max_delay_s=0.3, queue_bound=10)
        await b.start()
        took = []
        for i in range(3):
            t0 = time.perf_counter()
            assert await b.submit([ScoreInput(str(i), "x")], 5.0) == [f"{i}:1"]
            took.append(time.perf_counter() - t0)
            await asyncio.sleep(0.4)  # 2.5 pairs/s: far fewer than 1 per max_delay
        await b.stop()
        return took

    assert max(asyncio.run(scenario())) < 0.15  # waiting would take max_delay = 0.3 s


def test_micro_batcher_waits_for_company_under_load():
    """At a high arrival rate a lone pending pair waits, and the late ones join its batch."""

    async def scenario():
        score, seen = _recording_scorer()

        b = MicroBatcher(score, Metrics(), max_batch=8, max_delay_s=0.2, queue_bound=100)
        for k in range(50):  # the recent past: 50 pairs within 10 ms
            b.arrivals.observe(time.perf_counter() - 0.01 + k * 0.0002)
        await b.start()

        async def late(i):
            await asyncio.sleep(0.05)
            return await b.submit([ScoreInput(str(i), "x")], 5.0)

        first = asyncio.ensure_future(b.submit([ScoreInput("0", "x")], 5.0))
        answers = await asyncio.gather(first, *(late(i) for i in range(1, 4)))
        await b.stop()
        return seen, answers

    seen, answers = asyncio.run(scenario())
    assert seen == [4]  # the first pair waited for the three that came 50 ms later
    assert [a[0] for a in answers] == [f"{i}:4" for i in range(4)]


def test_freeze_long_lived_hides_the_model_from_the_collector_until_the_next_install():
    import gc
    import weakref

    from service.engine import freeze_long_lived

    class Node:
        pass

    old = Node()
    old.cycle = old  # only the cyclic collector can free it
    ref = weakref.ref(old)
    try:
        freeze_long_lived()  # a model was installed
        assert gc.get_freeze_count() > 0
        del old
        gc.collect()
        assert ref() is not None  # frozen: full collections no longer walk it
        freeze_long_lived()  # the next install (a reload) unfreezes and collects first
        assert ref() is None
    finally:
        gc.unfreeze()
