"""Helpers of the reliability suite: servers with a longer start budget, closed-loop load,
a Redis that can be killed and restarted."""

from __future__ import annotations

import contextlib
import itertools
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from support import servers
from support.servers import Server, free_port
from support.tcp_proxy import TcpProxy

ADMIN_TOKEN = "reliability-admin-" + uuid.uuid4().hex
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
START_TIMEOUT_S = 180


@contextlib.contextmanager
def start_server(
    model_dir: Path, log: Path, compile_cache: Path, **env_overrides: str | None
) -> Iterator[Server]:
    """:func:`support.servers.start_server`, quieter (warnings only), with a longer start
    budget."""
    with servers.start_server(
        model_dir,
        log,
        compile_cache,
        timeout=START_TIMEOUT_S,
        **{"LEVI_LOG_LEVEL": "warning", **env_overrides},
    ) as srv:
        yield srv


class Load:
    """Closed-loop load on ``url`` from ``threads`` clients, bounded in count and time.

    Every answer is recorded: its status (or the exception's name, a failed request too)
    and, for 200s, the ``model_version``. ``bodies`` are cycled through.
    """

    def __init__(
        self,
        url: str,
        bodies: list[dict],
        *,
        threads: int = 3,
        max_requests: int = 20_000,
        max_seconds: float = 60.0,
        timeout_s: float = 30.0,
    ):
        self.url = url
        self.bodies = bodies
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.timeout_s = timeout_s
        self.statuses: list[int | str] = []
        self.versions: set[str] = set()
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        until = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set() and time.monotonic() < until:
                n = next(self._counter)
                if n >= self.max_requests:
                    return
                t0 = time.perf_counter()
                try:
                    r = client.post(self.url, json=self.bodies[n % len(self.bodies)])
                except httpx.HTTPError as e:
                    with self._lock:
                        self.statuses.append(type(e).__name__)
                    continue
                with self._lock:
                    self.latencies.append(time.perf_counter() - t0)
                    self.statuses.append(r.status_code)
                    if r.status_code == 200:
                        self.versions.add(r.json()["model_version"])

    @property
    def count(self) -> int:
        return len(self.statuses)

    def failures(self) -> dict[int | str, int]:
        out: dict[int | str, int] = {}
        for s in self.statuses:
            if s != 200:
                out[s] = out.get(s, 0) + 1
        return out

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 5)


def wait_for(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` has passed."""
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


class OwnRedis:
    """A private ``redis-server`` on 127.0.0.1:<free port> (no persistence) we can kill."""

    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.kind = "own redis-server"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        until = time.monotonic() + 10
        while time.monotonic() < until:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise AssertionError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, every connection reset, every key gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        self.kill()


class ProxiedRedis:
    """Fallback outage: the shared Redis behind a stoppable TCP proxy."""

    def __init__(self, proxy: TcpProxy, url: str):
        self.proxy = proxy
        self.url = url
        self.kind = "shared Redis behind the TCP proxy"

    def start(self) -> None:
        self.proxy.start()

    def kill(self) -> None:
        self.proxy.stop()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proxy.stop()
