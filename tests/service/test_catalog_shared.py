"""The online catalog across real processes: two replicas sharing Redis see each other's
writes within the stated bound (1 s) and never answer from projections of old fields; a Redis
that lost its data is refilled (by the running replicas, and at a restart from the log); a
Redis that is down during upserts loses nothing and is written when it returns; a ``kill -9``
during bulk upserts loses no answered record."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from support.servers import free_port, start_server
from support.tcp_proxy import TcpProxy
from test_feedback_shared import private_redis

from model.catalog_format import read_records

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

BOUND_S = 1.0  # LEVI_CATALOG_SYNC_S (0.1 s) plus one read, with room for a loaded machine
REFILL_S = 10.0  # a reconnect (backoff up to 0.3 s) and a full sync, on a loaded machine
KOLYA = {"title": "Kolya (1996)"}
TOY = {"title": "Toy Story (1995)"}


def logged(directory: Path) -> list[dict]:
    return [r for p in sorted(directory.glob("catalog-*.jsonl")) for r in read_records(p)[0]]


def predict(base: str, item_id: str, item: dict | None = None) -> dict:
    body = {"user_id": "1", "item_id": item_id} | ({"item": item} if item else {})
    r = httpx.post(f"{base}/predict-rating", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def put(base: str, item_id: str, fields: dict) -> dict:
    r = httpx.put(f"{base}/v1/items/{item_id}", json={"fields": fields}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def within(seconds: float, check, step: float = 0.01) -> float:
    """Seconds until ``check()`` is true; fails after ``seconds``."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < seconds, f"not true within {seconds}s"
        time.sleep(step)
    return time.monotonic() - t0


def records_in_redis(client: redis.Redis, prefix: str, kind: str = "item") -> set[str]:
    return {k.decode() for k in client.hkeys(f"{prefix}:{{tiny-service}}:records:{kind}")}


