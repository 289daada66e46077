"""``POST /rank`` in process: order, ties, top_k, limits, cold starts, the batch's ratings."""

from __future__ import annotations

import pytest
from support.servers import loaded_client


@pytest.fixture(scope="module")
def client(artifacts, compile_cache):
    with loaded_client(artifacts.v1, compile_cache, max_rank_candidates=50, max_batch=4) as c:
        yield c


CANDIDATES = [
    {"item_id": "10"},
    {"item_id": "11"},
    {"item_id": "12"},
    {"item_id": "new-1", "item": {"title": "Heat (1995)", "genres": ["Action"]}},
    {"item_id": "new-2", "item": {"title": "Kolya (1996)"}},
]


def test_ranking_is_sorted_and_equals_the_batch_answers(client):
    r = client.post("/rank", json={"user_id": "1", "candidates": CANDIDATES})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == "1" and body["model_version"] == "tiny-v1"
    assert body["cold_start"] is False
    ratings = [e["rating"] for e in body["ranked"]]
    assert ratings == sorted(ratings, reverse=True)
    assert sorted(e["item_id"] for e in body["ranked"]) == sorted(c["item_id"] for c in CANDIDATES)
    batch = client.post(
        "/predict-rating/batch",
        json={"requests": [{"user_id": "1", **c} for c in CANDIDATES]},
    ).json()["predictions"]
    want = {c["item_id"]: p["rating"] for c, p in zip(CANDIDATES, batch, strict=True)}
    for entry in body["ranked"]:
        assert entry["rating"] == pytest.approx(want[entry["item_id"]], abs=1e-6)
        assert "adapters" not in entry
    cold = {e["item_id"]: e["cold_start"] for e in body["ranked"]}
    assert cold["new-1"] and cold["new-2"] and not cold["10"]


def test_ties_keep_the_request_order_and_top_k_cuts(client):
    # Unknown ids without fields read the same OOV slots, and the tiny tokenizer reads each
    # id as [UNK]: identical inputs, identical ratings.
    ties = [{"item_id": f"x{i}"} for i in range(6)]
    body = client.post("/rank", json={"user_id": "2", "candidates": ties}).json()
    assert len({e["rating"] for e in body["ranked"]}) == 1
    assert [e["item_id"] for e in body["ranked"]] == [f"x{i}" for i in range(6)]
    top = client.post(
        "/rank", json={"user_id": "2", "candidates": CANDIDATES, "top_k": 2, "adapters": True}
    ).json()["ranked"]
    full = client.post("/rank", json={"user_id": "2", "candidates": CANDIDATES}).json()["ranked"]
    assert [e["item_id"] for e in top] == [e["item_id"] for e in full[:2]]
    assert [a["layer"] for a in top[0]["adapters"]] == [1, 2]


def test_user_fields_reach_every_candidate(client):
    plain = client.post("/rank", json={"user_id": "new-u", "candidates": CANDIDATES}).json()
    given = client.post(
        "/rank",
        json={
            "user_id": "new-u",
            "user": {"age": 30, "occupation": "doctor"},
            "candidates": CANDIDATES,
        },
    ).json()
    assert plain["cold_start"] and given["cold_start"]
    a = {e["item_id"]: e["rating"] for e in plain["ranked"]}
    b = {e["item_id"]: e["rating"] for e in given["ranked"]}
    assert all(a[k] != b[k] for k in a)


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"user_id": "1", "candidates": []}, ["body", "candidates"]),
        ({"user_id": "1", "candidates": [{"item_id": ""}]}, ["body", "candidates", 0, "item_id"]),
        (
            {"user_id": "1", "user": {"height": 3}, "candidates": CANDIDATES},
            ["body", "user", "height"],
        ),
        (
            {
                "user_id": "1",
                "candidates": [{"item_id": "a"}, {"item_id": "b", "item": {"author": 1}}],
            },
            ["body", "candidates", 1, "item", "author"],
        ),
        ({"user_id": "1", "candidates": CANDIDATES, "top_k": 0}, ["body", "top_k"]),
        # JSON types are not coerced: true is no count, 2.0 / "2" no integer, 1 no boolean
        ({"user_id": "1", "candidates": CANDIDATES, "top_k": True}, ["body", "top_k"]),
        ({"user_id": "1", "candidates": CANDIDATES, "top_k": 2.0}, ["body", "top_k"]),
        ({"user_id": "1", "candidates": CANDIDATES, "top_k": "2"}, ["body", "top_k"]),
        ({"user_id": "1", "candidates": CANDIDATES, "adapters": 1}, ["body", "adapters"]),
        ({"user_id": "1", "candidates": CANDIDATES, "adapters": "true"}, ["body", "adapters"]),
    ],
)
def test_bad_input_is_422_naming_the_field(client, body, loc):
    r = client.post("/rank", json=body)
    assert r.status_code == 422, r.text
    assert loc in [e["loc"][: len(loc)] for e in r.json()["detail"]], r.json()


def test_too_many_candidates_is_413(client):
    r = client.post("/rank", json={"user_id": "1", "candidates": [{"item_id": "10"}] * 51})
    assert r.status_code == 413 and "at most 50" in r.json()["detail"]


def test_a_boolean_for_a_count_says_what_came(client):
    r = client.post("/rank", json={"user_id": "1", "candidates": CANDIDATES, "top_k": True})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "top_k"]
    assert "integer" in err["msg"] and "got the boolean true" in err["msg"], err


def test_a_repeated_candidate_is_422_naming_the_repeat(client):
    # top_k=2 over [50, 50, 11] used to answer 50 twice
    body = {
        "user_id": "1",
        "candidates": [{"item_id": "50"}, {"item_id": "50"}, {"item_id": "11"}],
        "top_k": 2,
    }
    r = client.post("/rank", json=body)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "candidates", 1, "item_id"]
    assert "'50'" in err["msg"] and "candidate 0" in err["msg"], err
    # the same id with different fields (ambiguous), and ids equal once whitespace is stripped
    body["candidates"] = [
        {"item_id": "new-1", "item": {"title": "Heat (1995)"}},
        {"item_id": "11"},
        {"item_id": " new-1", "item": {"title": "Kolya (1996)"}},
        {"item_id": "11 "},
    ]
    r = client.post("/rank", json=body)
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [
        ["body", "candidates", 2, "item_id"],
        ["body", "candidates", 3, "item_id"],
    ]
    # ids differing in case are different items
    body["candidates"] = [{"item_id": "a"}, {"item_id": "A"}]
    assert client.post("/rank", json=body).status_code == 200


def test_many_repeats_are_listed_up_to_a_bound_and_counted(client):
    from service.scoring import MAX_LISTED_DUPLICATES

    r = client.post("/rank", json={"user_id": "1", "candidates": [{"item_id": "10"}] * 50})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert len(detail) == MAX_LISTED_DUPLICATES + 1
    assert detail[0]["loc"] == ["body", "candidates", 1, "item_id"]
    assert detail[-1]["loc"] == ["body", "candidates"] and "49 in all" in detail[-1]["msg"]
