"""``python -m service`` subprocesses on free ports, in-process clients of the real app, and
Redis reached through a stoppable proxy."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from support.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-" + uuid.uuid4().hex
SERVER_MAX_BATCH = 4


def proxied_url(redis_url: str, proxy: TcpProxy) -> str:
    db = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("db", 0)
    return f"redis://127.0.0.1:{proxy.port}/{db}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"server not ready after {timeout}s:\n{log.read_text()[-4000:]}")


@dataclass
class Server:
    base: str
    proc: subprocess.Popen
    log: Path

    def metrics(self) -> dict[tuple[str, tuple], float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (all its series)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.metrics().items() if n == name and want <= set(ls))


@contextlib.contextmanager
def start_server(
    model_dir: Path, log: Path, compile_cache: Path, timeout: float = 240, **env: str | None
) -> Iterator[Server]:
    """A ``python -m service`` subprocess on a free 127.0.0.1 port, ready; stopped on exit.

    ``env`` holds ``LEVI_*`` / ``REDIS_URL`` variables; a value of None removes one. Redis and
    the admin token are off unless given.
    """
    with launch_server(model_dir, log, compile_cache, **env) as srv:
        wait_ready(srv.base, srv.proc, log, timeout=timeout)
        yield srv


@contextlib.contextmanager
def launch_server(
    model_dir: Path, log: Path, compile_cache: Path, **env: str | None
) -> Iterator[Server]:
    """:func:`start_server` without waiting for ready (the process may still be loading)."""
    port = free_port()
    full = dict(
        os.environ,
        LEVI_MODEL_DIR=str(model_dir),
        LEVI_HOST="127.0.0.1",
        LEVI_PORT=str(port),
        LEVI_COMPILATION_CACHE_DIR=str(compile_cache),
        PYTHONPATH=str(ROOT),
    )
    for k in ("REDIS_URL", "LEVI_REDIS_URL", "LEVI_ADMIN_TOKEN"):
        full.pop(k, None)
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = str(v)
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=full,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        yield Server(base, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def loaded_client(model_dir: Path, compile_cache: Path, **settings: Any) -> Iterator[Any]:
    """A ``fastapi.testclient.TestClient`` on the real app, returned once the model is warm.

    Redis is off unless ``redis_url`` is among ``settings``.
    """
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    config = Settings(
        **{
            "model_dir": model_dir,
            "redis_url": None,
            "compilation_cache_dir": compile_cache,
            **settings,
        }
    )
    with TestClient(create_app(config)) as c:
        until = time.monotonic() + 240
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < until, c.get("/readyz").text
            time.sleep(0.05)
        yield c
