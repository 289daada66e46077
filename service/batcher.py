"""Dynamic micro-batching: concurrent requests scored together, off the event loop.

A request enqueues its pairs as one job (a single prediction, a batch, a ranking) and awaits
one future; the scorer gets the pairs of several jobs at once and returns arrays
(:class:`service.results.ScoreBatch`), which are sliced back per job. No per-pair futures or
result objects.

Requests enqueue their pairs and await a future. One collector task takes the first pending
pair, gathers more until ``max_batch`` pairs or ``max_delay`` has passed, and runs the scorer
on a single worker thread (the model itself uses every core). While a batch is being scored
the next one fills up, so batches grow with load and stay small when idle.

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
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service.metrics import Metrics
from service.results import ScoreBatch
from service.scorer import ScoreInput

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """More pairs are pending than the queue bound allows; retry later (503)."""


class DeadlineError(TimeoutError):
    """A pair's deadline passed before it was scored (504)."""


@dataclass
class _Pending:
    requests: Sequence[ScoreInput]
    future: asyncio.Future | None  # None: background work nobody waits for
    enqueued: float  # perf_counter
    deadline: float  # perf_counter
    target: Any = None  # what scores it (a version's scorer); None: the score function's default
    on_done: Callable[[ScoreBatch | None], None] | None = field(default=None, repr=False)

    @property
    def abandoned(self) -> bool:
        """Nobody waits for the answer any more (timeout or disconnect)."""
        return self.future is not None and self.future.done()


class ArrivalRate:
    """Exponentially decayed arrival rate (pairs per second) with time constant ``tau_s``.

    ``mass`` is the decayed count of arrivals, ``sum(n_i * exp(-(now - t_i) / tau))``, which
    at a steady rate ``r`` tends to ``r * tau``.
    """

    def __init__(self, tau_s: float = 0.2):
        self.tau_s = tau_s
        self._mass = 0.0
        self._last = -math.inf

    def observe(self, now: float, n: int = 1) -> None:
        """Record ``n`` pairs arriving at ``now`` (seconds, monotonic)."""
        self._mass = self._decayed(now) + n
        self._last = now

    def rate(self, now: float) -> float:
        """Pairs per second around ``now``."""
        return self._decayed(now) / self.tau_s

    def expected_within(self, now: float, seconds: float, pending: int = 0) -> float:
        """Pairs expected to arrive in the next ``seconds`` at the rate of recent arrivals.

        Args:
            pending: pairs already waiting; their own arrival is taken out of the rate, so a
                lone request does not count as evidence that another is coming.
        """
        return max(0.0, self._decayed(now) - pending) / self.tau_s * seconds

    def _decayed(self, now: float) -> float:
        if self._mass == 0.0:
            return 0.0
        return self._mass * math.exp(-max(0.0, now - self._last) / self.tau_s)


