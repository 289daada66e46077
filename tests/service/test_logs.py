"""The service's own log lines (text and JSON) and the X-Request-ID of every answer.

JSON lines from several workers are checked in test_workers.py; here the text form of the
e2e server, the formats in a fresh interpreter (logging is process-global) and the request
id through the real app in process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from support.load import wait_for
from support.servers import ROOT

from service.app import create_app
from service.middleware import MAX_REQUEST_ID_LENGTH, accepted_request_id
from service.settings import Settings

EMIT = """
import logging, warnings
from service import logs
logs.configure({level!r}, {fmt!r})
logs.set_model_version("m-1")
logging.getLogger("service.engine").info("serving model m-1 from x (ready after 1.0s)")
logging.getLogger("service.engine").debug("a debug line")
token = logs.request_id.set("req-42")
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("service.app").exception("unexpected error on POST /x")
logs.request_id.reset(token)
logging.getLogger("jax").info("library info is quiet")
warnings.warn("a library warning")
"""


def _emit(level: str, fmt: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", EMIT.format(level=level, fmt=fmt)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    return proc.stderr.splitlines()


def test_json_format_is_one_object_per_line_with_context():
    lines = _emit("info", "json")
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    by_message = {r["message"].split(" (")[0]: r for r in records}
    serving = by_message["serving model m-1 from x"]
    assert serving["level"] == "INFO" and serving["logger"] == "service.engine"
    assert serving["model_version"] == "m-1" and serving["request_id"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", serving["time"])
    error = by_message["unexpected error on POST /x"]
    assert error["level"] == "ERROR" and error["request_id"] == "req-42"
    assert "ValueError: boom" in error["exception"]
    warning = next(r for r in records if "a library warning" in r["message"])
    assert warning["logger"] == "py.warnings" and warning["level"] == "WARNING"
    assert not any("debug line" in r["message"] or "quiet" in r["message"] for r in records)


def test_text_format_names_logger_level_and_request_id():
    lines = _emit("debug", "text")
    text = "\n".join(lines)
    assert re.search(r"INFO: +service\.engine: serving model m-1 from x", text), text
    assert re.search(r"DEBUG: +service\.engine: a debug line", text), text
    assert re.search(r"ERROR: +service\.app: unexpected error on POST /x \[request req-42\]", text)
    assert "Traceback" in text and "ValueError: boom" in text
    assert "library info is quiet" not in text  # other libraries: warnings and above
    assert "a library warning" in text


def test_bad_log_settings_are_refused():
    with pytest.raises(ValueError, match="LOG_FORMAT|log_format"):
        Settings(log_format="xml", redis_url=None)
    with pytest.raises(ValueError, match="log_level"):
        Settings(log_level="loud", redis_url=None)
    assert Settings(log_level="WARNING", log_format="JSON", redis_url=None).log_format == "json"


def test_the_e2e_server_prints_its_own_lines_in_text(server):
    serving = r"INFO: +service\.engine: serving model tiny-v1 from \S+ \(ready after [\d.]+s\)"
    # /readyz turns 200 at the swap; the engine logs the line just after it
    wait_for(lambda: re.search(serving, server.log.read_text()), 30)
    text = server.log.read_text()
    assert re.search(serving, text), text[-3000:]
    assert re.search(r"INFO: +service\.engine: model tiny-v1: artifact and entity tables", text)


@pytest.fixture(scope="module")
def client():
    settings = Settings(model_dir="/nonexistent/model", redis_url=None, max_body_bytes=1024)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/no/such/route"])
def test_every_answer_carries_a_request_id(client, path):
    r = client.get(path)
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    mine = "trace-01:abc.DEF_9"
    assert client.get(path, headers={"X-Request-ID": mine}).headers["x-request-id"] == mine


def test_request_id_is_kept_on_errors_and_fresh_per_request(client):
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    r = client.post(
        "/predict-rating",
        content=b"x" * 2048,
        headers={"X-Request-ID": "big-1", "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.headers["x-request-id"] == "big-1"
    r = client.post("/predict-rating", json={"user_id": "1"}, headers={"X-Request-ID": "v-1"})
    assert r.status_code == 422 and r.headers["x-request-id"] == "v-1"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (b"abc-123", "abc-123"),
        (b"  padded  ", "padded"),
        (b"a" * 500, "a" * MAX_REQUEST_ID_LENGTH),
        (b"has space", None),
        (b'quote"d', None),
        (b"line\nbreak", None),
        ("caf\u00e9".encode(), None),
        (b"", None),
        (None, None),
    ],
)
def test_caller_request_ids_are_validated_and_capped(given, kept):
    assert accepted_request_id(given) == kept


def test_an_unacceptable_request_id_is_replaced(client):
    r = client.get("/healthz", headers={"X-Request-ID": "two words"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_of_two_request_ids_the_first_is_kept(client):
    r = client.get("/healthz", headers=[("X-Request-ID", "first-1"), ("X-Request-ID", "second")])
    assert r.headers["x-request-id"] == "first-1"


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the child only formats an id
def test_new_request_ids_are_unique_hex_and_a_forked_worker_draws_its_own_prefix():
    import os

    from service.middleware import new_request_id

    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker forked after ids were drawn: its ids never repeat the parent's
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert child[:16] != ids[0][:16] and child not in ids
