"""The fair scheduler (service/batcher.py): large jobs in bounded steps interleaved with small
ones, work nobody waits for dropped between steps, admission by the text to encode; and the
scorer's steps (service/scorer.py) give the answers of one call."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from support.artifacts import direct_scores
from support.servers import ADMIN_TOKEN, loaded_client

from service.batcher import MicroBatcher
from service.errors import DeadlineError, QueueFullError
from service.metrics import Metrics
from service.scorer import ScoreInput


class _Answers(list):
    def slice(self, start, stop):
        return _Answers(self[start:stop])

    @staticmethod
    def concat(parts):
        return _Answers(x for p in parts for x in p)


def _fake(step_s: float = 0.02):
    """score / prepare functions that log their calls; a large job needs 3 prepare steps."""
    calls: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def score(target, pairs, background=False):
        with lock:
            calls.append(("score", pairs[0].user_id, len(pairs)))
        time.sleep(step_s if len(pairs) > 4 else 0.001)
        return _Answers(f"{r.user_id}/{r.item_id}" for r in pairs)

    def prepare(target, pairs, state):
        with lock:
            calls.append(("prepare", pairs[0].user_id, len(pairs)))
        time.sleep(step_s)
        state = (state or 0) + 1
        return state >= 3, state

    return score, prepare, calls


def test_small_requests_interleave_with_the_steps_of_a_large_one(monkeypatch):
    import service.results

    monkeypatch.setattr(service.results.ScoreBatch, "concat", _Answers.concat)
    score, prepare, calls = _fake()

    async def scenario():
        b = MicroBatcher(
            score,
            Metrics(),
            max_batch=4,
            max_delay_s=0.0,
            queue_bound=10_000,
            prepare=prepare,
            slice_pairs=10,
        )
        await b.start()
        large = asyncio.ensure_future(
            b.submit([ScoreInput("big", str(i)) for i in range(25)], 10.0)
        )
        await asyncio.sleep(0.005)
        waited = []

        async def small(k):
            t0 = time.perf_counter()
            out = await b.submit([ScoreInput(f"s{k}", "x")], 10.0)
            waited.append(time.perf_counter() - t0)
            return out

        smalls = []
        for k in range(6):
            smalls.append(asyncio.ensure_future(small(k)))
            await asyncio.sleep(0.025)
        answers = await asyncio.gather(large, *smalls)
        await b.stop()
        return answers, waited

    (big, *singles), waited = asyncio.run(scenario())
    assert big == [f"big/{i}" for i in range(25)]  # in order, from 3 slices of <= 10 pairs
    assert [c for c in calls if c[1] == "big"] == [
        ("prepare", "big", 25),
        ("prepare", "big", 25),
        ("prepare", "big", 25),
        ("score", "big", 10),
        ("score", "big", 10),
        ("score", "big", 5),
    ]
    assert all(s == [f"s{k}/x"] for k, s in enumerate(singles))
    # Each small request waited for at most about one step (20 ms), never the whole job
    # (6 steps, 120 ms).
    assert max(waited) < 0.09, waited
    big_steps = [j for j, c in enumerate(calls) if c[1] == "big"]
    small_calls = [j for j, c in enumerate(calls) if c[1] != "big"]
    assert any(big_steps[0] < j < big_steps[-1] for j in small_calls), calls


def test_a_large_job_nobody_waits_for_is_dropped_between_steps():
    score, prepare, calls = _fake(step_s=0.05)

    async def scenario():
        metrics = Metrics()
        b = MicroBatcher(
            score, metrics, max_batch=4, max_delay_s=0.0, queue_bound=10_000, prepare=prepare
        )
        await b.start()
        with pytest.raises(DeadlineError):
            await b.submit([ScoreInput("big", str(i)) for i in range(50)], 0.06)
        await asyncio.sleep(0.3)
        # The queue is free again and serves the next request.
        assert await b.submit([ScoreInput("after", "x")], 5.0) == ["after/x"]
        assert b.pending == 0
        await b.stop()
        return metrics.registry.get_sample_value("levi_scheduler_dropped_pairs_total")

    dropped = asyncio.run(scenario())
    assert dropped == 50
    steps = [c for c in calls if c[1] == "big"]
    assert len(steps) <= 2 and all(c[0] == "prepare" for c in steps), calls


def test_two_large_jobs_take_turns_and_admission_counts_tokens():
    score, prepare, calls = _fake(step_s=0.005)

    async def scenario():
        b = MicroBatcher(
            score,
            Metrics(),
            max_batch=4,
            max_delay_s=0.0,
            queue_bound=10_000,
            prepare=prepare,
            queue_tokens=1000,
        )
        await b.start()
        jobs = [
            asyncio.ensure_future(
                b.submit([ScoreInput(name, str(i)) for i in range(8)], 5.0, cold_tokens=400)
            )
            for name in ("a", "b")
        ]
        await asyncio.sleep(0)
        assert b.pending_tokens == 800
        with pytest.raises(QueueFullError, match="LEVI_QUEUE_TOKENS"):
            await b.submit([ScoreInput("c", "x")], 5.0, cold_tokens=300)
        await asyncio.gather(*jobs)
        # Alone, a request over the bound is admitted (it could never be otherwise).
        jobs = [asyncio.ensure_future(b.submit([ScoreInput("d", "x")], 5.0, cold_tokens=5000))]
        await asyncio.gather(*jobs)
        assert b.pending_tokens == 0
        await b.stop()

    asyncio.run(scenario())
    order = [c[1] for c in calls]
    assert order[:4] == ["a", "b", "a", "b"], calls  # round robin, one step each


@pytest.mark.parametrize("model", ["v1"])
def test_steps_answer_what_one_call_does_and_the_cost_limit(artifacts, compile_cache, model):
    """Through the real app: a /rank larger than max_batch of cold candidates is prepared in
    steps and scored in slices; its ratings equal the batch endpoint's for the same pairs. A
    request over LEVI_MAX_COLD_TOKENS is a 413 naming its list."""
    with loaded_client(
        getattr(artifacts, model),
        compile_cache,
        admin_token=ADMIN_TOKEN,
        max_batch=4,
        step_tokens=60,
        slice_pairs=7,
        max_cold_tokens=2000,
    ) as c:
        scorer = c.app.state.engine.scorer
        cands = [{"item_id": f"cold-{k}", "item": {"title": f"Film number {k}"}} for k in range(23)]
        inputs = [ScoreInput("1", x["item_id"], {}, x["item"]) for x in cands]
        new, uncached = scorer.estimate_cold_tokens(inputs)
        assert 0 < new <= uncached  # titled items the tables do not hold: new text (user 1
        # is known, not projected yet: uncached, not new)
        # Known items without fields (not projected yet after a start) are not new text.
        known = [ScoreInput("3", i) for i in ("10", "11", "12")]
        assert scorer.estimate_cold_tokens(known)[0] == 0
        ranked = c.post("/rank", json={"user_id": "1", "candidates": cands}).json()["ranked"]
        assert len(ranked) == 23
        assert scorer.estimate_cold_tokens(inputs) == (0, 0)  # every entity projected
        batch = c.post(
            "/predict-rating/batch",
            json={"requests": [{"user_id": "1", **x} for x in cands]},
        ).json()["predictions"]
        by_item = {x["item_id"]: p["rating"] for x, p in zip(cands, batch, strict=True)}
        for r in ranked:
            assert r["rating"] == pytest.approx(by_item[r["item_id"]], abs=1e-5)
        # ... and the artifact's own whole-head answers, one pair at a time.
        art = artifacts.loader(getattr(artifacts, model))
        reference = direct_scores(art, [{"user_id": "1", **x} for x in cands[:5]])
        for x, ref in zip(cands[:5], reference, strict=True):
            assert by_item[x["item_id"]] == pytest.approx(ref["rating"], abs=1e-4)
        # One step at a time, the scorer's own prepare: 23 items in steps of 3.
        # 16 + 60 // 3 = 36 tokens per item, 16 for user 2: a budget of 80 tokens takes
        # user 2 and one item, then two items per step.
        fresh = [ScoreInput("2", f"other-{k}", {}, {"title": "x" * 60}) for k in range(10)]
        done, state, steps = False, None, 0
        while not done:
            done, state = scorer.prepare(fresh, 80, state)
            steps += 1
        assert steps == 1 + 5  # user 2 + item 0, then items 1-2, 3-4, 5-6, 7-8, 9
        assert scorer.estimate_cold_tokens(fresh) == (0, 0)
        big = [{"item_id": f"huge-{k}", "item": {"title": "word " * 400}} for k in range(40)]
        r = c.post("/rank", json={"user_id": "1", "candidates": big})
        assert r.status_code == 413 and r.json()["detail"].startswith("candidates: about")
        assert "LEVI_MAX_COLD_TOKENS" in r.json()["detail"]


def test_the_heap_is_trimmed_when_idle_after_work_at_most_once_per_interval():
    score, prepare, _ = _fake()
    trims: list[tuple[float, str]] = []

    def release_heap():
        trims.append((time.monotonic(), threading.current_thread().name))

    async def scenario():
        b = MicroBatcher(
            score, Metrics(), max_batch=4, max_delay_s=0.0, queue_bound=100, prepare=prepare,
            heap_trim_interval_s=0.6, heap_trim_idle_s=0.05, release_heap=release_heap,
        )  # fmt: skip
        await b.start()
        await asyncio.sleep(0.1)
        assert trims == []  # no work yet: nothing to hand back
        t0 = time.monotonic()
        assert await b.submit([ScoreInput("u", "1")], 5.0) == ["u/1"]
        await asyncio.sleep(0.25)
        assert len(trims) == 1  # idle (past the 0.05 s grace) after work: trimmed
        assert await b.submit([ScoreInput("u", "2")], 5.0) == ["u/2"]
        await asyncio.sleep(0.1)
        assert len(trims) == 1  # trimmed less than the interval ago: not yet
        await asyncio.sleep(0.65)
        assert len(trims) == 2  # still idle when the interval is over: trimmed then
        await asyncio.sleep(0.8)
        assert len(trims) == 2  # no work since: no more trims
        await b.stop()
        return t0

    t0 = asyncio.run(scenario())
    assert trims[1][0] - trims[0][0] >= 0.6 - 0.01
    assert trims[0][0] >= t0
    assert all(name.startswith("levi-scorer") for _, name in trims)  # off the event loop


def test_no_trim_while_work_keeps_coming_in_short_gaps():
    score, prepare, _ = _fake()
    trims: list[float] = []

    async def scenario():
        b = MicroBatcher(
            score, Metrics(), max_batch=4, max_delay_s=0.0, queue_bound=100, prepare=prepare,
            heap_trim_interval_s=0.0, heap_trim_idle_s=0.4,
            release_heap=lambda: trims.append(time.monotonic()),
        )  # fmt: skip
        await b.start()
        for k in range(12):  # a request every 0.05 s: the collector is never idle for 0.4 s
            await b.submit([ScoreInput("u", str(k))], 5.0)
            await asyncio.sleep(0.05)
        during = len(trims)
        await asyncio.sleep(0.8)
        await b.stop()
        return during

    assert asyncio.run(scenario()) == 0
    assert len(trims) == 1  # once the work stopped


def test_a_stop_during_the_idle_wait_ends_the_collector():
    # The collector waits on its wakeup with a timeout after work (the trim's interval);
    # stop() then must end it at once, not after the interval nor never.
    score, prepare, _ = _fake()

    async def scenario():
        b = MicroBatcher(
            score, Metrics(), max_batch=4, max_delay_s=0.0, queue_bound=100, prepare=prepare,
            heap_trim_interval_s=30.0, release_heap=lambda: None,
        )  # fmt: skip
        await b.start()
        await b.submit([ScoreInput("u", "1")], 5.0)
        await asyncio.sleep(0.05)
        await b.submit([ScoreInput("u", "2")], 5.0)  # idle again within the interval: waits
        t0 = time.monotonic()
        await asyncio.wait_for(b.stop(), 5.0)
        return time.monotonic() - t0

    assert asyncio.run(scenario()) < 2.0
