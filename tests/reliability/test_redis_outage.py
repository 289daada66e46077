"""Redis killed (SIGKILL) and restarted while the service is under sustained load.

The server runs with its in-process LRU off, so every request asks Redis for both of its
texts: the outage hits every request, and after the restart (an empty Redis) the texts are
written back and read again, so Redis hits resume.
"""

from __future__ import annotations

import time

import pytest
from support.load import Load, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.e2e, pytest.mark.redis]

# Known ids and a few unknown users: 20 pairs, 8 user texts + 3 item texts, cycled.
BODIES = [{"user_id": str(u), "item_id": str(i)} for u in range(1, 5) for i in (10, 11, 12)] + [
    {"user_id": f"rel-u{k}", "item_id": "11", "user": {"age": 20 + k, "occupation": "artist"}}
    for k in range(8)
]


def _redis(server, result: str) -> float:
    return server.value("levi_activation_cache_lookups_total", tier="redis", result=result)


def test_redis_killed_and_restarted_under_load_fails_no_request(rel_server, killable_redis):
    server = rel_server
    url = f"{server.base}/predict-rating"
    with Load(url, BODIES, threads=3, max_seconds=40) as load:
        # Healthy: Redis answers and hits accumulate.
        hits0 = _redis(server, "hit")
        assert wait_for(lambda: _redis(server, "hit") > hits0 + 20, 10), "no Redis hits"
        assert server.value("levi_activation_cache_redis_up") == 1

        # One Redis, one back-off: the first failed call may be a lookup, a prediction-log
        # write or a feedback read, so the errors of every operation count.
        errors0 = server.total("levi_activation_cache_errors_total")
        during = load.count
        killable_redis.kill()
        down_at = time.monotonic()
        try:
            assert wait_for(lambda: server.value("levi_activation_cache_redis_up") == 0, 5), (
                "the service never noticed the outage"
            )
            time.sleep(1.5)  # sustained load through the outage, past several back-offs
            assert server.total("levi_activation_cache_errors_total") > errors0
            assert (
                server.value("levi_activation_cache_lookups_total", tier="redis", result="bypass")
                > 0
            )
        finally:
            killable_redis.start()
        served_while_down = load.count - during
        outage_s = time.monotonic() - down_at

        # Recovery by itself: up again and hits resume (the empty Redis is refilled first).
        hits_restart = _redis(server, "hit")
        assert wait_for(lambda: server.value("levi_activation_cache_redis_up") == 1, 10)
        assert wait_for(lambda: _redis(server, "hit") > hits_restart + 20, 10), (
            "Redis hits did not resume after the restart"
        )
        time.sleep(0.3)
    assert load.count > 100 and served_while_down > 10, (load.count, served_while_down)
    assert load.failures() == {}, f"failed requests: {load.failures()} of {load.count}"
    assert outage_s < 15