class MicroBatcher:
    """Gathers pairs from concurrent requests into batches for ``score``.

    Args:
        score: ``score(target, pairs, background)`` scores the pairs of one or more jobs of
            one target (called on the worker thread; ``target`` is what :meth:`submit` was
            given, None for the default, which is read again for every batch, so a model swap
            takes effect on the next batch).
        max_batch: most pairs per call, except that a job larger than it is scored alone.
        max_delay_s: longest wait for more pairs once one is pending.
        queue_bound: most pending pairs; beyond it :meth:`submit` raises QueueFullError.
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
    ):
        self.score = score
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.queue_bound = queue_bound
        self.background_bound = background_bound
        self._queue: deque[_Pending] = deque()
        self._pending_pairs = 0
        # Work nobody waits for (shadow scoring): scored only while no request waits.
        self._background: deque[_Pending] = deque()
        self._background_pairs = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="levi-scorer")
        self.arrivals = ArrivalRate()

    @property
    def pending(self) -> int:
        """Pairs waiting to be scored."""
        return self._pending_pairs

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="levi-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            p = self._queue.popleft()
            if p.future is not None and not p.future.done():
                p.future.set_exception(QueueFullError("the service is shutting down"))
        self._pending_pairs = 0
        self._background.clear()
        self._background_pairs = 0
        self._executor.shutdown(wait=True)

    async def run_between_batches(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the scorer thread once the batch in flight (if any) has finished."""
        await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def submit(
        self, requests: Sequence[ScoreInput], timeout_s: float, target: Any = None
    ) -> ScoreBatch:
        """Score ``requests`` (in order) within ``timeout_s``, as one job, with ``target``.

        Raises:
            QueueFullError: the queue is full.
            DeadlineError: not answered within ``timeout_s``.
        """
        if self._task is None or self._wakeup is None:
            raise QueueFullError("the micro-batcher is not running")
        if self._pending_pairs + len(requests) > self.queue_bound:
            raise QueueFullError(
                f"{self._pending_pairs} predictions are queued and this request adds "
                f"{len(requests)}; the bound is {self.queue_bound}"
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        self.arrivals.observe(now, len(requests))
        future = loop.create_future()
        self._queue.append(_Pending(requests, future, now, now + timeout_s, target))
        self._pending_pairs += len(requests)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise DeadlineError(f"not scored within the {timeout_s:g}s request timeout") from None

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
        if self._task is None or self._wakeup is None:
            return False
        if self._background_pairs + len(requests) > self.background_bound:
            return False
        now = time.perf_counter()
        self._background.append(_Pending(requests, None, now, now + timeout_s, target, on_done))
        self._background_pairs += len(requests)
        self._wakeup.set()
        return True

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._background:
                    await self._run_background(loop)
                    continue
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Give concurrent requests up to max_delay to join a batch that is not full yet,
            # when the arrival rate says one is likely to come in that time.
            if (
                self._pending_pairs < self.max_batch
                and self.max_delay_s > 0
                and self.arrivals.expected_within(
                    time.perf_counter(), self.max_delay_s, pending=self._pending_pairs
                )
                >= 1.0
            ):
                until = self._queue[0].enqueued + self.max_delay_s
                while self._pending_pairs < self.max_batch:
                    left = until - time.perf_counter()
                    if left <= 0:
                        break
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), left)
            batch = self._take()
            if not batch:
                continue
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
                continue
            start = 0
            for p in batch:
                stop = start + len(p.requests)
                if not p.future.done():
                    p.future.set_result(results.slice(start, stop))
                start = stop

    async def _run_background(self, loop: asyncio.AbstractEventLoop) -> None:
        """Score the oldest background job (nothing else waits)."""
        p = self._background.popleft()
        self._background_pairs -= len(p.requests)
        if time.perf_counter() > p.deadline:
            p.on_done(None)
            return
        try:
            result = await loop.run_in_executor(
                self._executor, self.score, p.target, p.requests, True
            )
        except Exception:
            log.exception("background scoring of %d pairs failed", len(p.requests))
            result = None
        p.on_done(result)

    def _take(self) -> list[_Pending]:
        """Pending jobs whose request is still waiting, of the first one's target, up to
        ``max_batch`` pairs (one job larger than that is taken alone); jobs of other targets
        keep their place for the next batch."""
        now = time.perf_counter()
        batch: list[_Pending] = []
        skipped: list[_Pending] = []
        pairs = 0
        while self._queue:
            p = self._queue[0]
            if batch and p.target is not batch[0].target and not p.abandoned:
                skipped.append(self._queue.popleft())
                continue
            if batch and pairs + len(p.requests) > self.max_batch:
                break
            self._queue.popleft()
            self._pending_pairs -= len(p.requests)
            if p.abandoned:  # the request gave up (timeout or disconnect)
                continue
            if now > p.deadline:
                p.future.set_exception(DeadlineError("deadline passed while queued"))
                continue
            batch.append(p)
            pairs += len(p.requests)
        self._queue.extendleft(reversed(skipped))
        return batch
