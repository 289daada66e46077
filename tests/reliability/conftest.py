"""Fixtures of the reliability suite: the service's real tiny artifacts, real servers, outages.

The artifact fixtures (``artifacts``, ``compile_cache``, the Redis ones) are those of
tests/service: support/fixtures.py, a plugin of tests/conftest.py.
Every server is a real ``python -m service`` (uvicorn) subprocess on 127.0.0.1 with a bounded
start-up time.

Redis outages use a private ``redis-server`` on a free port (killed with SIGKILL and started
again on the same port); without the binary they fall back to the TCP proxy in front of the
shared Redis at ``REDIS_URL`` (stopped and started), under this run's own key prefix.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid

import httpx
import pytest
from support.load import ADMIN_TOKEN, OwnRedis, ProxiedRedis, start_server
from support.servers import proxied_url
from support.tcp_proxy import TcpProxy


@pytest.fixture(scope="session")
def killable_redis(tmp_path_factory, request):
    """A Redis that tests may kill and restart (never the shared one itself)."""
    binary = shutil.which("redis-server")
    if binary:
        own = OwnRedis(binary, tmp_path_factory.mktemp("redis"))
        own.start()
        yield own
        own.close()
        return
    url = request.getfixturevalue("redis_url")
    proxy = TcpProxy(("127.0.0.1", int(httpx.URL(url).port or 6379)))
    proxy.start()
    fallback = ProxiedRedis(proxy, proxied_url(url, proxy))
    yield fallback
    fallback.close()


@pytest.fixture(scope="session")
def rel_server(artifacts, killable_redis, compile_cache, tmp_path_factory):
    """The server of the outage, reload, fuzzing and admin tests.

    Its in-process LRU is off (``LEVI_LOCAL_CACHE_SIZE=0``) and its per-entity projection
    cache holds one entity per side (``LEVI_PROJECTION_CACHE_SIZE=1``), so cycling requests
    keep reaching Redis and a Redis outage is visible on every request; back-off is short so
    recovery is quick.
    """
    prefix = f"levi:rel:{uuid.uuid4().hex[:12]}"
    log = tmp_path_factory.mktemp("rel-server") / "server.log"
    with start_server(
        artifacts.v1,
        log,
        compile_cache,
        REDIS_URL=killable_redis.url,
        LEVI_CACHE_KEY_PREFIX=prefix,
        LEVI_LOCAL_CACHE_SIZE=0,
        LEVI_PROJECTION_CACHE_SIZE=1,
        LEVI_ADMIN_TOKEN=ADMIN_TOKEN,
        LEVI_MAX_BATCH=8,
        LEVI_REDIS_TIMEOUT_S=0.2,
        LEVI_REDIS_BACKOFF_S=0.1,
        LEVI_REDIS_BACKOFF_MAX_S=0.4,
    ) as server:
        yield server
    if isinstance(killable_redis, ProxiedRedis):  # our keys in the shared Redis
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(killable_redis.url)
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
