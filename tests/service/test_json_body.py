"""The hot routes parse their bodies themselves (service/json_body.py): every bad body gets
the answer a declared FastAPI body parameter gets, through the app's own error handler."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient

from service.app import _validation_error
from service.json_body import is_json_content_type, parsed_body
from service.schemas import PredictRequest, RankRequest


def _twin_app() -> FastAPI:
    """One model behind a declared body (FastAPI's parsing) and behind :func:`parsed_body`."""
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.post("/declared/predict")
    async def declared_predict(body: PredictRequest) -> dict:
        return body.model_dump()

    @app.post("/parsed/predict")
    async def parsed_predict(request: Request) -> dict:
        return (await parsed_body(request, PredictRequest)).model_dump()

    @app.post("/declared/rank")
    async def declared_rank(body: RankRequest) -> dict:
        return body.model_dump()

    @app.post("/parsed/rank")
    async def parsed_rank(request: Request) -> dict:
        return (await parsed_body(request, RankRequest)).model_dump()

    return app


JSON = {"content-type": "application/json"}
CASES = [
    ("predict", b'{"user_id": "1", "item_id": "2"}', JSON),
    ("predict", b'{"user_id": " 1 ", "item_id": "2", "item": {"title": "x"}}', JSON),
    ("predict", b'{"user_id": "1"}', JSON),  # a field missing
    ("predict", b'{"user_id": 1, "item_id": "2"}', JSON),  # a number for an id
    ("predict", b'{"user_id": "", "item_id": "2"}', JSON),  # too short after stripping
    ("predict", b'{"user_id": "1", "item_id": "2", "extra": 3}', JSON),  # forbidden field
    ("predict", b'{"user_id": "1", "item_id": "2", "item": [1]}', JSON),  # not an object
    ("predict", b"[1, 2]", JSON),  # not an object at all
    ("predict", b"null", JSON),
    ("predict", b"3", JSON),
    (
        "predict",
        b'{"user_id": "1", "item_id": "2", "user": {"age": NaN}}',
        JSON,
    ),  # json.loads reads NaN
    ("predict", b'{"user_id": "1", "item_id": "\\ud800"}', JSON),  # a lone surrogate
    ("predict", b"", JSON),  # no body
    ("predict", b'{"user_id": "1", "item_id": "2"}', {}),  # no Content-Type: 415
    (
        "predict",
        b'{"user_id": "1", "item_id": "2"}',
        {"content-type": "application/json; charset=utf-8"},
    ),
    ("predict", b'{"user_id": "1", "item_id": "2"}', {"content-type": "application/vnd.api+json"}),
    ("predict", b'{"user_id": "1", "item_id": "2"}', {"content-type": "text/plain"}),  # 415
    ("predict", b"user_id=1", {"content-type": "application/x-www-form-urlencoded"}),
    ("rank", b'{"user_id": "1", "candidates": [{"item_id": "2"}, {"item_id": "3"}]}', JSON),
    ("rank", b'{"user_id": "1", "candidates": []}', JSON),  # min_length
    ("rank", b'{"user_id": "1", "candidates": [{"item_id": "2"}, {"itm": "3"}]}', JSON),
    ("rank", b'{"user_id": "1", "candidates": [{"item_id": "2"}], "top_k": 0}', JSON),
    ("rank", b'{"user_id": "1", "candidates": [{"item_id": "2"}], "top_k": "3"}', JSON),
    ("rank", b'{"user_id": "1", "candidates": [{"item_id": "2"}], "top_k": 2.5}', JSON),
    ("rank", b'{"user_id": "1", "candidates": [{"item_id": "2"}], "adapters": 1}', JSON),
    ("rank", b'{"user_id": "1", "candidates": [{"item_id": "2"}], "top_k": true}', JSON),
]


@pytest.mark.parametrize(("route", "body", "headers"), CASES)
def test_parsed_bodies_answer_as_declared_ones(route, body, headers):
    client = TestClient(_twin_app())
    declared = client.post(f"/declared/{route}", content=body, headers=headers)
    parsed = client.post(f"/parsed/{route}", content=body, headers=headers)
    assert parsed.status_code == declared.status_code, (parsed.json(), declared.json())
    assert parsed.json() == declared.json()


@pytest.mark.parametrize(
    "body", [b'{"user_id": "1",', b'{"user_id": "1" "item_id": "2"}', b"\xff\xfe", b"{]"]
)
def test_bytes_that_are_not_json_are_400_on_both(body):
    client = TestClient(_twin_app())
    for prefix in ("declared", "parsed"):
        r = client.post(f"/{prefix}/predict", content=body, headers=JSON)
        assert r.status_code == 400, r.json()
        assert r.json()["detail"].startswith("request body is not valid JSON")


@pytest.mark.parametrize(
    ("value", "json"),
    [
        (None, False),  # FastAPI's strict content type: no header, no JSON
        ("", False),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/JSON", True),
        ("application/problem+json", True),
        ("application/jsonx", False),
        ("application/json-patch", False),
        ("text/json", False),
        ("text/plain", False),
        ("multipart/form-data; boundary=x", False),
    ],
)
def test_which_content_types_are_read_as_json(value, json):
    assert is_json_content_type(value) is json


@pytest.mark.parametrize("prefix", ["declared", "parsed"])
def test_a_client_gone_mid_body_is_a_400_not_an_unexpected_error(prefix):
    """The body never arrives whole (the client left, or the receive deadline closed it):
    FastAPI answers its 400 (dropped on a closed connection); never a 500 with a traceback."""
    import asyncio

    app = _twin_app()

    @app.exception_handler(Exception)
    async def unexpected(request, exc):  # what the service's catch-all would log as a bug
        raise AssertionError(f"unexpected error: {exc!r}")

    sent: list[dict] = []
    messages = iter(
        [
            {"type": "http.request", "body": b'{"user_id": "1",', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/{prefix}/predict",
        "raw_path": f"/{prefix}/predict".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400


def test_a_request_route_refuses_endpoints_it_would_not_fill_in():
    from fastapi import APIRouter, Depends

    from service.raw_route import RequestRoute

    router = APIRouter()

    async def takes_more(request: Request, top_k: int = 3):
        return None

    async def only_request(request: Request):
        return None

    with pytest.raises(TypeError, match="takes only the request"):
        router.add_api_route("/x", takes_more, methods=["POST"], route_class_override=RequestRoute)
    with pytest.raises(TypeError, match="no dependencies"):
        router.add_api_route(
            "/y",
            only_request,
            methods=["POST"],
            route_class_override=RequestRoute,
            dependencies=[Depends(lambda: None)],
        )
    router.add_api_route("/z", only_request, methods=["POST"], route_class_override=RequestRoute)
