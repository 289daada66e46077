"""Fixtures of the service tests: tiny artifacts (two versions), Redis, a uvicorn server.

Redis: ``REDIS_URL`` (default redis://127.0.0.1:6379/0). Unreachable Redis skips the tests
that need it, or fails them with ``LEVI_REQUIRE_REDIS=1``. Every run writes under its own
key prefix and deletes it at the end.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from standin import load_standin, write_standin
from tcp_proxy import TcpProxy

from model.packaged import MINILM_WHEEL, extract_prefix

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-" + uuid.uuid4().hex
SERVER_MAX_BATCH = 4


@dataclass(frozen=True)
class Artifacts:
    v1: Path
    v2: Path
    loader: Any  # path -> Artifact
    launcher: str  # python -c source that serves LEVI_MODEL_DIR on LEVI_PORT


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Artifacts:
    root = tmp_path_factory.mktemp("artifacts")
    tokenizer = extract_prefix(MINILM_WHEEL) / "tokenizer.json"
    v1 = write_standin(root, "tiny-v1", 0, tokenizer)
    v2 = write_standin(root, "tiny-v2", 1, tokenizer)
    launcher = (
        "import uvicorn; from service.app import create_app; from service.settings import "
        "Settings; from standin import load_standin; s = Settings(); "
        "uvicorn.run(create_app(s, loader=load_standin), host=s.host, port=s.port, "
        "log_level='warning')"
    )
    return Artifacts(v1, v2, functools.cache(load_standin), launcher)


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xla-cache")


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping()
    except redis.RedisError as e:
        message = f"Redis at {url} is unreachable ({e}); start it or set REDIS_URL"
        if os.environ.get("LEVI_REQUIRE_REDIS") == "1":
            pytest.fail(message + " (LEVI_REQUIRE_REDIS=1)")
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def redis_client(redis_url) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(scope="session")
def key_prefix(redis_client):
    prefix = f"levi:test:{uuid.uuid4().hex[:12]}"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture(scope="session")
def redis_proxy(redis_url):
    """A stoppable TCP path to the real Redis."""
    pool = redis.Redis.from_url(redis_url).connection_pool
    kwargs = pool.connection_kwargs
    proxy = TcpProxy((kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379))))
    proxy.start()
    yield proxy
    proxy.stop()


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


@pytest.fixture(scope="session")
def server(artifacts, redis_url, redis_proxy, key_prefix, compile_cache, tmp_path_factory):
    """One uvicorn process for the e2e tests, its Redis behind the stoppable proxy."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = dict(
        os.environ,
        LEVI_MODEL_DIR=str(artifacts.v1),
        LEVI_HOST="127.0.0.1",
        LEVI_PORT=str(port),
        REDIS_URL=proxied_url(redis_url, redis_proxy),
        LEVI_CACHE_KEY_PREFIX=key_prefix,
        LEVI_ADMIN_TOKEN=ADMIN_TOKEN,
        LEVI_MAX_BATCH=str(SERVER_MAX_BATCH),
        LEVI_REDIS_BACKOFF_S="0.2",
        LEVI_REDIS_BACKOFF_MAX_S="0.5",
        LEVI_COMPILATION_CACHE_DIR=str(compile_cache),
        PYTHONPATH=os.pathsep.join([str(ROOT), str(Path(__file__).parent)]),
    )
    env.pop("LEVI_REDIS_URL", None)
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", artifacts.launcher], cwd=ROOT, env=env, stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log)
        yield Server(base, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def direct_scores(art, pairs: list[dict]) -> list[dict]:
    """What the artifact itself answers, one pair and one text at a time (no service code).

    Known ids take their table records, request fields override; unknown ids start from an
    empty record (missing age -1, no genres).
    """
    users = {str(r["user_id"]): r for r in art.users.to_dict("records")}
    items = {str(r["item_id"]): r for r in art.items.to_dict("records")}
    out = []
    for p in pairs:
        user = dict(users.get(p["user_id"], {"user_id": p["user_id"], "age": -1}))
        user.update({k: v for k, v in (p.get("user") or {}).items() if v is not None})
        item = dict(items.get(p["item_id"], {"item_id": p["item_id"], "genres": ()}))
        item.update({k: v for k, v in (p.get("item") or {}).items() if v is not None})
        acts = []
        for text in art.views.render(user, item):
            ids, mask = art.tokenizer.pad(art.tokenizer.encode([text]))
            acts.append(np.asarray(art.encode(ids, mask))[0])
        feats = art.features.encode([user], [item])
        adapters, rating = art.score(feats["ids"], feats["multi_hot"], np.stack(acts)[None])
        out.append(
            {
                "rating": float(np.asarray(rating)[0]),
                "adapters": [float(a) for a in np.asarray(adapters)[0]],
                "ood_score": float(np.asarray(art.ood_score(np.asarray(adapters)))[0]),
            }
        )
    return out
