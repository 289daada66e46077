"""Several uvicorn workers behind one port: shared metrics, one readiness, one reload.

``python -m service --workers N`` (N > 1) creates a fresh directory before uvicorn starts the
workers (:func:`prepare_shared_dir`) and names it in ``PROMETHEUS_MULTIPROC_DIR``, which every
worker inherits. In it:

- prometheus-client's per-process value files (``counter_<pid>.db``, ``gauge_livesum_<pid>.db``,
  ...): a scrape of any worker reads all of them (service/metrics.py, :func:`exposition`);
- ``worker-<pid>.json`` per worker that serves a model: its version and the reload
  generation it has applied (:class:`WorkerGroup`). ``/readyz`` answers 200 only when N live
  workers have one; and a worker takes connections only once it can score (service/app.py),
  so no request meets a worker that would answer 503 "not ready";
- ``reload.json``: the latest rollout change asked for (a generation number and the whole
  plan: champion, challenger, previous paths and traffic, service/versions.py), by a reload,
  a challenger change, a promotion, a rollback or the gate. Every worker watches it and
  applies it in place, serving its old versions until the new ones are warm
  (service/engine.py); the worker that took the admin call answers once every live worker
  has applied it (or refused it, keeping what it served).
- ``serving.json``: the latest plan a worker applied, with the generation of the latest
  change handled (a change every worker refused advances the generation, not the plan). A
  worker started later (uvicorn replaces one that died) loads that plan, not
  ``LEVI_MODEL_DIR``, then applies any newer change like the others; a refused one is not
  tried again.

A worker that exits cleanly removes its state file and its ``live*`` gauge files
(:func:`prometheus_client.multiprocess.mark_process_dead`); one that was killed is found on
the next scrape, readiness check or reload (its pid no longer runs) and cleaned the same way.
Its counter and histogram files stay, so counters summed over workers never go down. The
parent removes the directory when uvicorn exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from service.metrics import MULTIPROC_ENV, multiprocess_dir
from service.processes import pid_alive

log = logging.getLogger(__name__)

RELOAD_FILE = "reload.json"
SERVING_FILE = "serving.json"
EVER_READY_FILE = "ever-ready"  # some worker has served: later failures are not start-up ones
_STATE = re.compile(r"worker-(\d+)\.json")
_LIVE_GAUGES = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def prepare_shared_dir(workers: int) -> Path | None:
    """In the parent, before uvicorn starts: a fresh shared directory for ``workers`` > 1.

    Returns:
        The directory (also exported as ``PROMETHEUS_MULTIPROC_DIR``), or None for one worker,
        which keeps its metrics in process. A ``PROMETHEUS_MULTIPROC_DIR`` set by the caller
        is replaced: values left from an earlier run would be summed into this one's.
    """
    if workers <= 1:
        os.environ.pop(MULTIPROC_ENV, None)
        return None
    path = Path(tempfile.mkdtemp(prefix="levi-workers-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def remove_shared_dir(path: Path | None) -> None:
    """In the parent, after uvicorn has stopped every worker."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def startup_failures(path: Path | None) -> list[str]:
    """In the parent, after uvicorn returns: why the workers failed, when none ever served.

    uvicorn stops the server when a worker fails to start; this tells the caller that the
    server stopped for that (and why) rather than on a signal.
    """
    if path is None or not path.is_dir() or (path / EVER_READY_FILE).exists():
        return []
    return sorted({f.read_text() for f in path.glob("failed-*.txt")})


