"""Registered entities' projections, computed off the request path.

When a record is registered (here or on another replica), its text is encoded and its
first-layer projections computed (``Scorer.warm``) for every served version, so that its
first ``/rank`` costs what a known entity's does. The work waits in a bounded queue (one
entry per entity: a newer record replaces a queued older one; beyond ``queue_bound`` entities
the newest are not queued and are computed on first use, counted as dropped) and runs on its
own thread, in steps of about ``step_tokens`` tokens of text, started only while no request
waits for the scorer: a request arriving meanwhile waits behind one step at most, as behind
one step of a large request (``service/batcher.py``).

Factored text views only: with a ``pair`` view the text depends on the user as well, so
nothing can be computed per entity ahead of a request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from service.catalog_mirror import Record
from service.cold_tokens import key_tokens
from service.metrics import Metrics
from service.scorer import Scorer

log = logging.getLogger(__name__)

BUSY_PAUSE_S = 0.002  # how often a waiting step looks again whether requests still wait
NOT_SERVING_PAUSE_S = 0.05  # how often it looks whether a model is served yet


class CatalogWarmer:
    """The queue of entities to project and the thread that projects them.

    Args:
        scorers: the scorers of the served versions (read at every step, so a reload or a
            new challenger is warmed too).
        busy: whether a request waits for the scorer (then no step starts).
        queue_bound: most entities waiting.
        step_tokens: about how many tokens of text one step encodes (at least one entity).
    """

    def __init__(
        self,
        scorers: Callable[[], Sequence[Scorer]],
        busy: Callable[[], bool],
        metrics: Metrics,
        *,
        queue_bound: int,
        step_tokens: int,
    ):
        self.scorers = scorers
        self.busy = busy
        self.metrics = metrics
        self.queue_bound = queue_bound
        self.step_tokens = step_tokens
        self._queue: OrderedDict[tuple[str, str], Record] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._working = False

    @property
    def pending(self) -> int:
        """Entities waiting to be projected (the one being projected included)."""
        return len(self._queue) + int(self._working)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="levi-catalog-warm", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def enqueue(self, records: Iterable[Record]) -> int:
        """Queue registered records for projection; returns how many were queued."""
        queued = dropped = 0
        with self._cond:
            for r in records:
                if r.deleted:
                    self._queue.pop((r.kind, r.id), None)
                    continue
                key = (r.kind, r.id)
                if key not in self._queue and len(self._queue) >= self.queue_bound:
                    dropped += 1
                    continue
                self._queue[key] = r
                queued += 1
            if queued:
                self._cond.notify()
        if dropped:
            self.metrics.catalog_encodes.labels(result="dropped").inc(dropped)
        self.metrics.catalog_pending_encodes.set(self.pending)
        return queued

    def _take(self) -> list[Record]:
        """The next step's records (under the condition's lock)."""
        out, spent = [], 0
        while self._queue:
            key, record = next(iter(self._queue.items()))
            cost = key_tokens((record.id, record.fields.frozen))
            if out and spent + cost > self.step_tokens:
                break
            del self._queue[key]
            out.append(record)
            spent += cost
        return out

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
            scorers = self.scorers()
            if not scorers or self.busy():  # nothing served yet, or requests wait
                time.sleep(BUSY_PAUSE_S if scorers else NOT_SERVING_PAUSE_S)
                continue
            with self._cond:
                step = self._take()
                self._working = bool(step)
            try:
                self._project(step, scorers)
                self.metrics.catalog_encodes.labels(result="done").inc(len(step))
            except Exception:  # a bug here must not stop later steps: log, go on
                log.exception("projecting %d registered entities failed", len(step))
                self.metrics.catalog_encodes.labels(result="failed").inc(len(step))
            finally:
                self._working = False
                self.metrics.catalog_pending_encodes.set(self.pending)

    def _project(self, step: list[Record], scorers: Sequence[Scorer]) -> None:
        by_kind: dict[str, list[tuple[str, tuple]]] = {}
        for r in step:
            by_kind.setdefault(r.kind, []).append((r.id, r.fields.frozen))
        for scorer in scorers:
            for kind, keys in by_kind.items():
                scorer.warm(kind, keys)
