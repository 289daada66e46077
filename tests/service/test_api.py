"""Input validation, errors, auth and readiness through the real app, in process.

The app is pointed at a model directory that does not exist, so the real loader
(``model.artifact.load_artifact``) refuses it: every check here happens before scoring, so
no model is needed and the tests run in about a second. The ``user`` / ``item`` fields depend
on the served model's dataset spec: tests/service/test_request_fields.py checks them.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

TOKEN = "an-admin-token-" + "x7Q2pL9w"


@pytest.fixture(scope="module")
def client():
    settings = Settings(
        model_dir="/nonexistent/model",
        redis_url=None,
        max_batch_request=3,
        max_body_bytes=4096,
        admin_token=TOKEN,
    )
    with TestClient(create_app(settings)) as c:
        until = time.monotonic() + 60  # the failed load is reported by /readyz
        while "not loaded" not in c.get("/readyz").json()["detail"]:
            assert time.monotonic() < until, "the failed model load was never reported"
            time.sleep(0.02)
        yield c


OK = {"user_id": "1", "item_id": "10"}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"item_id": "10"}, ["body", "user_id"]),
        ({"user_id": "1"}, ["body", "item_id"]),
        ({**OK, "user_id": ""}, ["body", "user_id"]),
        ({**OK, "user_id": "   "}, ["body", "user_id"]),
        ({**OK, "item_id": "x" * 65}, ["body", "item_id"]),
        ({**OK, "user_id": 7}, ["body", "user_id"]),
        ({**OK, "rating": 5}, ["body", "rating"]),
        ({**OK, "user": ["age", 3]}, ["body", "user"]),
        ({**OK, "item": "Kolya"}, ["body", "item"]),
        ([OK], ["body"]),
    ],
)
def test_invalid_fields_answer_422_naming_the_field(client, body, field):
    r = client.post("/predict-rating", json=body)
    assert r.status_code == 422, r.text
    assert field in [e["loc"] for e in r.json()["detail"]]
    assert all(e["msg"] for e in r.json()["detail"])


def test_batch_entries_are_validated_with_their_index(client):
    r = client.post("/predict-rating/batch", json={"requests": [OK, {"user_id": "1"}]})
    assert r.status_code == 422
    assert ["body", "requests", 1, "item_id"] in [e["loc"] for e in r.json()["detail"]]
    r = client.post("/predict-rating/batch", json={"requests": []})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "requests"]


def test_bad_json_is_400_and_non_json_is_415(client):
    r = client.post(
        "/predict-rating", content=b'{"user_id": "1",', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = client.post("/predict-rating", content=b"user_id=1", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]


def test_too_large_body_and_batch_are_413(client):
    big = {"requests": [{**OK, "item": {"title": "t" * 250}}] * 20}
    r = client.post("/predict-rating/batch", json=big)
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]
    chunked = client.post(
        "/predict-rating",
        content=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413
    r = client.post("/predict-rating/batch", json={"requests": [OK] * 4})
    assert r.status_code == 413 and "at most 3" in r.json()["detail"]


def test_not_ready_answers_503_with_the_reason(client):
    assert client.get("/healthz").json() == {"status": "ok", "model_version": None}
    r = client.get("/readyz")
    assert r.status_code == 503 and "/nonexistent/model" in r.json()["detail"]
    assert "ArtifactError" in r.json()["detail"]  # the real loader's reason
    r = client.post("/predict-rating", json=OK)
    assert r.status_code == 503 and r.headers["retry-after"]
    r = client.get("/v1/model")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "/nonexistent/model" in r.json()["detail"]


def test_a_bug_is_a_500_with_an_incident_id_and_no_retry_after(caplog):
    settings = Settings(model_dir="/nonexistent/model", redis_url=None)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        engine = app.state.engine

        def broken() -> str:
            raise ZeroDivisionError("a fault of ours")

        engine.not_ready_reason = broken  # /v1/model reads it while no model is loaded
        with caplog.at_level("ERROR", logger="service"):
            r = c.get("/v1/model", headers={"X-Request-ID": "incident-7"})
    assert r.status_code == 500
    assert "retry-after" not in r.headers
    assert r.headers["x-request-id"] == "incident-7"
    assert "incident incident-7" in r.json()["detail"]
    assert "ZeroDivisionError" not in r.text  # no internals in the answer
    logged = [rec for rec in caplog.records if "incident incident-7" in rec.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log


def test_admin_needs_the_bearer_token(client):
    assert client.post("/admin/reload").status_code == 401
    r = client.post("/admin/reload", headers={"Authorization": "Bearer wrong-token-123456"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post(
        "/admin/reload", json={"path": "/no/such/dir"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    # A path that is no directory is bad input naming the field; a refused artifact is a 409.
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "path"]
    assert "/no/such/dir" in r.json()["detail"][0]["msg"]
    r = client.post("/admin/reload", json={"path": 5}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "path"]


def test_admin_is_disabled_without_a_token():
    settings = Settings(model_dir="/nonexistent/model", redis_url=None)
    with TestClient(create_app(settings)) as c:
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 403 and "admin disabled" in r.json()["detail"]


def test_metrics_count_requests_by_route_template_not_raw_path(client):
    client.get("/no/such/route/123")
    text = client.get("/metrics").text
    assert 'levi_requests_total{endpoint="/predict-rating",status="422"}' in text
    assert 'endpoint="unmatched",status="404"' in text
    assert "/no/such/route" not in text


def test_the_app_sets_the_serving_collector_thresholds():
    import gc

    from service.engine import COLLECTOR_THRESHOLDS

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # CPython's default
        create_app(Settings(model_dir="/nonexistent/model", redis_url=None))
        assert gc.get_threshold() == COLLECTOR_THRESHOLDS
    finally:
        gc.set_threshold(*before)
