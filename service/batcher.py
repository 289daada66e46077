"""Dynamic micro-batching with a fair scheduler: concurrent requests scored together, off the
event loop, and no request's work can starve the others.

A request enqueues its pairs as one job (a single prediction, a batch, a ranking) and awaits
one future; the scorer gets the pairs of several jobs at once and returns arrays
(:class:`service.results.ScoreBatch`), which are sliced back per job. No per-pair futures or
result objects. One collector task runs the scorer on a single worker thread (the model
itself uses every core). While a batch is being scored the next one fills up, so batches
grow with load and stay small when idle.

**Small and large jobs.** A job of at most ``max_batch`` pairs is *small*: it is batched with
other small jobs of the same target (version). A larger job (a ``/rank``, a batch request, a
feedback request of many events) is done in *steps*, each bounded in time: first its
entities that are not cached yet are projected a few at a time (``prepare``: their texts
encoded, the costly part of a cold request, ``service/scorer.py``), then its pairs are scored
in slices of ``slice_pairs`` (cheap once projected). The collector alternates: a batch of
small jobs, then one step of a large job (large jobs take turns), so a small request waits
behind at most one step, never behind a whole large job. Between steps the scheduler looks
again: a job whose request gave up (timeout, disconnect) is dropped, its remaining steps never
run. A small job's pairs are scored in one call; a large job's answers are the concatenation
of its slices (the same values: every pair is scored on its own).

**Admission** counts cost, not only pairs: each job carries an estimate of the tokens of text
it will have to encode (cold entities), and the queue refuses (503) beyond ``queue_bound``
pairs or ``queue_tokens`` tokens pending, so a burst of cold requests cannot queue more
encoding than the deadlines allow.

**Background work** (shadow scoring: nobody waits for it) runs on its own thread, next to
the scorer thread and never in its queue, so no request waits behind it; it starts only
while no request waits, in full batches, large jobs in the same bounded steps, and is dropped
when its own queue is full or it was not started in time.

**Idle heap trim.** A request's temporaries (a ranking's thousand answers, its JSON, XLA's
buffers) are freed into glibc's heap, which keeps the pages. When the collector has had no
work for ``heap_trim_idle_s`` after scoring (so never in the short gaps between batches under
load), it hands the free pages back (``malloc_trim``, model/native_heap.py; about 0.5 ms) on
the scorer thread, at most every ``heap_trim_interval_s``: 25-30 MiB less resident after the
memory benchmark's traffic (docs/PROFILING.md).

The wait for more pairs is adaptive: it happens only when the recent arrival rate expects at
least one more pair within ``max_delay`` (:class:`ArrivalRate`). A lone client (one request
in flight) is scored at once instead of paying ``max_delay`` for company that cannot come
(while its round trip is longer than ``max_delay``: a client faster than that is itself the
expected company), while under load batches fill as before. Measured with wrk
(docs/PROFILING.md): at one connection this nearly doubles req/s over always waiting; at 32
it keeps the batches that a zero delay loses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from model.native_heap import release_free_heap
from service.arrival_rate import ArrivalRate
from service.errors import DeadlineError, QueueFullError
from service.metrics import Metrics
from service.results import ScoreBatch
from service.scorer import ScoreInput

log = logging.getLogger(__name__)


def lower_thread_priority(niceness: int) -> None:
    """Give the calling thread a lower CPU priority (Linux: threads have their own nice
    value), so the work it does leaves the CPU to serving. No-op where unsupported."""
    if niceness <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError) as e:
        log.debug("could not lower a thread's priority: %s", e)


def _nothing_encoded(state: Any) -> bool:
    """Whether a job's preparation found nothing to encode (``Scorer.prepare``'s state)."""
    return isinstance(state, dict) and not state.get("encoded", True)


HEAP_TRIM_INTERVAL_S = 1.0  # at most one idle heap trim per this many seconds (docstring)
HEAP_TRIM_IDLE_S = 0.1  # ... and only after this long without work


@dataclass(eq=False)
class _Pending:
    requests: Sequence[ScoreInput]
    future: asyncio.Future | None  # None: background work nobody waits for
    enqueued: float  # perf_counter
    deadline: float  # perf_counter
    target: Any = None  # what scores it (a version's scorer); None: the score function's default
    on_done: Callable[[ScoreBatch | None], None] | None = field(default=None, repr=False)
    cold_tokens: int = 0  # estimated tokens of text to encode (admission cost)
    prepared: bool = True  # large jobs: False until their entities are projected
    state: Any = None  # the prepare steps' state (what is left to project)
    done: int = 0  # pairs scored so far (a large job's slices)
    parts: list = field(default_factory=list)  # the slices' answers

    @property
    def abandoned(self) -> bool:
        """Nobody waits for the answer any more (timeout or disconnect)."""
        return self.future is not None and self.future.done()


def _expire(future: asyncio.Future, timeout_s: float) -> None:
    """A job's deadline: its waiter gets a 504 (``DeadlineError``) unless already answered."""
    if not future.done():
        future.set_exception(DeadlineError(f"not scored within the {timeout_s:g}s request timeout"))


