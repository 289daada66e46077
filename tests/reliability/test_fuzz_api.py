"""Property-based fuzzing of the prediction API over real HTTP: never a 5xx.

Hypothesis strategies follow the request schemas (service/schemas.py, service/openapi.json,
and the tiny model's request fields, service/entity_fields.py):
near-valid bodies whose fields take wrong types, out-of-range numbers, huge or unicode
strings (lone surrogates included), extra keys and nested junk; arbitrary JSON; raw bytes
with assorted content types. Each property runs a bounded number of examples against the
one reliability server; every answer must be < 500, a 200 must be a well-formed prediction,
and an error must say why (``detail``). (schemathesis is not a project dependency, so the
strategies are written here from the schemas.)
"""

from __future__ import annotations

import json
import math
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.load import start_server

from service.entity_fields import MAX_LIST_VALUES as MAX_GENRES
from service.entity_fields import MAX_VALUE_CHARS as MAX_TITLE_LENGTH
from service.schemas import MAX_ID_LENGTH

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

EXAMPLES = 150
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
VERSIONS = {"tiny-v1", "tiny-v2"}

# Text of every kind: all of unicode including lone surrogates and controls, and long runs.
any_char = st.characters(codec=None, exclude_categories=())
texts = st.one_of(
    st.text(any_char, max_size=80),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\ud800",
            "\udfff",
            "1\u0000",
            "😀" * 40,
            "٣",
            "Ⅻ",
            "\u202e196",
            "null",
            "NaN",
            "1e309",
            "-0",
            "0x10",
            "<script>",
        ]
    ),
    st.integers(MAX_ID_LENGTH - 2, MAX_ID_LENGTH + 2).map(lambda n: "7" * n),
    st.integers(MAX_TITLE_LENGTH - 2, MAX_TITLE_LENGTH + 2).map(lambda n: "t" * n),
    st.integers(1_000, 200_000).map(lambda n: "x" * n),
)
numbers = st.one_of(
    st.integers(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 120, 121, 1e308, -1e308, 2**63, -(2**63) - 1, 0.5, True, False]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(any_char, max_size=10), inner, max_size=5),
    ),
    max_leaves=20,
)
ids = st.one_of(st.sampled_from(["1", "2", "3", "4", "10", "11", "12", "999"]), texts, json_values)


def _maybe(key: str, values) -> st.SearchStrategy[dict]:
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


users = st.one_of(
    json_values,
    st.tuples(
        _maybe("age", st.one_of(numbers, texts, json_values)),
        _maybe("gender", st.one_of(texts, json_values)),
        _maybe("occupation", st.one_of(texts, st.sampled_from(["doctor", "writer"]))),
        _maybe("zip_code", st.one_of(texts, numbers)),
        _maybe(
            "junk", json_values
        ),  # an unknown key: 422 (extra="forbid"), never an internal error
    ).map(lambda parts: {k: v for p in parts for k, v in p.items()}),
)
items = st.one_of(
    json_values,
    st.tuples(
        _maybe("title", st.one_of(texts, json_values)),
        _maybe(
            "genres",
            st.one_of(
                st.lists(
                    st.one_of(texts, st.sampled_from(["Comedy", "Action"])), max_size=MAX_GENRES + 2
                ),
                json_values,
            ),
        ),
    ).map(lambda parts: {k: v for p in parts for k, v in p.items()}),
)
# Schema-valid bodies with arbitrary contents: these reach the scorer (rendering, tokenizer,
# cache keys), where unicode and odd values could still break something.
short = st.text(any_char, min_size=1, max_size=MAX_ID_LENGTH).filter(lambda s: s.strip())
valid_bodies = st.fixed_dictionaries(
    {
        "user_id": st.one_of(st.sampled_from(["1", "2", "999"]), short),
        "item_id": st.one_of(st.sampled_from(["10", "12", "x"]), short),
    },
    optional={
        "user": st.fixed_dictionaries(
            {},
            optional={
                "age": st.integers(0, 120),
                "gender": short,
                "occupation": short,
                "zip_code": st.text(any_char, min_size=1, max_size=16).filter(lambda s: s.strip()),
            },
        ),
        "item": st.fixed_dictionaries(
            {},
            optional={
                "title": st.text(any_char, min_size=1, max_size=MAX_TITLE_LENGTH).filter(
                    lambda s: s.strip()
                ),
                "genres": st.lists(short, max_size=MAX_GENRES),
            },
        ),
    },
)
predict_bodies = st.one_of(
    valid_bodies,
    valid_bodies,  # half of the bodies are schema-valid
    st.tuples(
        _maybe("user_id", ids),
        _maybe("item_id", ids),
        _maybe("user", users),
        _maybe("item", items),
        _maybe("extra", json_values),
    ).map(lambda parts: {k: v for p in parts for k, v in p.items()}),
    json_values,
)
batch_bodies = st.one_of(
    st.lists(valid_bodies, min_size=1, max_size=12).map(lambda r: {"requests": r}),
    st.lists(predict_bodies, max_size=12).map(lambda r: {"requests": r}),
    st.dictionaries(st.sampled_from(["requests", "request", "extra"]), json_values, max_size=2),
    json_values,
)