@pytest.fixture
def prefix(redis_client):
    name = f"levi:test-cat:{uuid.uuid4().hex[:10]}"
    yield name
    keys = list(redis_client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


def env_of(redis_url: str, prefix: str, directory: Path, **extra: str) -> dict:
    return dict(
        REDIS_URL=redis_url,
        LEVI_CATALOG_KEY_PREFIX=prefix,
        LEVI_CATALOG_DIR=str(directory / "catalog"),
        LEVI_FEEDBACK_DIR=str(directory / "feedback"),
        LEVI_CACHE_KEY_PREFIX=f"{prefix}:act",
        LEVI_CORRECTIONS_KEY_PREFIX=f"{prefix}:fb",
        LEVI_ONLINE_KEY_PREFIX=f"{prefix}:online",
        LEVI_REDIS_BACKOFF_S="0.1",
        LEVI_REDIS_BACKOFF_MAX_S="0.3",
        **extra,
    )


def test_two_replicas_see_an_update_within_the_bound(
    artifacts, redis_url, compile_cache, tmp_path, prefix
):
    with (
        start_server(
            artifacts.v1,
            tmp_path / "a.log",
            compile_cache,
            **env_of(redis_url, prefix, tmp_path / "a"),
        ) as a,
        start_server(
            artifacts.v1,
            tmp_path / "b.log",
            compile_cache,
            **env_of(redis_url, prefix, tmp_path / "b"),
        ) as b,
    ):
        assert put(a.base, "new-1", KOLYA)["shared"] == "applied"
        seen = within(BOUND_S, lambda: httpx.get(f"{b.base}/v1/items/new-1").status_code == 200)
        old = predict(b.base, "new-1")  # B has projected the old fields
        assert old["sources"]["item"] == "catalog"
        assert old["rating"] == predict(b.base, "new-1", KOLYA)["rating"]
        new = predict(b.base, "new-1", TOY)["rating"]  # what the new fields answer, on B
        assert new != old["rating"]
        put(a.base, "new-1", TOY)
        updated = within(BOUND_S, lambda: predict(b.base, "new-1")["rating"] == new)
        # after the update B never answers from the old fields' projections again
        for _ in range(5):
            assert predict(b.base, "new-1")["rating"] == new
        httpx.delete(f"{a.base}/v1/items/new-1", timeout=30)
        gone = within(BOUND_S, lambda: httpx.get(f"{b.base}/v1/items/new-1").status_code == 404)
        assert predict(b.base, "new-1")["sources"]["item"] == "unknown"
        print(f"visible on the other replica after {seen:.3f}s, {updated:.3f}s, {gone:.3f}s")


def test_a_redis_that_lost_its_data_is_refilled(artifacts, compile_cache, tmp_path):
    port = free_port()
    prefix = "levi:test-cat"
    # The replicas reach Redis through a proxy, so that the test can look at a new, empty
    # Redis before they do (they refill it within a reconnect, which may come first when
    # this process waits for a busy core).
    proxy = TcpProxy(("127.0.0.1", port))
    url = f"redis://127.0.0.1:{proxy.port}/0"
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(private_redis(tmp_path / "redis-1", port))
        proxy.start()
        stack.callback(proxy.stop)
        a = stack.enter_context(
            start_server(
                artifacts.v1,
                tmp_path / "a.log",
                compile_cache,
                **env_of(url, prefix, tmp_path / "a"),
            )
        )
        b = stack.enter_context(
            start_server(
                artifacts.v1,
                tmp_path / "b.log",
                compile_cache,
                **env_of(url, prefix, tmp_path / "b"),
            )
        )
        put(a.base, "from-a", KOLYA)
        put(b.base, "from-b", TOY)
        client = redis.Redis(port=port)
        assert records_in_redis(client, prefix) == {"from-a", "from-b"}
        proxy.stop()  # the replicas lose Redis here; the test still reaches it directly
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        # back empty (another directory: no append-only file to read)
        stack.enter_context(private_redis(tmp_path / "redis-2", port))
        client = redis.Redis(port=port)
        assert records_in_redis(client, prefix) == set()
        proxy.start()
        within(REFILL_S, lambda: records_in_redis(client, prefix) == {"from-a", "from-b"}, step=0.1)
        # Each replica counts the loss at its own next poll: B may have refilled both records
        # before A looked.
        within(REFILL_S, lambda: a.value("levi_catalog_resyncs_total", reason="lost") >= 1, 0.1)
        # Redis loses it all again while A is down: A's log refills it at the restart
        a.proc.terminate()
        a.proc.wait(timeout=20)
        # At once (one DEL): deleted one by one, B could see the loss half way, write back,
        # and have part of what it wrote deleted after it looked.
        client.delete(*client.scan_iter(match=f"{prefix}:*"))
        again = stack.enter_context(
            start_server(
                artifacts.v1,
                tmp_path / "a2.log",
                compile_cache,
                **env_of(url, prefix, tmp_path / "a"),
            )
        )
        assert "from-a" in records_in_redis(client, prefix)
        assert httpx.get(f"{again.base}/v1/items/from-a").json()["fields"] == KOLYA
        # B wrote back what it holds when it saw Redis lose its data: A learns it from there
        within(BOUND_S, lambda: httpx.get(f"{again.base}/v1/items/from-b").status_code == 200)


def test_redis_down_during_upserts_loses_nothing(
    artifacts, redis_url, redis_client, compile_cache, tmp_path, prefix
):
    pool = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    proxy = TcpProxy((pool.get("host", "127.0.0.1"), int(pool.get("port", 6379))))
    proxy.start()
    db = pool.get("db", 0)
    try:
        with start_server(
            artifacts.v1,
            tmp_path / "a.log",
            compile_cache,
            **env_of(f"redis://127.0.0.1:{proxy.port}/{db}", prefix, tmp_path / "a"),
        ) as a:
            put(a.base, "before", KOLYA)
            proxy.stop()
            answers = [put(a.base, f"during-{i}", TOY) for i in range(3)]
            assert {x["shared"] for x in answers} == {"kept"}
            assert {r["id"] for r in logged(tmp_path / "a" / "catalog")} >= {"during-0", "during-2"}
            assert predict(a.base, "during-1")["sources"]["item"] == "catalog"
            assert a.value("levi_catalog_unshared_records") == 3
            assert records_in_redis(redis_client, prefix) == {"before"}
            proxy.start()
            want = {"before", "during-0", "during-1", "during-2"}
            within(10, lambda: records_in_redis(redis_client, prefix) == want, step=0.1)
            within(5, lambda: a.value("levi_catalog_unshared_records") == 0, step=0.1)
            assert put(a.base, "after", KOLYA)["shared"] == "applied"
    finally:
        proxy.stop()


def test_kill_9_during_bulk_upserts_keeps_every_answered_record(artifacts, compile_cache, tmp_path):
    answered: list[str] = []
    errors: list[str] = []
    stop = threading.Event()
    with start_server(
        artifacts.v1,
        tmp_path / "server.log",
        compile_cache,
        LEVI_CATALOG_DIR=str(tmp_path / "catalog"),
        LEVI_FEEDBACK_DIR=str(tmp_path / "feedback"),
    ) as srv:

        def traffic() -> None:
            k = 0
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    ids = [f"bulk-{k}-{i}" for i in range(200)]
                    body = {"items": [{"item_id": i, "fields": {"title": i}} for i in ids]}
                    try:
                        r = client.post(f"{srv.base}/v1/items", json=body)
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code != 200:
                        errors.append(r.text)
                        return
                    answered.extend(r.json()["ids"])
                    k += 1

        thread = threading.Thread(target=traffic)
        thread.start()
        within(30, lambda: len(answered) >= 2000, step=0.02)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=10)
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors[:1]
    on_disk = {r["id"] for r in logged(tmp_path / "catalog")}
    assert set(answered) <= on_disk, f"{len(set(answered) - on_disk)} answered records lost"
