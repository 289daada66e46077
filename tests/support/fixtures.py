"""Session fixtures shared by tests/service and tests/reliability: the tiny artifacts (three
versions), the XLA compilation cache and Redis.

Redis: ``REDIS_URL`` (default redis://127.0.0.1:6379/0). Unreachable Redis skips the tests
that need it, or fails them with ``LEVI_REQUIRE_REDIS=1``. Every run writes under its own
key prefix and deletes it at the end. A conftest imports the fixtures it uses from here.
"""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

import pytest
import redis

from support.artifacts import Artifacts, _write_tokenizer, export_tiny
from support.tcp_proxy import TcpProxy


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Artifacts:
    from model.artifact import load_artifact

    work = tmp_path_factory.mktemp("tiny-model")
    tokenizer = _write_tokenizer(work / "tokenizer.json")
    root = tmp_path_factory.mktemp("artifacts")
    v1 = export_tiny(root, "tiny-v1", 0, tokenizer)
    v2 = export_tiny(root, "tiny-v2", 1, tokenizer)
    assert (root / "latest").resolve() == v2.resolve()
    v3 = export_tiny(tmp_path_factory.mktemp("artifacts-retrain"), "tiny-v3", 0, tokenizer, 7)
    return Artifacts(root, v1, v2, v3, functools.cache(lambda p: load_artifact(Path(p))))


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