def _post(base: str, path: str, body) -> httpx.Response:
    # allow_nan: Python's encoder writes NaN/Infinity, as a careless client would.
    content = json.dumps(body, allow_nan=True).encode()
    return httpx.post(
        base + path, content=content, headers={"Content-Type": "application/json"}, timeout=60
    )


STATUSES: dict[int, int] = {}  # what the fuzzing got, shown with -s


def _check_answer(r: httpx.Response, body) -> None:
    STATUSES[r.status_code] = STATUSES.get(r.status_code, 0) + 1
    assert r.status_code < 500, f"{r.status_code} for {str(body)[:300]!r}: {r.text[:500]}"
    data = r.json()
    if r.status_code == 200:
        for p in data.get("predictions", [data]):
            assert math.isfinite(p["rating"]) and 1.0 <= p["rating"] <= 5.0, p
            assert p["model_version"] in VERSIONS and p["adapters"], p
    else:
        assert data.get("detail"), r.text[:500]


@FUZZ
@given(body=predict_bodies)
@example(body={"user_id": "\ud800", "item_id": "10"})
@example(body={"user_id": "1", "item_id": "10", "user": {"occupation": "\udfff"}})
@example(body={"user_id": "1", "item_id": "x", "item": {"title": "\ud800\udc00", "genres": []}})
@example(body={"user_id": "1", "item_id": "10", "user": {"age": float("nan")}})
@example(body={"user_id": "1", "item_id": "10", "user": {"age": 2**70}})
@example(body={"user_id": "1\x00", "item_id": "\u202e10"})
def test_predict_rating_never_answers_5xx(rel_server, body):
    _check_answer(_post(rel_server.base, "/predict-rating", body), body)


@FUZZ
@given(body=batch_bodies)
@example(body={"requests": [{"user_id": "\ud800", "item_id": "10"}] * 3})
@example(body={"requests": [{"user_id": str(k), "item_id": "10"} for k in range(1001)]})
def test_predict_rating_batch_never_answers_5xx(rel_server, body):
    _check_answer(_post(rel_server.base, "/predict-rating/batch", body), body)


@settings(FUZZ, max_examples=60)
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.text(any_char, max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
        st.integers(1, 20_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.just(b'{"user_id": "1", "item_id": "10"'),  # truncated
        st.just(b'{"user_id": "1", "item_id": "10", "user_id": 5}'),  # duplicate key
    ),
    content_type=st.sampled_from(
        [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
            "application/json; charset=latin-1",
            "multipart/form-data; boundary=x",
        ]
    ),
    path=st.sampled_from(["/predict-rating", "/predict-rating/batch"]),
)
def test_raw_bodies_never_answer_5xx(rel_server, raw, content_type, path):
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(rel_server.base + path, content=raw, headers=headers, timeout=60)
    assert r.status_code < 500, f"{r.status_code} for {raw[:200]!r} ({content_type}): {r.text}"


