"""``POST /feedback`` event ids as idempotency keys: a retry with the same payload is a harmless
duplicate, an id reused with another payload is a 409 naming ``body.events.<i>.event_id`` and
nothing of that request is logged or learned. In process without Redis, and two apps
(replicas) sharing the real Redis."""

from __future__ import annotations

import uuid

import pytest
from support.servers import loaded_client
from test_feedback import logged

EVENT = {
    "event_id": "app-3:0001",
    "user_id": "1",
    "item_id": "10",
    "rating": 5,
    "timestamp": 1700000000,
}


def corrections_of(client, user: str = "3", item: str = "10") -> dict:
    return client.post("/predict-rating", json={"user_id": user, "item_id": item}).json()[
        "corrections"
    ]


@pytest.fixture(scope="module")
def client(artifacts, compile_cache, tmp_path_factory):
    directory = tmp_path_factory.mktemp("fb")
    with loaded_client(artifacts.v1, compile_cache, feedback_dir=directory, max_batch=4) as c:
        c.feedback_dir = directory
        yield c


def _fresh(event: dict) -> dict:
    return {**event, "event_id": f"app-3:{uuid.uuid4().hex[:12]}"}


@pytest.mark.parametrize(
    "change",
    [
        {"rating": 1},
        {"user_id": "2"},
        {"item_id": "11"},
        {"timestamp": 1700000001},
        {"timestamp": None},  # absent now, given before
        {"item": {"title": "Heat (1995)"}},
    ],
    ids=["rating", "user_id", "item_id", "timestamp", "no-timestamp", "item-fields"],
)
def test_a_reused_id_with_another_payload_is_409_and_nothing_is_kept(client, change):
    first = _fresh(EVENT)
    assert client.post("/feedback", json={"events": [first]}).status_code == 200
    n_logged = len(logged(client.feedback_dir))
    before = corrections_of(client)
    other = {k: v for k, v in {**first, **change}.items() if v is not None}
    new = _fresh({**EVENT, "user_id": "4"})  # a new event in the same request
    r = client.post("/feedback", json={"events": [new, other]})
    assert r.status_code == 409, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "events", 1, "event_id"]
    assert err["type"] == "event_id_reused"
    assert repr(first["event_id"]) in err["msg"] and "another payload" in err["msg"]
    assert "LEVI_FEEDBACK_DEDUP_S" in err["msg"] and "retry" in err["msg"]
    assert len(logged(client.feedback_dir)) == n_logged  # nothing of the request was logged
    assert corrections_of(client) == before  # nor learned
    again = client.post("/feedback", json={"events": [new]}).json()  # its id was not taken
    assert again["corrections"] == "applied" and again["duplicates"] == 0


def test_the_same_payload_in_other_words_is_a_retry(client):
    first = _fresh({**EVENT, "item_id": "new-9", "item": {"title": "Heat (1995)"}})
    assert client.post("/feedback", json={"events": [first]}).json()["duplicates"] == 0
    retry = {
        **first,
        "rating": 5.0,  # 5
        "timestamp": "2023-11-14T23:13:20+01:00",  # 1700000000 s
        "item": {"title": "Heat (1995)", "genres": None},  # a null field is an absent one
    }
    r = client.post("/feedback", json={"events": [retry]})
    assert r.status_code == 200, r.text
    assert r.json()["duplicates"] == 1 and r.json()["corrections"] == "duplicate"


def test_a_repeat_inside_one_request(client):
    e = _fresh(EVENT)
    r = client.post("/feedback", json={"events": [e, {**e, "rating": 2}]})
    assert r.status_code == 409, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "events", 1, "event_id"]
    assert "events.0 of this request" in err["msg"]
    r = client.post("/feedback", json={"events": [e, e]})  # the same event twice: harmless
    assert r.status_code == 200 and r.json()["duplicates"] == 1


def test_with_corrections_off_a_repeat_inside_one_request_is_still_refused(
    artifacts, compile_cache, tmp_path
):
    with loaded_client(
        artifacts.v1, compile_cache, feedback_dir=tmp_path / "fb", corrections=False
    ) as c:
        e = _fresh(EVENT)
        r = c.post("/feedback", json={"events": [e, {**e, "rating": 2}]})
        assert r.status_code == 409 and r.json()["detail"][0]["loc"][2] == 1, r.text
        assert c.post("/feedback", json={"events": [e]}).status_code == 200
    assert len(logged(tmp_path / "fb")) == 1


@pytest.mark.redis
def test_two_replicas_sharing_redis_tell_a_reuse_from_a_retry(
    artifacts, compile_cache, redis_url, redis_client, tmp_path
):
    prefix = f"levi:test-ids:{uuid.uuid4().hex[:10]}"
    cfg = dict(
        redis_url=redis_url,
        corrections_key_prefix=prefix,
        cache_key_prefix=prefix + ":act",
        max_batch=4,
    )
    try:
        with (
            loaded_client(artifacts.v1, compile_cache, feedback_dir=tmp_path / "a", **cfg) as a,
            loaded_client(artifacts.v1, compile_cache, feedback_dir=tmp_path / "b", **cfg) as b,
        ):
            e = _fresh(EVENT)
            assert a.post("/feedback", json={"events": [e]}).json()["corrections"] == "applied"
            key = f"{prefix}:{{tiny-v1}}:seen:{e['event_id']}"
            assert redis_client.get(key).decode().startswith("fp1:")  # the payload's digest
            r = b.post("/feedback", json={"events": [{**e, "rating": 1}]})
            assert r.status_code == 409, r.text
            assert r.json()["detail"][0]["loc"] == ["body", "events", 0, "event_id"]
            retry = b.post("/feedback", json={"events": [e]}).json()
            assert retry["corrections"] == "duplicate" and retry["duplicates"] == 1
            # an id recorded by an earlier version (value "1", no payload): a duplicate
            old = _fresh(EVENT)
            redis_client.set(f"{prefix}:{{tiny-v1}}:seen:{old['event_id']}", "1", ex=60)
            r = b.post("/feedback", json={"events": [{**old, "rating": 2}]})
            assert r.status_code == 200 and r.json()["duplicates"] == 1, r.text
        assert len(logged(tmp_path / "a")) == 1 and len(logged(tmp_path / "b")) == 2
    finally:
        keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            redis_client.delete(*keys)