class MicroBatcher:
    """Gathers pairs from concurrent requests into batches for ``score``, large jobs in steps.

    Args:
        score: ``score(target, pairs, background)`` scores the pairs of one or more jobs of
            one target (called on the worker thread; ``target`` is what :meth:`submit` was
            given, None for the default, which is read again for every batch, so a model swap
            takes effect on the next batch).
        prepare: ``prepare(target, pairs, state) -> (done, state)``: one bounded step of a
            large job's preparation (projecting a few of its uncached entities); None: large
            jobs go straight to their slices.
        max_batch: most pairs per batch of small jobs; a job with more is large.
        max_delay_s: longest wait for more pairs once one is pending.
        queue_bound: most pending pairs; beyond it :meth:`submit` raises QueueFullError.
        queue_tokens: most pending tokens of text to encode (None: unbounded).
        slice_pairs: pairs per scoring step of a large job.
        background_bound: most pairs of background work waiting.
        background_delay_s: background work waits for a full batch (``max_batch`` pairs) at
            most this long.
        background_niceness: the nice value of the background thread (Linux). 0 by default:
            a thread that runs Python holds the GIL, and a lowered priority can leave it
            descheduled while holding it, stalling every other thread (docs/PROFILING.md,
            "No request can starve").
    """

    def __init__(
        self,
        score: Callable[[Any, Sequence[ScoreInput], bool], ScoreBatch],
        metrics: Metrics,
        *,
        max_batch: int,
        max_delay_s: float,
        queue_bound: int,
        background_bound: int = 4096,
        prepare: Callable[[Any, Sequence[ScoreInput], Any], tuple[bool, Any]] | None = None,
        queue_tokens: int | None = None,
        slice_pairs: int = 1024,
        background_delay_s: float = 0.25,
        background_niceness: int = 0,
        heap_trim_interval_s: float | None = HEAP_TRIM_INTERVAL_S,
        heap_trim_idle_s: float = HEAP_TRIM_IDLE_S,
        release_heap: Callable[[], object] = release_free_heap,
    ):
        self.score = score
        self.prepare = prepare
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.queue_bound = queue_bound
        self.queue_tokens = queue_tokens
        self.slice_pairs = max(slice_pairs, max_batch)
        self.background_bound = background_bound
        self.background_delay_s = background_delay_s
        self._small: deque[_Pending] = deque()
        self._large: deque[_Pending] = deque()
        self._small_pairs = 0
        self._pending_pairs = 0
        self._pending_tokens = 0
        self._large_turn = False
        # Work nobody waits for (shadow scoring): scored only while no request waits.
        self._background: deque[_Pending] = deque()
        self._background_pairs = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="levi-scorer")
        self._background_executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="levi-shadow",
            initializer=lower_thread_priority,
            initargs=(background_niceness,),
        )
        self._background_task: asyncio.Task | None = None
        self._background_wakeup: asyncio.Event | None = None
        self.arrivals = ArrivalRate()
        # Freed heap handed back when the scorer goes idle after work (module docstring).
        self.heap_trim_interval_s = heap_trim_interval_s
        self.heap_trim_idle_s = heap_trim_idle_s
        self._release_heap = release_heap
        self._worked = False
        self._last_trim = -math.inf

    @property
    def pending(self) -> int:
        """Pairs waiting to be scored."""
        return self._pending_pairs

    @property
    def pending_tokens(self) -> int:
        """Estimated tokens of text the pending jobs will encode."""
        return self._pending_tokens

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._background_wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="levi-micro-batcher")
        self._background_task = asyncio.create_task(self._background_loop(), name="levi-background")

    async def stop(self) -> None:
        for task in (self._task, self._background_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for queue in (self._small, self._large):
            while queue:
                p = queue.popleft()
                if p.future is not None and not p.future.done():
                    p.future.set_exception(QueueFullError("the service is shutting down"))
        self._pending_pairs = self._pending_tokens = self._small_pairs = 0
        self._background.clear()
        self._background_pairs = 0
        self._executor.shutdown(wait=True)
        self._background_executor.shutdown(wait=True)

    async def run_between_batches(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the scorer thread once the batch in flight (if any) has finished."""
        await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # -- admission ------------------------------------------------------------------------

    def _job(self, requests, future, timeout_s, target, on_done=None, cold_tokens=0) -> _Pending:
        now = time.perf_counter()
        job = _Pending(requests, future, now, now + timeout_s, target, on_done, cold_tokens)
        job.prepared = len(requests) <= self.max_batch or self.prepare is None
        return job

    async def submit(
        self,
        requests: Sequence[ScoreInput],
        timeout_s: float,
        target: Any = None,
        cold_tokens: int = 0,
    ) -> ScoreBatch:
        """Score ``requests`` (in order) within ``timeout_s``, as one job, with ``target``.

        Args:
            cold_tokens: estimated tokens of text the job will encode (admission cost).

        Raises:
            QueueFullError: the queue is full (pairs or tokens).
            DeadlineError: not answered within ``timeout_s``.
        """
        if self._task is None or self._wakeup is None or self._task.done():
            raise QueueFullError("the micro-batcher is not running")
        if self._pending_pairs + len(requests) > self.queue_bound:
            raise QueueFullError(
                f"overloaded: {self._pending_pairs} predictions are queued and this request adds "
                f"{len(requests)}; the bound is {self.queue_bound}"
            )
        # A request alone is admitted whenever no text waits for encoding (however much it
        # brings: it could never be admitted otherwise); behind others, within the bound.
        if (
            self.queue_tokens is not None
            and cold_tokens
            and self._pending_tokens > 0
            and self._pending_tokens + cold_tokens > self.queue_tokens
        ):
            raise QueueFullError(
                f"overloaded: about {self._pending_tokens} tokens of new text are queued for "
                f"encoding and this request adds about {cold_tokens}; the bound is "
                f"{self.queue_tokens} (LEVI_QUEUE_TOKENS)"
            )
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        job = self._job(requests, future, timeout_s, target, cold_tokens=cold_tokens)
        self.arrivals.observe(job.enqueued, len(requests))
        if len(requests) <= self.max_batch:
            self._small.append(job)
            self._small_pairs += len(requests)
        else:
            self._large.append(job)
        self._pending_pairs += len(requests)
        self._pending_tokens += cold_tokens
        self._wakeup.set()
        # The deadline is one timer on the job's future (not ``asyncio.wait_for``, whose
        # extra future and callbacks cost ~3% of a warm prediction); a future the deadline
        # resolved is abandoned, and the collector skips it (``_Pending.abandoned``).
        expiry = loop.call_later(timeout_s, _expire, future, timeout_s)
        try:
            return await future
        finally:
            expiry.cancel()

    def submit_background(
        self,
        requests: Sequence[ScoreInput],
        target: Any,
        timeout_s: float,
        on_done: Callable[[ScoreBatch | None], None],
    ) -> bool:
        """Queue work nobody waits for (shadow scoring): scored with ``target`` only while no
        request waits, ``on_done(batch)`` on the event loop when scored (``on_done(None)``
        when it failed or was not started within ``timeout_s``).

        Returns:
            False (nothing queued) when the background queue holds ``background_bound`` pairs.
        """
        if self._background_task is None or self._background_wakeup is None:
            return False
        if self._background_pairs + len(requests) > self.background_bound:
            return False
        self._background.append(self._job(requests, None, timeout_s, target, on_done))
        self._background_pairs += len(requests)
        self._background_wakeup.set()
        return True

    # -- the collector --------------------------------------------------------------------

    def _forget(self, job: _Pending) -> None:
        """``job`` left the queues (finished, failed or dropped): release its admission."""
        self._pending_pairs -= len(job.requests)
        self._pending_tokens -= job.cold_tokens

    def _drop_dead(self) -> None:
        """Drop large jobs nobody waits for, and those past their deadline (504)."""
        now = time.perf_counter()
        kept: deque[_Pending] = deque()
        for p in self._large:
            if p.abandoned:
                self._forget(p)
                self.metrics.scheduler_dropped.inc(len(p.requests) - p.done)
            elif now > p.deadline:
                self._forget(p)
                p.future.set_exception(DeadlineError("deadline passed before it was scored"))
                self.metrics.scheduler_dropped.inc(len(p.requests) - p.done)
            else:
                kept.append(p)
        self._large = kept

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._once(loop)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop every later request: log, go on
                log.exception("the micro-batcher's collector failed; it goes on")

    async def _once(self, loop: asyncio.AbstractEventLoop) -> None:
        """One turn of the collector: a batch of small jobs, a step of a large job, a step of
        background work, or a wait for work."""
        self._drop_dead()
        if not self._small and not self._large:
            self._wakeup.clear()
            if self._worked and self.heap_trim_interval_s is not None:
                # Trim once no work has come for heap_trim_idle_s (never in the sub-ms gaps
                # between batches under load) and the last trim is that interval ago.
                since = time.monotonic() - self._last_trim
                wait = max(self.heap_trim_idle_s, self.heap_trim_interval_s - since)
                try:
                    async with asyncio.timeout(wait):  # not wait_for: see _run_small
                        await self._wakeup.wait()
                    return  # work came first
                except TimeoutError:
                    pass
                self._worked = False
                self._last_trim = time.monotonic()
                await loop.run_in_executor(self._executor, self._release_heap)
                return
            await self._wakeup.wait()
            return
        self._worked = True
        if self._large and (not self._small or self._large_turn):
            self._large_turn = False
            await self._step_large(loop)
            return
        self._large_turn = bool(self._large)
        await self._run_small(loop)

    async def _run_small(self, loop: asyncio.AbstractEventLoop) -> None:
        """One batch of small jobs (after the adaptive wait for company)."""
        # Give concurrent requests up to max_delay to join a batch that is not full yet,
        # when the arrival rate says one is likely to come in that time (and no large job
        # waits for its turn).
        if (
            not self._large
            and self._small_pairs < self.max_batch
            and self.max_delay_s > 0
            and self.arrivals.expected_within(
                time.perf_counter(), self.max_delay_s, pending=self._small_pairs
            )
            >= 1.0
        ):
            until = self._small[0].enqueued + self.max_delay_s
            while self._small_pairs < self.max_batch:
                left = until - time.perf_counter()
                if left <= 0:
                    break
                self._wakeup.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns instead of
                # raising when stop()'s cancel lands in the turn the wakeup did (the cancel
                # would be lost and stop() would wait forever); it also makes no task.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._wakeup.wait()
        batch = self._take()
        if not batch:
            return
        started = time.perf_counter()
        pairs = [r for p in batch for r in p.requests]
        for p in batch:
            self.metrics.queue_wait.observe(started - p.enqueued)
        self.metrics.batch_size.observe(len(pairs))
        try:
            results = await loop.run_in_executor(
                self._executor, self.score, batch[0].target, pairs, False
            )
        except Exception as e:  # delivered to each waiting request, logged once here
            log.exception("scoring a batch of %d pairs failed", len(pairs))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        start = 0
        for p in batch:
            stop = start + len(p.requests)
            if not p.future.done():
                p.future.set_result(results.slice(start, stop))
            start = stop

    async def _step(self, job: _Pending, loop, *, background: bool) -> ScoreBatch | None:
        """One step of a large job: a prepare step, or the next slice. Its answer when this
        step finished it, else None."""
        executor = self._background_executor if background else self._executor
        if not job.prepared:
            job.prepared, job.state = await loop.run_in_executor(
                executor, self.prepare, job.target, job.requests, job.state
            )
            if not (job.prepared and _nothing_encoded(job.state)):
                return None
            # Everything was cached already (a warm ranking): score now, not a turn later.
        if job.done == 0 and job.future is not None:
            self.metrics.queue_wait.observe(time.perf_counter() - job.enqueued)
        start, stop = job.done, min(len(job.requests), job.done + self.slice_pairs)
        self.metrics.batch_size.observe(stop - start)
        part = await loop.run_in_executor(
            executor, self.score, job.target, job.requests[start:stop], background
        )
        job.parts.append(part)
        job.done = stop
        if stop < len(job.requests):
            return None
        return job.parts[0] if len(job.parts) == 1 else ScoreBatch.concat(job.parts)

    async def _step_large(self, loop: asyncio.AbstractEventLoop) -> None:
        """One step of the oldest large job; then the next large job has its turn."""
        job = self._large[0]
        try:
            result = await self._step(job, loop, background=False)
        except Exception as e:
            log.exception("scoring a job of %d pairs failed", len(job.requests))
            self._remove_large(job)
            if not job.future.done():
                job.future.set_exception(e)
            return
        if result is None:
            if self._large and self._large[0] is job:
                self._large.rotate(-1)  # round robin among large jobs
            return
        self._remove_large(job)
        if not job.future.done():
            job.future.set_result(result)

    def _remove_large(self, job: _Pending) -> None:
        with contextlib.suppress(ValueError):
            self._large.remove(job)
            self._forget(job)

    async def _background_loop(self) -> None:
        """Background work, on its own thread: it runs next to the scorer thread, never in
        its queue, so no request waits behind a shadow call; it
        starts only while no request waits (the scorer has the CPU first), in full batches
        (``max_batch`` pairs, or what the oldest job has waited ``background_delay_s`` for)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not self._background:
                    self._background_wakeup.clear()
                    await self._background_wakeup.wait()
                    continue
                ready_at = self._background[0].enqueued + self.background_delay_s
                busy = self._small or self._large
                if busy or (
                    self._background_pairs < self.max_batch and time.perf_counter() < ready_at
                ):
                    await asyncio.sleep(0.002 if busy else max(0.0, ready_at - time.perf_counter()))
                    continue
                await self._run_background(loop)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background scoring failed; it goes on")

    async def _run_background(self, loop: asyncio.AbstractEventLoop) -> None:
        """One step of background work (nothing else waits): the small jobs at the head of
        the queue, of one target, together in one call (each call is time a request arriving
        meanwhile waits: fewer, fuller calls); or one step of a large job."""
        p = self._background[0]
        if p.done == 0 and not p.parts and time.perf_counter() > p.deadline:
            self._background.popleft()
            self._background_pairs -= len(p.requests)
            p.on_done(None)
            return
        if len(p.requests) <= self.max_batch:
            batch, pairs = [], 0
            while self._background:
                q = self._background[0]
                if len(q.requests) > self.max_batch or q.target is not p.target:
                    break
                if pairs + len(q.requests) > self.max_batch:
                    break
                self._background.popleft()
                self._background_pairs -= len(q.requests)
                if time.perf_counter() > q.deadline:
                    q.on_done(None)
                    continue
                batch.append(q)
                pairs += len(q.requests)
            if not batch:
                return
            flat = [r for q in batch for r in q.requests]
            try:
                results = await loop.run_in_executor(
                    self._background_executor, self.score, p.target, flat, True
                )
            except Exception:
                log.exception("background scoring of %d pairs failed", len(flat))
                for q in batch:
                    q.on_done(None)
                return
            start = 0
            for q in batch:
                q.on_done(results.slice(start, start + len(q.requests)))
                start += len(q.requests)
            return
        try:
            result = await self._step(p, loop, background=True)
        except Exception:
            log.exception("background scoring of %d pairs failed", len(p.requests))
            result = None
            p.done = len(p.requests)
        if p.done < len(p.requests) or (result is None and p.done == 0):
            return
        self._background.popleft()
        self._background_pairs -= len(p.requests)
        p.on_done(result)

    def _take(self) -> list[_Pending]:
        """Pending small jobs whose request is still waiting, of the first one's target, up
        to ``max_batch`` pairs; jobs of other targets keep their place for the next batch."""
        now = time.perf_counter()
        batch: list[_Pending] = []
        skipped: list[_Pending] = []
        pairs = 0
        while self._small:
            p = self._small[0]
            if batch and p.target is not batch[0].target and not p.abandoned:
                skipped.append(self._small.popleft())
                continue
            if batch and pairs + len(p.requests) > self.max_batch:
                break
            self._small.popleft()
            self._small_pairs -= len(p.requests)
            self._forget(p)
            if p.abandoned:  # the request gave up (timeout or disconnect)
                continue
            if now > p.deadline:
                p.future.set_exception(DeadlineError("deadline passed while queued"))
                continue
            batch.append(p)
            pairs += len(p.requests)
        self._small.extendleft(reversed(skipped))
        return batch
