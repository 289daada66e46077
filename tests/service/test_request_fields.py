"""The ``user`` / ``item`` objects follow the served model's dataset spec (in process).

The tiny artifact declares users ``age`` (numeric), ``gender``, ``occupation``, ``zip_code``
(categorical) and items ``title`` (text) and ``genres`` (multi_categorical); see
tests/service/conftest.py.
"""

from __future__ import annotations

import pytest
from conftest import ITEMS, loaded_client

OK = {"user_id": "1", "item_id": "10"}


@pytest.fixture(scope="module")
def client(artifacts, compile_cache):
    with loaded_client(artifacts.v1, compile_cache) as c:
        yield c


@pytest.mark.parametrize(
    "body, field",
    [
        ({**OK, "user": {"age": "old"}}, ["body", "user", "age"]),
        ({**OK, "user": {"age": True}}, ["body", "user", "age"]),
        ({**OK, "user": {"height": 180}}, ["body", "user", "height"]),
        ({**OK, "user": {"title": "Kolya"}}, ["body", "user", "title"]),  # an item field
        ({**OK, "user": {"occupation": ["doctor"]}}, ["body", "user", "occupation"]),
        ({**OK, "item": {"title": 7}}, ["body", "item", "title"]),
        ({**OK, "item": {"title": "t" * 20_001}}, ["body", "item", "title"]),
        ({**OK, "item": {"genres": "Comedy"}}, ["body", "item", "genres"]),
        ({**OK, "item": {"genres": ["G"] * 257}}, ["body", "item", "genres"]),
        ({**OK, "item": {"genres": [""]}}, ["body", "item", "genres", 0]),
        ({**OK, "item": {"author": "Someone"}}, ["body", "item", "author"]),
    ],
)
def test_unknown_field_or_wrong_type_is_422_naming_it(client, body, field):
    r = client.post("/predict-rating", json=body)
    assert r.status_code == 422, r.text
    locs = [e["loc"][: len(field)] for e in r.json()["detail"]]
    assert field in locs, r.json()


def test_unknown_field_message_lists_the_models_fields(client):
    r = client.post("/predict-rating", json={**OK, "item": {"author": "X"}})
    (err,) = r.json()["detail"]
    assert "title" in err["msg"] and "genres" in err["msg"], err


def test_batch_field_errors_carry_the_entry_index(client):
    body = {"requests": [OK, {**OK, "item": {"year": 1999}}]}
    r = client.post("/predict-rating/batch", json=body)
    assert r.status_code == 422
    assert ["body", "requests", 1, "item", "year"] in [e["loc"] for e in r.json()["detail"]]


def test_declared_fields_are_accepted_and_used(client):
    base = client.post("/predict-rating", json={"user_id": "9", "item_id": "new-1"}).json()
    assert any("without fields" in w for w in base["warnings"])
    r = client.post(
        "/predict-rating",
        json={
            "user_id": "9",
            "item_id": "new-1",
            "user": {"age": 30, "occupation": "doctor", "zip_code": 2139},  # int zip: accepted
            "item": {"title": "Heat (1995)", "genres": ["Action", "Crime"]},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] == {"user": True, "item": True}
    assert body["rating"] != base["rating"]  # the fields reach the model
    assert any("answered from the request's item fields" in w for w in body["warnings"])


def test_categorical_values_are_read_as_training_read_them(client):
    """A code sent as a number or a boolean is the same category as its text form."""
    url = "/predict-rating"

    def rating(user):
        r = client.post(url, json={**OK, "user_id": "77", "user": user})
        assert r.status_code == 200, r.text
        return r.json()["rating"]

    assert rating({"zip_code": "55105"}) == rating({"zip_code": 55105})
    assert rating({"zip_code": 55105.0}) == rating({"zip_code": 55105})
    assert rating({"occupation": True}) == rating({"occupation": "True"})


def test_long_text_is_truncated_with_a_warning_not_refused(client):
    title = " ".join(["kolya"] * 400)  # far over the tiny backbone's 32 tokens
    r = client.post("/predict-rating", json={**OK, "item": {"title": title}})
    assert r.status_code == 200, r.text
    assert any("truncated" in w for w in r.json()["warnings"]), r.json()


def test_unknown_vocabulary_values_warn(client):
    r = client.post("/predict-rating", json={**OK, "item": {"genres": ["Space Opera"]}})
    assert r.status_code == 200
    assert any(w.startswith("item.genres") for w in r.json()["warnings"]), r.json()


def test_model_summary_lists_fields_types_and_the_split(client):
    info = client.get("/v1/model").json()
    fields = {e: {f["name"]: f["kind"] for f in fs} for e, fs in info["dataset"]["fields"].items()}
    assert fields == {
        "user": {
            "age": "numeric",
            "gender": "categorical",
            "occupation": "categorical",
            "zip_code": "categorical",
        },
        "item": {"title": "text", "genres": "multi_categorical"},
    }
    assert info["dataset"]["name"] == "tiny-service"
    assert info["dataset"]["split"]["kind"] == "item_attribute"
    assert info["rating_range"] == [1.0, 5.0]
    assert {i["item_id"] for i in ITEMS} and info["n_items"] == len(ITEMS)


def test_openapi_shows_the_served_models_fields(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    item = schema["ItemFields"]
    assert set(item["properties"]) == {"title", "genres"}
    assert item["additionalProperties"] is False
