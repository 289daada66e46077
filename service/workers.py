"""Several uvicorn workers behind one port: shared metrics and a readiness they agree on.

``python -m service --workers N`` (N > 1) creates a fresh directory before uvicorn starts the
workers (:func:`prepare_shared_dir`) and names it in ``PROMETHEUS_MULTIPROC_DIR``, which every
worker inherits. In it:

- prometheus-client's per-process value files (``counter_<pid>.db``, ``gauge_livesum_<pid>.db``,
  ...): a scrape of any worker reads all of them (service/metrics.py, :func:`exposition`);
- one ``worker-<pid>.json`` per worker whose model is loaded and warmed for first traffic
  (:class:`WorkerGroup`): ``/readyz`` answers 200 only when N live workers have one, so once
  it has, no worker answers a prediction with 503 "not ready".

A reload reaches every worker by replacing them (:meth:`WorkerGroup.restart_all`): uvicorn's
supervisor starts a new worker, waits until it takes connections (which it does only once its
model is loaded and warmed for first traffic: service/app.py), then stops an old one.

A worker that exits cleanly removes its readiness file and its ``live*`` gauge files
(:func:`prometheus_client.multiprocess.mark_process_dead`); one that was killed is found on
the next scrape or readiness check (its pid no longer runs) and cleaned the same way. Its
counter and histogram files stay, so counters summed over workers never go down. The parent
removes the directory when uvicorn exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from service.metrics import MULTIPROC_ENV, multiprocess_dir

log = logging.getLogger(__name__)

SUPERVISOR_FILE = "supervisor.pid"  # the pid of `python -m service`, uvicorn's supervisor
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
    (path / SUPERVISOR_FILE).write_text(str(os.getpid()))
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def remove_shared_dir(path: Path | None) -> None:
    """In the parent, after uvicorn has stopped every worker."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        return True
    return True


@dataclass(frozen=True)
class WorkerState:
    pid: int
    model_version: str
    backbone: str


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

    def _state_file(self, pid: int) -> Path:
        return self.path / f"worker-{pid}.json"

    def mark_ready(self, model_version: str, backbone: str) -> None:
        """Announce that this worker serves ``model_version`` (atomic: write, then rename)."""
        tmp = self.path / f".worker-{self.pid}.tmp"
        state = {"pid": self.pid, "model_version": model_version, "backbone": backbone}
        tmp.write_text(json.dumps(state))
        tmp.replace(self._state_file(self.pid))

    def leave(self) -> None:
        """On clean shutdown: this worker is not ready any more, its live gauges go."""
        with contextlib.suppress(FileNotFoundError):
            self._state_file(self.pid).unlink()
        mark_process_dead(self.pid, str(self.path))

    def prune(self) -> list[int]:
        """Clean up after workers that died without :meth:`leave`; their pids.

        Only what a dead worker leaves that must go is looked at (its readiness file, its
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
            log.warning("worker %d is gone: its readiness and live gauges were removed", pid)
        return dead

    def ready_workers(self) -> list[WorkerState]:
        """The live workers that announced a model (after :meth:`prune`)."""
        self.prune()
        out = []
        for file in sorted(self.path.glob("worker-*.json")):
            try:
                state = json.loads(file.read_text())
            except (OSError, ValueError):  # removed or replaced meanwhile
                continue
            out.append(WorkerState(int(state["pid"]), state["model_version"], state["backbone"]))
        return out

    def restart_all(self) -> None:
        """Ask uvicorn's supervisor to replace every worker, one at a time (SIGHUP).

        Each new worker loads ``LEVI_MODEL_DIR`` and takes connections once it can score;
        only then is an old one stopped (it finishes its requests first). A new worker that
        cannot load its model exits, and the supervisor keeps the old one.

        Raises:
            RuntimeError: this worker's parent is not the supervisor that made the directory
                (the server was not started by ``python -m service``).
        """
        try:
            supervisor = int((self.path / SUPERVISOR_FILE).read_text())
        except (OSError, ValueError):
            supervisor = None
        if supervisor is None or supervisor != os.getppid():
            raise RuntimeError(
                "this server was not started by `python -m service --workers N`, so its "
                "workers cannot be replaced from here; restart the server"
            )
        os.kill(supervisor, signal.SIGHUP)

    def not_ready_reason(self) -> str | None:
        """None when all ``expected`` workers are ready, else what is missing."""
        ready = self.ready_workers()
        if len(ready) >= self.expected:
            return None
        return (
            f"{len(ready)} of {self.expected} workers have their model loaded and warmed; "
            "the others are still starting"
        )