def _write_json(path: Path, data: dict) -> None:
    """Atomically: readers see the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


@dataclass(frozen=True)
class WorkerState:
    """What a worker announced: the model it serves and the last reload it applied.

    ``error`` is why that reload was refused (the worker kept ``model_version``)."""

    pid: int
    model_version: str
    backbone: str
    generation: int = 0
    error: str | None = None


@dataclass(frozen=True)
class RolloutRequest:
    """A rollout change asked of every worker: ``plan`` is a ``RolloutPlan.to_json()``."""

    generation: int
    plan: dict


class WorkerGroup:
    """This worker's view of the others, through the shared directory.

    Args:
        path: the shared directory (``PROMETHEUS_MULTIPROC_DIR``).
        expected: how many workers the server runs (``LEVI_WORKERS``).
    """

    def __init__(self, path: Path, expected: int):
        self.path = Path(path)
        self.expected = expected
        self.pid = os.getpid()

    @classmethod
    def from_environment(cls, expected: int) -> WorkerGroup | None:
        """The group of this worker, or None when it serves alone (no shared directory)."""
        path = multiprocess_dir()
        if path is None or expected <= 1:
            return None
        if not Path(path).is_dir():
            raise RuntimeError(
                f"{MULTIPROC_ENV}={path} is not a directory; start several workers with "
                "`python -m service --workers N`, which creates it"
            )
        return cls(Path(path), expected)

    # -- this worker ---------------------------------------------------------------------

    def _state_file(self, pid: int) -> Path:
        return self.path / f"worker-{pid}.json"

    def announce(self, state: WorkerState) -> None:
        """Publish what this worker serves (and the last reload it applied)."""
        _write_json(self._state_file(self.pid), state.__dict__)
        (self.path / EVER_READY_FILE).touch()

    def mark_failed(self, reason: str) -> None:
        """Record why this worker could not start (read by :func:`startup_failures`)."""
        (self.path / f"failed-{self.pid}.txt").write_text(reason)

    def leave(self) -> None:
        """On clean shutdown: this worker is not ready any more, its live gauges go."""
        with contextlib.suppress(FileNotFoundError):
            self._state_file(self.pid).unlink()
        mark_process_dead(self.pid, str(self.path))

    # -- the others ----------------------------------------------------------------------

    def prune(self) -> list[int]:
        """Clean up after workers that died without :meth:`leave`; their pids.

        Only what a dead worker leaves that must go is looked at (its state file, its
        ``live*`` gauges); its counters and histograms stay.
        """
        pids = set()
        for file in os.listdir(self.path):
            m = _STATE.fullmatch(file) or _LIVE_GAUGES.fullmatch(file)
            if m:
                pids.add(int(m.group(1)))
        dead = sorted(p for p in pids if p != self.pid and not pid_alive(p))
        for pid in dead:
            with contextlib.suppress(FileNotFoundError):
                self._state_file(pid).unlink()
            mark_process_dead(pid, str(self.path))
            log.warning("worker %d is gone: its state and live gauges were removed", pid)
        return dead

    def ready_workers(self) -> list[WorkerState]:
        """The live workers that announced a model (after :meth:`prune`)."""
        self.prune()
        out = []
        for file in sorted(self.path.glob("worker-*.json")):
            try:
                out.append(WorkerState(**json.loads(file.read_text())))
            except (OSError, ValueError, TypeError):  # removed meanwhile
                continue
        return out

    def not_ready_reason(self) -> str | None:
        """None when all ``expected`` workers are ready, else what is missing."""
        ready = self.ready_workers()
        if len(ready) >= self.expected:
            return None
        return (
            f"{len(ready)} of {self.expected} workers have their model loaded and warmed; "
            "the others are still starting"
        )

    # -- reloads -------------------------------------------------------------------------

    def rollout_request(self) -> RolloutRequest | None:
        """The latest rollout change asked for, if any."""
        try:
            return RolloutRequest(**json.loads((self.path / RELOAD_FILE).read_text()))
        except FileNotFoundError:
            return None

    def serving(self) -> RolloutRequest | None:
        """The latest change a worker applied: what a new worker should load."""
        try:
            return RolloutRequest(**json.loads((self.path / SERVING_FILE).read_text()))
        except FileNotFoundError:
            return None

    def record_serving(self, plan: dict, generation: int) -> None:
        """This worker applied change ``generation`` (``plan``)."""
        _write_json(self.path / SERVING_FILE, {"generation": generation, "plan": plan})

    def record_refused(self, generation: int, serving: dict) -> None:
        """Every live worker refused change ``generation`` and still serves plan ``serving``:
        the change is handled (a worker started later must not try it again, nor count as
        behind)."""
        with open(self.path / ".reload.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            served = self.serving()
            if served is None or served.generation < generation:
                self.record_serving(serving, generation)

    def request_rollout(self, plan: dict) -> int:
        """Ask every worker to apply ``plan``; the request's generation.

        Raises:
            RuntimeError: the previous change has not reached every live worker yet.
        """
        with open(self.path / ".reload.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two admin requests in two workers at once
            current = self.rollout_request()
            generation = current.generation if current else 0
            behind = [w.pid for w in self.ready_workers() if w.generation < generation]
            if behind:
                raise RuntimeError(
                    f"a reload or rollout change is still running in worker(s) {behind}; "
                    "retry when it has finished"
                )
            _write_json(self.path / RELOAD_FILE, {"generation": generation + 1, "plan": plan})
        return generation + 1

    async def wait_applied(self, generation: int, timeout_s: float) -> list[WorkerState]:
        """The live workers' states once all have applied ``generation`` (or the timeout)."""
        until = time.monotonic() + timeout_s
        while True:
            states = self.ready_workers()
            if all(s.generation >= generation for s in states) or time.monotonic() > until:
                return states
            await asyncio.sleep(0.1)
