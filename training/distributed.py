"""Several training processes as one run: JAX's multi-controller runtime (``jax.distributed``).

    python -m training --config spec.toml --coordinator HOST:PORT --num-processes N \\
        --process-id I                                   # on each of N processes / hosts

As t5x, maxtext and big_vision run: every process runs the same program; process 0 also
hosts the coordination service; ``jax.devices()`` lists every process's devices, and the
training mesh spans them all (``training.train.make_mesh``). Without flags the settings come
from the environment: ``LEVI_COORDINATOR`` (or ``JAX_COORDINATOR_ADDRESS``),
``LEVI_NUM_PROCESSES``, ``LEVI_PROCESS_ID`` (or ``JOB_COMPLETION_INDEX``, which a Kubernetes
Indexed Job sets in each pod); under Slurm or Open MPI (``srun``, ``mpirun``) JAX's own
cluster detection fills them in. One process (the default) initialises nothing: today's run.

Failure: a collective that loses a peer raises (the CPU collectives, gloo, see the
connection close), and a watchdog thread (:func:`watch_peers`) notices a peer that stopped
bumping its counter in the coordination service; either way the survivors print which
process stopped and exit with :data:`EXIT_PEER_LOST` within about ``heartbeat_timeout``
seconds, never hanging.

Host-side exchange between processes (:func:`allgather_rows`, :func:`allgather_strings`) runs
as a device collective over byte views, so any dtype crosses exactly.
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

EXIT_PEER_LOST = 75  # EX_TEMPFAIL: rerun the job; checkpoints make it resume


class PeerLost(RuntimeError):
    """Another process of the run stopped (died, was killed or lost its network)."""


@dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run.

    Attributes:
        coordinator: ``HOST:PORT`` of process 0's coordination service.
        num_processes: processes in the run (1: no multi-process runtime).
        process_id: this process, ``0 <= process_id < num_processes``.
        autodetect: let JAX read the cluster's environment (Slurm, Open MPI).
        initialization_timeout: seconds to wait for every process to connect.
        heartbeat_timeout: seconds without news from a process after which it counts as dead
            (the watchdog's; JAX's own heartbeat gets twice as long).
    """

    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0
    autodetect: bool = False
    initialization_timeout: int = 300
    heartbeat_timeout: int = 30

    def __post_init__(self) -> None:
        if self.num_processes < 1 or not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"process id {self.process_id} of {self.num_processes} processes: expected "
                "0 <= --process-id < --num-processes"
            )
        if self.num_processes > 1 and not self.coordinator:
            raise ValueError(
                f"{self.num_processes} processes need a coordinator: pass --coordinator HOST:PORT "
                "(process 0's address) or set LEVI_COORDINATOR"
            )

    @property
    def enabled(self) -> bool:
        return self.num_processes > 1 or self.autodetect

    @classmethod
    def resolve(
        cls,
        coordinator: str | None = None,
        num_processes: int | None = None,
        process_id: int | None = None,
        environ: Mapping[str, str] | None = None,
        **timeouts: int,
    ) -> DistributedConfig:
        """Flags first, then the environment (see the module docstring).

        Raises:
            ValueError: an inconsistent combination (the message names the flag).
        """
        env = os.environ if environ is None else environ
        coordinator = (
            coordinator or env.get("LEVI_COORDINATOR") or env.get("JAX_COORDINATOR_ADDRESS")
        )
        if num_processes is None and env.get("LEVI_NUM_PROCESSES"):
            num_processes = int(env["LEVI_NUM_PROCESSES"])
        if process_id is None:
            for name in ("LEVI_PROCESS_ID", "JOB_COMPLETION_INDEX"):
                if env.get(name):
                    process_id = int(env[name])
                    break
        # srun / mpirun with several tasks: JAX's cluster detection knows the rest
        cluster = max(int(env.get(k, "1")) for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")) > 1
        if num_processes is None and cluster:
            return cls(autodetect=True, **timeouts)
        return cls(coordinator, num_processes or 1, process_id or 0, **timeouts)


def initialize(cfg: DistributedConfig) -> None:
    """Join the run (before any other JAX call); nothing for a single process."""
    if not cfg.enabled:
        return
    import jax

    if cfg.autodetect:
        jax.distributed.initialize(
            initialization_timeout=cfg.initialization_timeout,
            heartbeat_timeout_seconds=2 * cfg.heartbeat_timeout,  # the watchdog speaks first
        )
    else:
        jax.distributed.initialize(
            cfg.coordinator,
            num_processes=cfg.num_processes,
            process_id=cfg.process_id,
            initialization_timeout=cfg.initialization_timeout,
            heartbeat_timeout_seconds=2 * cfg.heartbeat_timeout,
        )
    watch_peers(cfg.heartbeat_timeout)


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count() -> int:
    import jax

    return jax.process_count()


def is_primary() -> bool:
    """Process 0: the one that writes the report, the artifact and the logs."""
    return process_index() == 0


def _client():
    from jax._src.distributed import global_state

    return global_state.client


_barriers = itertools.count()


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Wait until every process reaches this barrier (nothing with one process).

    Raises:
        PeerLost: not every process arrived within ``timeout_s``.
    """
    if process_count() == 1:
        return
    key = f"levi:{name}:{next(_barriers)}"
    try:
        _client().wait_at_barrier(key, int(timeout_s * 1000))
    except Exception as e:  # the runtime's own error types are not public
        raise PeerLost(f"barrier {name!r}: not every process arrived ({e})") from e


def allgather_rows(array: np.ndarray) -> np.ndarray:
    """Every process's ``array`` (any length on axis 0, the same trailing shape and dtype),
    concatenated in process order; ``array`` itself with one process."""
    if process_count() == 1:
        return array
    from jax.experimental import multihost_utils

    array = np.ascontiguousarray(array)
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.itemsize
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(array))))  # [P]
    raw = array.reshape(len(array), -1).view(np.uint8).reshape(len(array), row_bytes)
    padded = np.zeros((int(lengths.max()), row_bytes), np.uint8)
    padded[: len(raw)] = raw
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # [P, max, row_bytes]
    rows = np.concatenate([gathered[p, :n] for p, n in enumerate(lengths)])
    return rows.reshape(-1).view(array.dtype).reshape(-1, *array.shape[1:])


def allgather_strings(values: Sequence[str]) -> list[str]:
    """Every process's strings, concatenated in process order."""
    if process_count() == 1:
        return list(values)
    encoded = [v.encode("utf-8") for v in values]
    lengths = np.array([len(e) for e in encoded], np.int32)
    width = int(allgather_rows(np.array([lengths.max(initial=0)], np.int32)).max())
    matrix = np.zeros((len(encoded), max(1, width)), np.uint8)
    for k, e in enumerate(encoded):
        matrix[k, : len(e)] = np.frombuffer(e, np.uint8)
    all_lengths = allgather_rows(lengths)
    all_matrix = allgather_rows(matrix)
    return [bytes(row[:n]).decode("utf-8") for row, n in zip(all_matrix, all_lengths, strict=True)]


_finished = threading.Event()  # this process's work is done: the watchdog stands down


def stand_down() -> None:
    """Stop watching peers: this process is leaving normally. Called before the runtime's
    shutdown (which stops process 0's coordination service), so that the watchdog does not
    take the service going away at the end for a lost peer."""
    _finished.set()


def watch_peers(timeout: float, interval: float = 1.0) -> None:
    """Start a daemon thread that ends this process, with a message, when a peer is gone.

    Every process bumps a counter of its own in the coordination service's key-value store
    each ``interval`` seconds; a peer whose counter has not moved for ``timeout`` seconds (a
    dead or frozen process), or a coordination service that no longer answers (process 0 is
    gone), stops this process with :data:`EXIT_PEER_LOST`. JAX's own heartbeat (twice as long,
    see :func:`initialize`) remains the backstop.
    """
    import jax

    n, me = jax.process_count(), jax.process_index()
    client = _client()

    def watch() -> None:
        beats, seen = 0, {p: (None, time.monotonic()) for p in range(n) if p != me}
        while not _finished.is_set():
            beats += 1
            try:
                client.key_value_set(f"levi:alive:{me}", str(beats), allow_overwrite=True)
                values = {p: _try_get(client, f"levi:alive:{p}") for p in seen}
            except Exception as e:  # the coordination service (process 0) is gone
                if _finished.is_set():  # it went away because the run is over
                    return
                _peer_lost(me, n, f"the coordination service (process 0) stopped answering ({e})")
            now = time.monotonic()
            for p, value in values.items():
                if value != seen[p][0]:
                    seen[p] = (value, now)
                elif now - seen[p][1] > timeout and not _finished.is_set():
                    _peer_lost(me, n, f"process {p} has not been heard from for {timeout:g} s")
            time.sleep(interval)

    atexit.register(stand_down)  # runs before jax's own shutdown (registered earlier; LIFO)
    threading.Thread(target=watch, name="levi-peer-watch", daemon=True).start()


def _try_get(client, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as e:
        if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
            return None  # the peer has not beaten yet
        raise


def _peer_lost(me: int, n: int, why: str) -> None:
    print(
        f"error: process {me} of {n}: {why}; another process stopped, stopping this process too "
        f"(exit {EXIT_PEER_LOST}). Rerun every process: finished training runs resume from "
        "their checkpoints.",
        file=sys.stderr,
        flush=True,
    )
    os._exit(EXIT_PEER_LOST)  # no shutdown barrier: it would wait for the dead peer


def exit_peer_lost(error: BaseException) -> None:
    """End this process after a collective failed because a peer is gone (see module)."""
    first = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    _peer_lost(process_index(), process_count(), f"a collective failed ({first})")


def run_or_exit(main: Callable[[], int]) -> int:
    """Run ``main`` in a multi-process run; any failure ends this process at once.

    A failed collective (a peer is gone) exits with :data:`EXIT_PEER_LOST`; any other error
    prints its traceback and exits 1; a non-zero code from ``main`` (an error it reported)
    exits with that code. Every way without the runtime's shutdown, whose
    barrier would wait for peers that will never arrive; the others then stop too (their
    collectives fail, or the watchdog sees this process gone).
    """
    try:
        code = main()
    except PeerLost as e:
        exit_peer_lost(e)
    except Exception as e:
        if _is_collective_failure(e):
            exit_peer_lost(e)
        traceback.print_exc()
        print(
            f"error: process {process_index()} of {process_count()} failed; the other "
            "processes stop too",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)
    if code == 0:
        stand_down()
    else:  # an error this process reported (a bad spec, bad data): same rule
        print(
            f"error: process {process_index()} of {process_count()} stopped with exit {code}; "
            "the other processes stop too",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(code)
    return code


def _is_collective_failure(error: BaseException) -> bool:
    text = str(error)
    return any(
        marker in text
        for marker in ("Gloo", "gloo", "Connection closed by peer", "UNAVAILABLE", "coordination")
    )
