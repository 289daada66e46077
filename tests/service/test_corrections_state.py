"""The corrections' shared state against a real Redis: exactly-once batches, the replay
backlog (merged, bounded, replayed in order, a few batches per scoring call), half-missing
entries, a reload dropping what waits."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import redis
from support.servers import proxied_url
from support.tcp_proxy import TcpProxy

from model.corrections import Shrinkage
from service import corrections as corrections_module
from service.cache import RedisTier
from service.corrections import OnlineCorrections, Pending
from service.metrics import Metrics

pytestmark = pytest.mark.redis

K = Shrinkage(4.0, 6.0)


@pytest.fixture
def proxy(redis_url):
    kwargs = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    p = TcpProxy((kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379))))
    p.start()
    yield p
    p.stop()


@pytest.fixture
def make(redis_url, proxy, redis_client):
    prefix = f"levi:test-state:{uuid.uuid4().hex[:10]}"
    made = []

    def build(**kw) -> OnlineCorrections:
        metrics = Metrics()
        tier = RedisTier(
            proxied_url(redis_url, proxy),
            metrics,
            ttl_s=60,
            timeout_s=0.2,
            backoff_s=0.01,
            backoff_max_s=0.01,
        )
        limits = {"ttl_s": 60, "max_backlog": 100_000, "mirror_size": 10_000, "dedup_s": 3600}
        c = OnlineCorrections(
            "v1", K, (1.0, 5.0), metrics, redis_tier=tier, key_prefix=prefix, **(limits | kw)
        )
        made.append(tier)
        return c

    build.prefix = prefix
    yield build
    for tier in made:
        tier.close()
    keys = list(redis_client.scan_iter(match=f"{prefix}:*"))
    if keys:
        redis_client.delete(*keys)


def counts(redis_client, prefix: str, side: str) -> dict[str, tuple[int, float]]:
    raw = {
        k.decode(): v.decode() for k, v in redis_client.hgetall(f"{prefix}:{{v1}}:{side}").items()
    }
    return {k[2:]: (int(v), float(raw["s:" + k[2:]])) for k, v in raw.items() if k.startswith("n:")}


def feed(c: OnlineCorrections, user: str, item: str, rating: float, model: float = 3.0):
    return c.record([user], [item], np.array([model]), np.array([rating]))


def test_a_batch_sent_twice_counts_once(make, redis_client):
    c = make()
    pending = Pending({"user": {"u": (1, 0.5)}, "item": {"i": (1, 1.0)}}, 1)
    assert c._send(pending) and c._send(pending)  # a replay after a lost reply
    assert counts(redis_client, make.prefix, "item") == {"i": (1, 1.0)}
    other = make()  # another process: its own numbering
    assert other._send(Pending({"user": {}, "item": {"i": (2, 3.0)}}, 2))
    assert counts(redis_client, make.prefix, "item") == {"i": (3, 4.0)}


def test_outage_keeps_merges_and_replays_in_order(make, proxy, redis_client):
    c = make()
    feed(c, "u1", "i1", 5.0)
    proxy.stop()
    for r in (1.0, 2.0, 5.0):
        feed(c, "u1", "i1", r)
    assert c.backlog_events == 3 and len(c._backlog) == 1  # never sent: merged into one
    # answers meanwhile come from this process's state, its own increments included
    user, item = c.offsets(["u1"], ["i1"])
    assert item[0] == pytest.approx((2.0 - 2.0 - 1.0 + 2.0) / (4 + K.k_item))
    proxy.start()
    time.sleep(0.05)  # past the back-off
    feed(c, "u2", "i1", 3.0)  # the next feedback replays what waited first
    assert c.backlog_events == 0
    assert counts(redis_client, make.prefix, "item")["i1"] == (5, pytest.approx(1.0))
    assert counts(redis_client, make.prefix, "user")["u1"][0] == 4
    assert c.metrics.feedback_replay.labels(result="replayed")._value.get() == 3


def test_the_backlog_is_bounded_and_a_scoring_call_replays_a_few(
    make, proxy, redis_client, monkeypatch
):
    monkeypatch.setattr(corrections_module, "MERGE_EVENTS", 1)  # one kept batch per event
    c = make(max_backlog=6)
    proxy.stop()
    for k in range(10):
        feed(c, f"u{k}", "i1", 5.0)
    assert c.backlog_events == 6
    assert c.metrics.feedback_replay.labels(result="dropped")._value.get() == 4
    proxy.start()
    time.sleep(0.05)
    c.offsets(["u1"], ["i1"])  # a scoring call: at most REPLAY_PER_READ batches, then local
    assert c.backlog_events == 6 - corrections_module.REPLAY_PER_READ
    c.offsets(["u1"], ["i1"])
    assert c.backlog_events == 0
    assert counts(redis_client, make.prefix, "item")["i1"][0] == 6  # the 6 kept, in order


def test_a_half_missing_entry_reads_as_none(make, redis_client):
    c = make()
    feed(c, "u1", "i1", 5.0)
    redis_client.hdel(f"{make.prefix}:{{v1}}:item", "s:i1")
    user, item = c.offsets(["u1"], ["i1"])
    assert item[0] == 0.0 and user[0] != 0.0


def test_a_reload_drops_what_waits_and_counts_it(make, proxy):
    c = make()
    proxy.stop()
    feed(c, "u1", "i1", 5.0)
    assert c.backlog_events == 1
    c.discard_backlog()
    assert c.backlog_events == 0
    assert c.metrics.feedback_replay.labels(result="dropped")._value.get() == 1


def test_the_redis_mirror_is_bounded_and_refilled_from_redis(make, proxy):
    c = make(mirror_size=3)
    for k in range(6):
        feed(c, f"u{k}", f"i{k}", 5.0)
    assert len(c._local["item"]) == 3 and set(c._local["item"]) == {"i3", "i4", "i5"}
    _, item = c.offsets(["u0"], ["i0"])  # evicted from the mirror, read back from Redis
    assert item[0] == pytest.approx(2.0 / (1 + K.k_item))
    assert "i0" in c._local["item"] and len(c._local["item"]) == 3


def test_an_id_first_seen_during_an_outage_is_still_known_after_it(make, proxy):
    c = make()
    proxy.stop()
    assert c.first_seen(["evt-1", None, "evt-1"]).tolist() == [True, True, False]
    proxy.start()
    time.sleep(0.05)
    # Redis never saw evt-1 (its SET NX would succeed), this process did: still a duplicate
    assert c.first_seen(["evt-1", "evt-2"]).tolist() == [False, True]
    assert make().first_seen(["evt-2"]).tolist() == [False]  # another process, via Redis


def test_forgotten_ids_are_learned_on_retry(make):
    c = make()
    assert c.first_seen(["evt-9"]).tolist() == [True]
    c.forget(["evt-9"])  # the events were not learned after all
    assert c.first_seen(["evt-9"]).tolist() == [True]
    assert make().first_seen(["evt-9"]).tolist() == [False]


def test_a_reused_id_is_told_from_a_retry_across_processes_and_outages(
    make, proxy, redis_client, caplog
):
    c = make()
    assert c.first_seen(["e1", "e2"], ["fp1:a", "fp1:b"]).tolist() == [True, True]
    # read-only: a retry (same payload) is no conflict, another payload is
    assert c.conflicts(["e1", "e1", None, "e3"], ["fp1:a", "fp1:x", "fp1:y", "fp1:z"]) == [1]
    other = make()  # another replica: knows the ids through Redis
    assert other.conflicts(["e2", "e1"], ["fp1:x", "fp1:a"]) == [0]
    proxy.stop()
    assert c.conflicts(["e1"], ["fp1:x"]) == [0]  # this process still remembers
    assert other.conflicts(["e1"], ["fp1:x"]) == []  # nothing to tell it
    proxy.start()
    time.sleep(0.05)
    # an id stored without a payload (earlier versions stored "1") never conflicts
    redis_client.set(f"{make.prefix}:{{v1}}:seen:e4", "1", ex=60)
    assert c.conflicts(["e4"], ["fp1:q"]) == []
    # two requests checked at the same moment: the second claim loses and is logged
    with caplog.at_level("WARNING", logger="service.corrections"):
        assert other.first_seen(["e2"], ["fp1:x"]).tolist() == [False]
    assert "e2" in caplog.text and "another payload" in caplog.text


def test_the_model_summary_survives_a_bad_manifest_entry_with_corrections_off():
    from types import SimpleNamespace

    from service.routes.model_info import _corrections

    scorer = SimpleNamespace(
        corrections=None, artifact=SimpleNamespace(manifest={"corrections": {"k_user": 1.0}})
    )
    summary = _corrections(scorer)
    assert summary.enabled is False and summary.fitted is False
    assert summary.k_item == pytest.approx(10.0)


def test_offsets_per_pair_equal_the_per_entity_shrunk_means():
    # offsets() works per distinct id and spreads the answers to the pairs: repeated ids,
    # ids without feedback (offset 0) and the OOV items' own k must come out as the
    # definition computed pair by pair says.
    shrink = Shrinkage(4.0, 6.0, k_item_oov=9.0)
    c = OnlineCorrections(
        "v1", shrink, (1.0, 5.0), Metrics(), redis_tier=None, ttl_s=60, max_backlog=10,
        key_prefix="levi:test-offsets", item_known=lambda i: i != "new", mirror_size=100,
        dedup_s=60,
    )  # fmt: skip
    c.record(["a", "a", "b"], ["x", "new", "x"], np.array([3.0, 3.0, 3.0]), np.array([5, 4, 1.0]))
    state = c.state({"user": ["a", "b", "c"], "item": ["x", "new", "y"]})
    users = ["a", "c", "a", "b", "a", "c"]
    items = ["x", "y", "new", "x", "y", "new"]
    got_user, got_item = c.offsets(users, items)

    def expected(side, ids, k):
        n_s = [state[side].get(i, (0, 0.0)) for i in ids]
        return np.array([s / (n + k(i)) for i, (n, s) in zip(ids, n_s, strict=True)])

    want_user = expected("user", users, lambda i: 6.0)
    want_item = expected("item", items, lambda i: 9.0 if i == "new" else 4.0)
    assert state["user"]["a"][0] == 2 and "c" not in state["user"]  # the case is what it says
    np.testing.assert_allclose(got_user, want_user, rtol=0, atol=1e-15)
    np.testing.assert_allclose(got_item, want_item, rtol=0, atol=1e-15)
    assert got_user[1] == 0 and got_item[1] == 0  # no feedback: no offset
    # All distinct (the /rank case): the same answers as pair by pair.
    u, i = c.offsets(["a", "b"], ["new", "x"])
    np.testing.assert_allclose(
        i, expected("item", ["new", "x"], lambda i: 9.0 if i == "new" else 4.0)
    )