# Feedback events: schema-valid pairs with ratings of every kind, near-valid events, junk.
ratings = st.one_of(
    st.floats(1.0, 5.0),
    st.integers(1, 5),
    numbers,
    texts,
    json_values,
    st.sampled_from([float("nan"), float("inf"), -float("inf")]),
)
timestamps = st.one_of(st.integers(0, 2**31), st.integers(), texts, st.datetimes().map(str))
valid_events = st.tuples(valid_bodies, st.floats(1.0, 5.0), _maybe("timestamp", timestamps)).map(
    lambda t: {**t[0], "rating": t[1], **t[2]}
)
events = st.one_of(
    valid_events,
    valid_events,
    st.tuples(
        predict_bodies,
        _maybe("rating", ratings),
        _maybe("timestamp", timestamps),
        _maybe("event_id", st.one_of(texts, json_values, st.uuids().map(str))),
    ).map(lambda t: {**t[0], **t[1], **t[2], **t[3]} if isinstance(t[0], dict) else t[0]),
)
feedback_bodies = st.one_of(
    st.lists(valid_events, min_size=1, max_size=8).map(lambda e: {"events": e}),
    st.lists(events, max_size=8).map(lambda e: {"events": e}),
    st.dictionaries(st.sampled_from(["events", "event", "extra"]), json_values, max_size=2),
    json_values,
)


@pytest.fixture(scope="module")
def feedback_server(artifacts, compile_cache, redis_url, tmp_path_factory):
    """A server of its own: the fuzzed feedback moves its corrections, not rel_server's."""
    work = tmp_path_factory.mktemp("fuzz-feedback")
    prefix = f"levi:fuzz:{uuid.uuid4().hex[:12]}"
    with start_server(
        artifacts.v1,
        work / "server.log",
        compile_cache,
        REDIS_URL=redis_url,
        LEVI_CACHE_KEY_PREFIX=prefix,
        LEVI_CORRECTIONS_KEY_PREFIX=f"{prefix}:fb",
        LEVI_FEEDBACK_DIR=str(work / "feedback"),
        LEVI_MAX_BATCH="8",
    ) as srv:
        srv.feedback_dir = work / "feedback"
        yield srv


ACCEPTED: list[str] = []


@FUZZ
@given(body=feedback_bodies)
@example(body={"events": [{"user_id": "1", "item_id": "10", "rating": float("nan")}]})
@example(body={"events": [{"user_id": "1", "item_id": "10", "rating": 1e308}]})
@example(body={"events": [{"user_id": "1", "item_id": "10", "rating": 3, "timestamp": 2**70}]})
@example(
    body={
        "events": [{"user_id": "\ud800", "item_id": "x", "rating": 5, "item": {"title": "\udfff"}}]
    }
)
def test_feedback_never_answers_5xx_and_logs_what_it_accepts(feedback_server, body):
    r = _post(feedback_server.base, "/feedback", body)
    STATUSES[r.status_code] = STATUSES.get(r.status_code, 0) + 1
    assert r.status_code < 500, f"{r.status_code} for {str(body)[:300]!r}: {r.text[:500]}"
    if r.status_code == 200:
        answer = r.json()
        assert answer["accepted"] == len(body["events"]) == len(answer["event_ids"])
        ACCEPTED.extend(answer["event_ids"])
    else:
        assert r.json().get("detail"), r.text[:500]


def test_every_accepted_fuzzed_event_is_in_the_log(feedback_server):
    from model.feedback_format import read_events

    logged = [
        e["event_id"]
        for p in feedback_server.feedback_dir.glob("*.jsonl")
        for e in read_events(p)[0]
    ]
    assert ACCEPTED and sorted(logged) == sorted(ACCEPTED)
    r = _post(feedback_server.base, "/predict-rating", {"user_id": "1", "item_id": "10"})
    assert r.status_code == 200 and 1.0 <= r.json()["rating"] <= 5.0


def test_oversized_body_is_413_and_the_server_stays_ready(rel_server):
    print(f"fuzzed statuses: {dict(sorted(STATUSES.items()))}")
    big = {"user_id": "1", "item_id": "10", "item": {"title": "x" * (3 * 1024 * 1024)}}
    r = _post(rel_server.base, "/predict-rating", big)
    assert r.status_code == 413, r.text
    assert httpx.get(f"{rel_server.base}/readyz", timeout=10).status_code == 200
