"""``POST /feedback`` in process: corrections equal the numpy reference, the log holds every
answered event, bad input names its field, an unwritable log is a 503 that applies nothing."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from support.artifacts import TINY_CORRECTIONS
from support.servers import loaded_client

from model.corrections import Shrinkage
from model.feedback_format import read_events
from service import durable_log  # the writing of the feedback log
from tests.model.test_corrections import offsets_now
from training.data.feedback import read_feedback_dir

PAIRS = [("1", "10"), ("1", "11"), ("2", "10"), ("3", "12"), ("2", "new-7"), ("4", "11")]
NEW_ITEM = {"title": "Heat (1995)", "genres": ["Action"]}


def events_for(seed: int, n: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for j in rng.integers(0, len(PAIRS), n):
        user, item = PAIRS[j]
        event = {"user_id": user, "item_id": item, "rating": float(rng.integers(1, 6))}
        if item == "new-7":
            event["item"] = NEW_ITEM
        out.append(event)
    return out


def pair_body(user: str, item: str) -> dict:
    return {"user_id": user, "item_id": item, **({"item": NEW_ITEM} if item == "new-7" else {})}


def logged(directory) -> list[dict]:
    events = []
    for path in sorted(directory.glob("*.jsonl")):
        got, skipped = read_events(path)
        assert skipped == 0
        events += got
    return events


@pytest.fixture
def client(artifacts, compile_cache, tmp_path):
    with loaded_client(artifacts.v1, compile_cache, feedback_dir=tmp_path / "fb", max_batch=4) as c:
        c.feedback_dir = tmp_path / "fb"
        yield c


def test_corrections_equal_the_numpy_reference(client):
    events = events_for(0, 40)
    model = client.post(
        "/predict-rating/batch", json={"requests": [pair_body(*p) for p in PAIRS]}
    ).json()["predictions"]
    model_rating = {p: m["model_rating"] for p, m in zip(PAIRS, model, strict=True)}
    assert all(m["corrections"] == {"user": 0.0, "item": 0.0} for m in model)
    sent = 0
    for size in (1, 7, 2, 30):  # batches of several sizes: the same as one event at a time
        r = client.post("/feedback", json={"events": events[sent : sent + size]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["accepted"] == size and len(set(body["event_ids"])) == size
        assert body["corrections"] == "applied" and body["model_version"] == "tiny-v1"
        sent += size
    k = Shrinkage.from_json(TINY_CORRECTIONS)
    stream = [
        (e["user_id"], e["item_id"], model_rating[(e["user_id"], e["item_id"])], e["rating"])
        for e in events
    ]
    for user, item in PAIRS:
        want = offsets_now(stream, user, item, k, oov_items={"new-7"})
        got = client.post("/predict-rating", json=pair_body(user, item)).json()
        assert got["corrections"]["item"] == pytest.approx(want[0], abs=1e-5)
        assert got["corrections"]["user"] == pytest.approx(want[1], abs=1e-5)
        assert got["model_rating"] == pytest.approx(model_rating[(user, item)], abs=1e-6)
        expected = np.clip(got["model_rating"] + want[0] + want[1], 1, 5)
        assert got["rating"] == pytest.approx(expected, abs=1e-5)
        assert [a["rating"] for a in got["adapters"]] == pytest.approx(
            [a["rating"] for a in model[PAIRS.index((user, item))]["adapters"]], abs=1e-6
        )  # per-adapter ratings stay the model's
    # /rank orders by the corrected rating
    ranked = client.post(
        "/rank", json={"user_id": "1", "candidates": [{"item_id": i} for i in ("10", "11", "12")]}
    ).json()["ranked"]
    assert [e["rating"] for e in ranked] == sorted((e["rating"] for e in ranked), reverse=True)
    # the log holds every event once, with the model's rating it was learned from
    log = logged(client.feedback_dir)
    assert len(log) == len(events) == len({e["event_id"] for e in log})
    assert [e["rating"] for e in log] == [e["rating"] for e in events]
    first = log[0]
    assert first["model_rating"] == pytest.approx(
        model_rating[(first["user_id"], first["item_id"])]
    )
    assert first["dataset"] == "tiny-service" and isinstance(first["timestamp"], int)
    # what retraining reads (python -m training --feedback): the same events, once each
    read, files, duplicates, partial = read_feedback_dir(client.feedback_dir)
    assert [e["event_id"] for e in read] == [e["event_id"] for e in log]
    assert (files, duplicates, partial) == (1, 0, 0)
    metrics = client.get("/metrics").text
    assert "levi_feedback_events_total 40.0" in metrics
    assert 'levi_corrected_entities{side="item"} 4.0' in metrics


def test_the_model_summary_shows_the_corrections(client, artifacts, compile_cache):
    info = client.get("/v1/model").json()["corrections"]
    assert info == {"enabled": True, "shared": False, **TINY_CORRECTIONS, "fitted": True}
    with loaded_client(artifacts.v1, compile_cache, corrections=False) as off:
        assert off.get("/v1/model").json()["corrections"]["enabled"] is False


def test_bad_events_name_their_field(client):
    ok = {"user_id": "1", "item_id": "10", "rating": 4}
    cases = [
        ({"events": [ok, {**ok, "rating": 6}]}, ["body", "events", 1, "rating"]),
        ({"events": [{**ok, "rating": 0.5}]}, ["body", "events", 0, "rating"]),
        ({"events": [{**ok, "rating": "good"}]}, ["body", "events", 0, "rating"]),
        # a rating is a JSON number: neither a boolean (read as 1 before) nor a numeric string
        ({"events": [ok, {**ok, "rating": True}]}, ["body", "events", 1, "rating"]),
        ({"events": [{**ok, "rating": "4"}]}, ["body", "events", 0, "rating"]),
        ({"events": [{**ok, "item": {"colour": "red"}}]}, ["body", "events", 0, "item", "colour"]),
        ({"events": [{**ok, "user": {"colour": "red"}}]}, ["body", "events", 0, "user", "colour"]),
        ({"events": [{**ok, "timestamp": "yesterday"}]}, ["body", "events", 0, "timestamp"]),
        ({"events": [{"item_id": "10", "rating": 3}]}, ["body", "events", 0, "user_id"]),
        ({"events": []}, ["body", "events"]),
    ]
    for body, loc in cases:
        r = client.post("/feedback", json=body)
        assert r.status_code == 422, (body, r.text)
        assert any(e["loc"] == loc for e in r.json()["detail"]), (loc, r.text)
        if "colour" in loc:
            entity = loc[-2]
            article = "an" if entity == "item" else "a"
            assert f"not {article} {entity} field of this model" in r.text
    assert logged(client.feedback_dir) == []  # nothing of a refused request is kept
    # a 70-bit integer in a categorical field: read as a number, logged as one (never a 5xx)
    huge = {**ok, "user": {"occupation": 2**70}}
    r = client.post("/feedback", json={"events": [huge]})
    assert r.status_code == 200, r.text
    assert logged(client.feedback_dir)[-1]["user"] == {"occupation": float(2**70)}
    r = client.post("/feedback", json={"events": [ok] * 1001})  # LEVI_MAX_FEEDBACK_EVENTS
    assert r.status_code == 413 and "LEVI_MAX_FEEDBACK_EVENTS" in r.json()["detail"]


def test_a_retried_request_with_client_ids_is_logged_but_not_learned_twice(client):
    events = [
        {"event_id": "app-1:0001", "user_id": "1", "item_id": "10", "rating": 5},
        {"event_id": "app-1:0002", "user_id": "2", "item_id": "10", "rating": 5},
    ]
    first = client.post("/feedback", json={"events": events}).json()
    assert first["event_ids"] == ["app-1:0001", "app-1:0002"] and first["duplicates"] == 0
    once = client.post("/predict-rating", json={"user_id": "3", "item_id": "10"}).json()
    retry = client.post("/feedback", json={"events": events}).json()  # the answer was lost
    assert retry["accepted"] == 2 and retry["duplicates"] == 2
    again = client.post("/predict-rating", json={"user_id": "3", "item_id": "10"}).json()
    assert again["corrections"] == once["corrections"]  # not learned twice
    mixed = [events[0], {"event_id": "app-1:0003", "user_id": "4", "item_id": "10", "rating": 5}]
    assert client.post("/feedback", json={"events": mixed}).json()["duplicates"] == 1
    ids = [e["event_id"] for e in logged(client.feedback_dir)]
    assert ids.count("app-1:0001") == 3  # logged each time; retraining counts an id once
    read, _, duplicates, _ = read_feedback_dir(client.feedback_dir)
    assert len(read) == 3 and duplicates == 3
    bad = client.post("/feedback", json={"events": [{**events[0], "event_id": "a b"}]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "event_id"


def test_events_not_learned_after_a_fault_are_learned_on_retry(client, monkeypatch):
    from service.corrections import OnlineCorrections

    def broken(*args, **kwargs):
        raise RuntimeError("a fault while applying")

    body = {"events": [{"event_id": "app-2:1", "user_id": "1", "item_id": "11", "rating": 1}]}
    with monkeypatch.context() as m:
        m.setattr(OnlineCorrections, "record", broken)
        first = client.post("/feedback", json=body)
    assert first.status_code == 200 and first.json()["corrections"] == "skipped"  # logged
    retry = client.post("/feedback", json=body).json()
    assert retry["corrections"] == "applied" and retry["duplicates"] == 0
    assert client.post("/feedback", json=body).json()["corrections"] == "duplicate"


def test_timestamps_are_kept_as_seconds(client):
    events = [
        {"user_id": "1", "item_id": "10", "rating": 4, "timestamp": 1700000000},
        {"user_id": "1", "item_id": "10", "rating": 4, "timestamp": "2023-11-14T22:13:20Z"},
        {"user_id": "1", "item_id": "10", "rating": 4, "timestamp": "2023-11-14T22:13:20"},
    ]
    assert client.post("/feedback", json={"events": events}).status_code == 200
    assert [e["timestamp"] for e in logged(client.feedback_dir)] == [1700000000] * 3


def test_timestamps_outside_the_one_definition_are_a_422_naming_the_field(client):
    """model/timestamps.py: numbers are seconds whatever their size (never milliseconds),
    offsets within ±18:00, times in [1970-01-01, 2262-04-11); nothing of the request is
    logged."""
    ok = {"user_id": "1", "item_id": "10", "rating": 4}
    cases = {
        "9999-12-31T23:59:59-23:59": "offset -23:59 is beyond",
        "9999-12-31T23:59:59Z": "on or after 2262-04-11",
        25000000000: "on or after 2262-04-11",  # not read as milliseconds (1970-10-17)
        1700000000000: "looks like milliseconds",
        -1: "before 1970-01-01",
        10**400: "on or after 2262-04-11",  # JSON integers have no size limit
        "2023-11-14T22:13:20+18:30": "beyond ±18:00",
        "1700000000": "a number written as text",
        "11/14/2023": "not an ISO 8601 date",
        True: "boolean",
    }
    for when, reason in cases.items():
        r = client.post("/feedback", json={"events": [ok, {**ok, "timestamp": when}]})
        assert r.status_code == 422, (when, r.text)
        (error,) = r.json()["detail"]
        assert error["loc"] == ["body", "events", 1, "timestamp"], r.text
        assert reason in error["msg"], (when, error["msg"])
    assert logged(client.feedback_dir) == []
    edge = [{**ok, "timestamp": t} for t in (0, 9_223_286_399, "2262-04-10T23:59:59Z")]
    edge.append({**ok, "timestamp": "2023-11-14T22:13:20-18:00"})
    assert client.post("/feedback", json={"events": edge}).status_code == 200
    assert [e["timestamp"] for e in logged(client.feedback_dir)] == [
        0,
        9_223_286_399,
        9_223_286_399,
        1700000000 + 18 * 3600,
    ]


def test_an_unwritable_log_is_a_503_and_nothing_is_applied(artifacts, compile_cache, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with loaded_client(artifacts.v1, compile_cache, feedback_dir=blocker / "fb") as c:
        r = c.post("/feedback", json={"events": [{"user_id": "1", "item_id": "10", "rating": 5}]})
        assert r.status_code == 503
        assert "not writable" in r.json()["detail"] and "LEVI_FEEDBACK_DIR" in r.json()["detail"]
        p = c.post("/predict-rating", json={"user_id": "1", "item_id": "10"}).json()
        assert p["corrections"] == {"user": 0.0, "item": 0.0}
        assert "levi_feedback_log_errors_total 1.0" in c.get("/metrics").text


class FullDisk:
    """``os`` whose ``write`` stores a few bytes, then fails as a full disk does."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def write(fd, data):
        os.write(fd, bytes(data[:7]))
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_keeps_the_log_whole(client, monkeypatch):
    event = {"user_id": "1", "item_id": "10", "rating": 5}
    assert client.post("/feedback", json={"events": [event] * 3}).status_code == 200
    monkeypatch.setattr(durable_log, "os", FullDisk())
    r = client.post("/feedback", json={"events": [event] * 2})
    assert r.status_code == 503 and "No space left on device" in r.json()["detail"]
    monkeypatch.undo()
    before = client.post("/predict-rating", json={"user_id": "1", "item_id": "10"}).json()
    assert client.post("/feedback", json={"events": [event]}).status_code == 200
    log = logged(client.feedback_dir)  # the partial batch was cut off: only whole lines
    assert len(log) == 4
    after = client.post("/predict-rating", json={"user_id": "1", "item_id": "10"}).json()
    assert after["corrections"]["item"] > before["corrections"]["item"]  # 3 + 1 events applied


def test_corrections_off_answers_the_model_and_still_logs(artifacts, compile_cache, tmp_path):
    with loaded_client(
        artifacts.v1, compile_cache, feedback_dir=tmp_path / "fb", corrections=False
    ) as c:
        r = c.post("/feedback", json={"events": [{"user_id": "1", "item_id": "10", "rating": 5}]})
        assert r.status_code == 200 and r.json()["corrections"] == "off"
        p = c.post("/predict-rating", json={"user_id": "1", "item_id": "10"}).json()
        assert p["rating"] == p["model_rating"]
        assert p["corrections"] == {"user": 0.0, "item": 0.0}
    assert len(logged(tmp_path / "fb")) == 1


def test_feedback_disabled_without_a_directory(artifacts, compile_cache):
    with loaded_client(artifacts.v1, compile_cache, feedback_dir="") as c:
        r = c.post("/feedback", json={"events": [{"user_id": "1", "item_id": "10", "rating": 5}]})
        assert r.status_code == 503 and "LEVI_FEEDBACK_DIR" in r.json()["detail"]
