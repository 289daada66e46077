"""Fixtures of the service tests: one uvicorn server with Redis behind a stoppable proxy
(the shared fixtures come from support/fixtures.py, a plugin of tests/conftest.py)."""

from __future__ import annotations

import pytest
from support.servers import ADMIN_TOKEN, SERVER_MAX_BATCH, proxied_url, start_server


@pytest.fixture(scope="session")
def server(artifacts, redis_url, redis_proxy, key_prefix, compile_cache, tmp_path_factory):
    """One ``python -m service`` (uvicorn) process for the e2e tests, Redis behind the proxy."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with start_server(
        artifacts.v1,
        log,
        compile_cache,
        REDIS_URL=proxied_url(redis_url, redis_proxy),
        LEVI_CACHE_KEY_PREFIX=key_prefix,
        LEVI_ADMIN_TOKEN=ADMIN_TOKEN,
        LEVI_MAX_BATCH=str(SERVER_MAX_BATCH),
        LEVI_REDIS_BACKOFF_S="0.2",
        LEVI_REDIS_BACKOFF_MAX_S="0.5",
    ) as srv:
        yield srv
