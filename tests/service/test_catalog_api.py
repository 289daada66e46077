"""The online catalog through the real app, in process, without Redis: records, validation,
resolution (request > catalog > the model's tables > unknown), the log, and projections
computed off the request path.

The tiny artifact declares users ``age`` (numeric), ``gender``, ``occupation``, ``zip_code``
(categorical) and items ``title`` (text), ``genres`` (multi_categorical); it knows users
1-4 and items 10-12 (tests/service/conftest.py).
"""

from __future__ import annotations

import time

import pytest
from support.servers import loaded_client

from model.catalog_format import read_records

ALIEN = {"title": "Brand new space oddity (1995)", "genres": ["Action"]}


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("catalog")


@pytest.fixture(scope="module")
def client(artifacts, compile_cache, catalog_dir, tmp_path_factory):
    feedback = tmp_path_factory.mktemp("feedback")
    with loaded_client(
        artifacts.v1, compile_cache, catalog_dir=catalog_dir, feedback_dir=feedback
    ) as c:
        yield c


def engine(client):
    return client.app.state.engine


def logged(catalog_dir) -> list[dict]:
    return [r for p in sorted(catalog_dir.glob("catalog-*.jsonl")) for r in read_records(p)[0]]


def wait_warm(client, timeout: float = 30.0) -> None:
    warmer = engine(client).catalog.warmer
    until = time.monotonic() + timeout
    while warmer.pending:
        assert time.monotonic() < until, "registered entities were not projected in time"
        time.sleep(0.02)


