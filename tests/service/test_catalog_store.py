"""The catalog's stores without a model: the in-process mirror, the Redis keys and change
stream (real Redis), and two ``Catalog`` objects as two processes."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from model.catalog_format import read_records
from service.cache import RedisTier
from service.catalog import Catalog
from service.catalog_mirror import CatalogMirror, Record
from service.catalog_redis import CatalogRedis
from service.entity_store import FrozenFields, freeze
from service.metrics import Metrics

DATASET = "store-test"


def rec(entity: str, version: int, title: str | None = "t", writer: str = "w1") -> Record:
    deleted = title is None
    fields = FrozenFields({} if deleted else {"title": title})
    return Record("item", entity, fields, version, writer, 0.0, "put", deleted)


def test_the_mirror_keeps_the_newest_record_and_tombstones():
    m = CatalogMirror()
    assert [r.version for r in m.apply([rec("a", 2), rec("a", 1), rec("b", 1)])] == [2, 1]
    assert m.get("item", "a").version == 2
    m.apply([rec("a", 2, "other", writer="w2")])  # same version, a greater writer: newer
    assert m.get("item", "a").fields == {"title": "other"}
    m.apply([rec("a", 3, None)])
    assert m.get("item", "a") is None and m.held("item", "a").deleted
    assert m.apply([rec("a", 2, "late")]) == []  # an older upsert cannot bring it back
    assert m.size("item") == 1


def test_frozen_fields_key_as_the_request_fields_do():
    fields = {"title": "x", "genres": ["a", "b"]}
    assert FrozenFields(fields).frozen == freeze(fields) == freeze(FrozenFields(fields))


@pytest.fixture
def tier(redis_url):
    t = RedisTier(redis_url, Metrics(), ttl_s=60, timeout_s=1.0, backoff_s=0.05, backoff_max_s=1.0)
    yield t
    t.close()


@pytest.fixture
def prefix(redis_client):
    name = f"levi:test-store:{uuid.uuid4().hex[:10]}"
    yield name
    keys = list(redis_client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


def test_redis_keeps_the_newest_and_streams_what_it_applied(tier, prefix):
    store = CatalogRedis(tier, prefix, DATASET)
    start = store.position()
    assert start is not None and start.seq == 0 and start.epoch
    assert store.write([rec("a", 2), rec("b", 1)])
    assert store.write([rec("a", 1, "older")])  # not applied, not streamed
    assert {r.id: r.version for r in store.load_all()} == {"a": 2, "b": 1}
    changes = store.poll(start)
    assert not changes.lost and [r.id for r in changes.records] == ["a", "b"]
    assert changes.position.seq == 1
    assert store.poll(changes.position).records == []
    assert store.write([rec("a", 3, None)])
    (tomb,) = store.poll(changes.position).records
    assert tomb.deleted and {r.id: r.deleted for r in store.load_all()} == {"a": True, "b": False}


def test_a_lost_epoch_or_a_gap_in_the_stream_is_noticed(tier, prefix, redis_client):
    store = CatalogRedis(tier, prefix, DATASET)
    start = store.position()
    store.write([rec("a", 1)])
    redis_client.delete(store.epoch_key)
    assert store.poll(start).lost
    again = store.position()
    store.write([rec("b", 1)])
    store.write([rec("c", 1)])
    unread = redis_client.xrange(store.stream_key, min=f"({again.entry}", count=1)[0][0]
    redis_client.xdel(store.stream_key, unread)  # as trimming does to an entry not read yet
    assert store.poll(again).lost


def catalog(tier, prefix, directory, metrics=None) -> Catalog:
    c = Catalog(
        directory,
        metrics or Metrics(),
        redis_tier=tier,
        key_prefix=prefix,
        sync_s=0.05,
        rotate_bytes=1 << 20,
        rotate_s=3600,
    )
    c.open(DATASET)
    return c


def test_two_catalogs_share_through_redis_and_an_idle_one_does_not_resync(tier, prefix, tmp_path):
    ma = Metrics()
    a = catalog(tier, prefix, tmp_path / "a", ma)
    b = catalog(tier, prefix, tmp_path / "b")
    try:
        time.sleep(0.3)  # idle syncs of an empty catalog
        assert ma.catalog_resyncs.labels(reason="lost")._value.get() == 0
        result = a.upsert("item", [("x", {"title": "one"})], "put")
        assert result.shared == "applied"
        until = time.monotonic() + 1.0
        while b.get("item", "x") is None:
            assert time.monotonic() < until
            time.sleep(0.01)
        assert b.get("item", "x").fields == {"title": "one"}
        records, _ = read_records(next((tmp_path / "a").glob("catalog-*.jsonl")))
        assert [r["id"] for r in records] == ["x"]
    finally:
        a.close()
        b.close()


def test_records_kept_while_redis_is_down_are_written_when_it_answers(
    redis_url, prefix, tmp_path, redis_client
):
    from support.servers import proxied_url
    from support.tcp_proxy import TcpProxy

    pool = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    proxy = TcpProxy((pool.get("host", "127.0.0.1"), int(pool.get("port", 6379))))
    proxy.start()
    tier = RedisTier(
        proxied_url(redis_url, proxy),
        Metrics(),
        ttl_s=60,
        timeout_s=0.1,
        backoff_s=0.05,
        backoff_max_s=1.0,
    )
    metrics = Metrics()
    c = catalog(tier, prefix, tmp_path, metrics)
    try:
        proxy.stop()
        assert c.upsert("item", [("down", {"title": "kept"})], "put").shared == "kept"
        assert c.get("item", "down") is not None  # served here meanwhile
        assert metrics.catalog_unshared._value.get() == 1
        proxy.start()
        store = CatalogRedis(tier, prefix, DATASET)
        until = time.monotonic() + 5
        while not redis_client.hexists(store.records_key["item"], "down"):
            assert time.monotonic() < until, "not written when Redis answered again"
            time.sleep(0.05)
        until = time.monotonic() + 5
        while metrics.catalog_unshared._value.get():
            assert time.monotonic() < until
            time.sleep(0.05)
    finally:
        c.close()
        proxy.stop()
        tier.close()


def test_long_records_go_in_calls_that_fit_the_redis_timeout(tier, prefix, redis_client):
    """150 records of 20,000-character titles: written in chunks of at most 256 KiB (one
    stream entry each), read back whole, in order, over several polls."""
    from service.catalog_redis import WRITE_BYTES

    store = CatalogRedis(tier, prefix, DATASET)
    start = store.position()
    long = [rec(f"long-{k}", k + 1, title=f"{k} " + "x" * 20_000) for k in range(150)]
    assert store.write(long)
    entries = redis_client.xrange(store.stream_key)
    assert len(entries) > 1 and all(len(v[b"r"]) <= WRITE_BYTES for _, v in entries)
    assert {r.id for r in store.load_all()} == {r.id for r in long}
    got, position, polls = [], start, 0
    while True:
        changes = store.poll(position)
        got += changes.records
        position, polls = changes.position, polls + 1
        if not changes.more:
            break
    assert [r.id for r in got] == [r.id for r in long] and polls > 1