def predict(client, **body) -> dict:
    r = client.post("/predict-rating", json={"user_id": "1", "item_id": "10", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_put_get_delete_round_trip(client, catalog_dir):
    r = client.put("/v1/items/new-round", json={"fields": ALIEN})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1 and body["ids"] == ["new-round"]
    assert body["kind"] == "item" and body["dataset"] == "tiny-service"
    assert body["shared"] == "local"  # no Redis
    # on disk before the answer
    assert any(x["id"] == "new-round" and x["fields"] == ALIEN for x in logged(catalog_dir))
    got = client.get("/v1/items/new-round").json()
    assert got["fields"] == ALIEN and got["origin"] == "put"
    assert got["known_to_model"] is False and got["model_version"] == "tiny-v1"
    assert got["written_by"].startswith("catalog-") and got["updated_at"].endswith("+00:00")
    assert client.get("/v1/items/10").status_code == 404  # known to the model, not registered
    r = client.delete("/v1/items/new-round")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert client.get("/v1/items/new-round").status_code == 404
    assert client.delete("/v1/items/new-round").status_code == 404
    tomb = [x for x in logged(catalog_dir) if x["id"] == "new-round"][-1]
    assert tomb["deleted"] is True and tomb["fields"] is None


def test_users_too(client):
    fields = {"age": 44, "occupation": "lawyer", "zip_code": "10001"}
    assert client.put("/v1/users/u-new", json={"fields": fields}).status_code == 200
    got = client.get("/v1/users/u-new").json()
    assert got["kind"] == "user" and got["fields"] == fields
    assert client.put("/v1/users/2", json={"fields": {"age": 70}}).status_code == 200
    assert client.get("/v1/users/2").json()["known_to_model"] is True


@pytest.mark.parametrize(
    "url, body, loc",
    [
        ("/v1/items/x", {"fields": {"title": 7}}, ["body", "fields", "title"]),
        ("/v1/items/x", {"fields": {"genres": "Comedy"}}, ["body", "fields", "genres"]),
        ("/v1/items/x", {"fields": {"author": "Someone"}}, ["body", "fields", "author"]),
        ("/v1/items/x", {"fields": {"title": "t" * 20_001}}, ["body", "fields", "title"]),
        ("/v1/items/x", {"fields": {"genres": [""]}}, ["body", "fields", "genres", 0]),
        ("/v1/items/x", {"title": "no fields object"}, ["body", "fields"]),
        ("/v1/users/x", {"fields": {"age": "old"}}, ["body", "fields", "age"]),
        ("/v1/users/x", {"fields": {"age": True}}, ["body", "fields", "age"]),
        ("/v1/users/x", {"fields": {"title": "an item field"}}, ["body", "fields", "title"]),
        ("/v1/users/x", {"fields": {"occupation": ["doctor"]}}, ["body", "fields", "occupation"]),
    ],
)
def test_fields_are_validated_as_request_fields_are(client, url, body, loc):
    r = client.put(url, json=body)
    assert r.status_code == 422, r.text
    assert loc in [e["loc"][: len(loc)] for e in r.json()["detail"]], r.json()
    assert client.get(url).status_code == 404  # nothing was recorded


def test_bad_ids_and_bulk_problems_name_the_field(client):
    r = client.put("/v1/items/" + "x" * 65, json={"fields": {}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "item_id"]
    r = client.put("/v1/items/%20%20", json={"fields": {}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "item_id"]
    r = client.post(
        "/v1/items",
        json={"items": [{"item_id": "a", "fields": {}}, {"item_id": "b", "fields": {"title": 1}}]},
    )
    assert r.status_code == 422
    assert ["body", "items", 1, "fields", "title"] in [e["loc"] for e in r.json()["detail"]]
    assert client.get("/v1/items/a").status_code == 404  # a request is accepted whole or not
    r = client.post(
        "/v1/items",
        json={"items": [{"item_id": "a", "fields": {}}, {"item_id": "a", "fields": {}}]},
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "items", 1, "item_id"]
    too_many = {"items": [{"item_id": str(i), "fields": {}} for i in range(1001)]}
    r = client.post("/v1/items", json=too_many)
    assert r.status_code == 413 and "LEVI_MAX_CATALOG_BULK" in r.json()["detail"]
    assert client.post("/v1/users", json={"users": []}).status_code == 422


def test_bulk_registers_every_record(client):
    items = [{"item_id": f"bulk-{i}", "fields": {"title": f"movie {i}"}} for i in range(50)]
    r = client.post("/v1/items", json={"items": items})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 50 and r.json()["ids"][0] == "bulk-0"
    assert client.get("/v1/items/bulk-49").json()["origin"] == "bulk"


def test_a_registered_item_answers_as_its_fields_in_the_request_do(client):
    client.put("/v1/items/new-same", json={"fields": ALIEN})
    by_id = predict(client, item_id="new-same")
    with_fields = predict(client, item_id="new-same", item=ALIEN)
    assert by_id["rating"] == with_fields["rating"]
    assert by_id["adapters"] == with_fields["adapters"]
    assert by_id["sources"] == {"user": "model", "item": "catalog"}
    assert with_fields["sources"] == {"user": "model", "item": "request"}
    assert by_id["cold_start"] == {"user": False, "item": True}
    # the request's fields are said to have answered; a registered item's source says it
    assert any("answered from the request's item fields" in w for w in with_fields["warnings"])
    assert by_id["warnings"] == []
    bare = predict(client, item_id="unregistered-x")
    assert bare["sources"]["item"] == "unknown" and bare["rating"] != by_id["rating"]


def test_precedence_request_over_catalog_over_the_models_tables(client):
    base = predict(client)  # item 10, Kolya (1996), from the model's tables
    assert base["sources"] == {"user": "model", "item": "model"}
    changed = {"title": "Heat (1995)"}
    client.put("/v1/items/10", json={"fields": changed})  # a changed title of a known item
    by_catalog = predict(client)
    assert by_catalog["sources"]["item"] == "catalog"
    assert by_catalog["cold_start"]["item"] is False
    assert by_catalog["rating"] == predict(client, item=changed)["rating"]
    assert by_catalog["rating"] != base["rating"]
    # the request's fields win over the record's
    request = {"title": "Toy Story (1995)"}
    assert (
        predict(client, item=request)["rating"]
        == predict(client, item_id="10", item=request)["rating"]
    )
    over = predict(client, item=request)
    assert over["sources"]["item"] == "request" and over["rating"] != by_catalog["rating"]
    # deleting the record falls back to the model's tables
    client.delete("/v1/items/10")
    again = predict(client)
    assert again["sources"]["item"] == "model" and again["rating"] == base["rating"]


def test_record_and_request_fields_merge_field_by_field(client):
    client.put("/v1/items/new-merge", json={"fields": ALIEN})
    merged = predict(client, item_id="new-merge", item={"genres": ["Comedy"]})
    client.delete("/v1/items/new-merge")
    explicit = predict(client, item_id="new-merge", item={**ALIEN, "genres": ["Comedy"]})
    alone = predict(client, item_id="new-merge", item={"genres": ["Comedy"]})
    assert merged["rating"] == explicit["rating"]  # the record's title, the request's genres
    assert merged["rating"] != alone["rating"]
    assert merged["sources"]["item"] == "request"


def test_an_update_is_answered_at_once_not_from_old_projections(client):
    client.put("/v1/items/new-upd", json={"fields": {"title": "Kolya (1996)"}})
    first = predict(client, item_id="new-upd")
    client.put("/v1/items/new-upd", json={"fields": {"title": "Toy Story (1995)"}})
    second = predict(client, item_id="new-upd")
    sent = predict(client, item_id="new-upd", item={"title": "Toy Story (1995)"})
    assert second["rating"] == sent["rating"] != first["rating"]


def test_rank_by_id_alone_matches_rank_with_fields_and_says_the_source(client):
    items = {f"rank-{i}": {"title": f"movie {i} (1995)"} for i in range(6)}
    client.post(
        "/v1/items", json={"items": [{"item_id": k, "fields": v} for k, v in items.items()]}
    )
    client.put("/v1/users/u-rank", json={"fields": {"age": 30, "occupation": "doctor"}})
    by_id = client.post(
        "/rank", json={"user_id": "u-rank", "candidates": [{"item_id": k} for k in items]}
    ).json()
    with_fields = client.post(
        "/rank",
        json={
            "user_id": "u-rank",
            "user": {"age": 30, "occupation": "doctor"},
            "candidates": [{"item_id": k, "item": v} for k, v in items.items()],
        },
    ).json()
    assert [(x["item_id"], x["rating"]) for x in by_id["ranked"]] == [
        (x["item_id"], x["rating"]) for x in with_fields["ranked"]
    ]
    assert by_id["user_source"] == "catalog" and with_fields["user_source"] == "request"
    assert {x["source"] for x in by_id["ranked"]} == {"catalog"}
    batch = client.post(
        "/predict-rating/batch",
        json={"requests": [{"user_id": "u-rank", "item_id": k} for k in items]},
    ).json()["predictions"]
    ratings = {x["item_id"]: x["rating"] for x in by_id["ranked"]}
    assert [p["rating"] for p in batch] == [ratings[k] for k in items]


def test_registered_entities_are_projected_off_the_request_path(client):
    """After an upsert the background step computes the projections: a ranking of the new
    items by id finds nothing left to encode (what a known item costs)."""
    items = [{"item_id": f"warm-{i}", "fields": {"title": f"movie {i} (1996)"}} for i in range(9)]
    r = client.post("/v1/items", json={"items": items})
    assert r.json()["queued_encodes"] == 9
    wait_warm(client)
    eng = engine(client)
    scorer = eng.scorer
    from service.scorer import ScoreInput

    inputs = eng.catalog.resolve([ScoreInput("1", x["item_id"]) for x in items])
    assert scorer.estimate_cold_tokens(inputs) == (0, 0)
    # without the catalog's records they would be unknown ids: new text of their own
    assert scorer.estimate_cold_tokens([ScoreInput("1", "warm-x")])[0] > 0


def test_feedback_is_scored_with_the_catalog_and_logs_the_requests_fields(client):
    client.put("/v1/items/new-fb", json={"fields": ALIEN})
    answer = predict(client, item_id="new-fb")
    r = client.post(
        "/feedback", json={"events": [{"user_id": "1", "item_id": "new-fb", "rating": 4}]}
    )
    assert r.status_code == 200, r.text
    from model.feedback_format import read_events

    feedback_dir = client.app.state.settings.feedback_dir
    events = [e for p in feedback_dir.glob("*.jsonl") for e in read_events(p)[0]]
    (event,) = [e for e in events if e["item_id"] == "new-fb"]
    assert event["item"] is None  # the catalog keeps the fields, not the feedback log
    assert event["model_rating"] == pytest.approx(answer["model_rating"], abs=1e-6)


def test_metrics_count_catalog_work(client):
    text = client.get("/metrics").text
    assert 'levi_catalog_records{kind="item"}' in text
    assert 'levi_catalog_upserts_total{kind="item",shared="local"}' in text
    assert 'levi_catalog_lookups_total{kind="item",source="catalog"}' in text
    assert "levi_catalog_pending_encodes" in text


def test_a_restart_reads_the_log(artifacts, compile_cache, catalog_dir, client):
    client.put("/v1/items/new-restart", json={"fields": ALIEN})
    with loaded_client(artifacts.v1, compile_cache, catalog_dir=catalog_dir) as other:
        assert other.get("/v1/items/new-restart").json()["fields"] == ALIEN
        assert other.get("/v1/items/new-round").status_code == 404  # deleted stays deleted


def test_processes_sharing_a_log_directory_see_each_others_writes(
    artifacts, compile_cache, tmp_path
):
    """Without Redis the workers of ``--workers N`` share the log directory: each reads the
    others' files every LEVI_CATALOG_SYNC_S."""
    with (
        loaded_client(artifacts.v1, compile_cache, catalog_dir=tmp_path) as a,
        loaded_client(artifacts.v1, compile_cache, catalog_dir=tmp_path) as b,
    ):
        a.put("/v1/items/new-shared", json={"fields": ALIEN})
        t0 = time.monotonic()
        while b.get("/v1/items/new-shared").status_code != 200:
            assert time.monotonic() - t0 < 1.0, "not seen by the other process within 1 s"
            time.sleep(0.01)
        b.put("/v1/items/new-shared", json={"fields": {"title": "Heat (1995)"}})
        t0 = time.monotonic()
        while a.get("/v1/items/new-shared").json()["fields"] != {"title": "Heat (1995)"}:
            assert time.monotonic() - t0 < 1.0, "the update was not seen within 1 s"
            time.sleep(0.01)
        # the same record, the same rating; not bit for bit: the two processes may score the
        # pair in differently sized compiled batches (float32 sums in another order)
        assert predict(a, item_id="new-shared")["rating"] == pytest.approx(
            predict(b, item_id="new-shared")["rating"], abs=1e-5
        )


def test_catalog_disabled_is_503_and_scoring_goes_on(artifacts, compile_cache):
    with loaded_client(artifacts.v1, compile_cache, catalog_dir="") as c:
        r = c.put("/v1/items/x", json={"fields": {}})
        assert r.status_code == 503 and "LEVI_CATALOG_DIR" in r.json()["detail"]
        assert c.post("/predict-rating", json={"user_id": "1", "item_id": "10"}).status_code == 200
