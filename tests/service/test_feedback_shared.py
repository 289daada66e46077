"""``POST /feedback`` across real processes: two replicas sharing one Redis answer the same
corrections; a Redis killed during feedback traffic loses no increment once it is back; the
feedback log keeps every answered event through a ``kill -9`` of the service."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from support.artifacts import TINY_CORRECTIONS
from support.servers import free_port, start_server

from model.corrections import Shrinkage
from model.feedback_format import read_events
from tests.model.test_corrections import offsets_now

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

PAIRS = [("1", "10"), ("2", "11"), ("3", "12"), ("1", "12"), ("4", "new-3")]
NEW_ITEM = {"title": "Heat (1995)"}


def body(user: str, item: str, rating: float | None = None) -> dict:
    out = {"user_id": user, "item_id": item}
    if item.startswith("new-"):
        out["item"] = NEW_ITEM
    if rating is not None:
        out["rating"] = rating
    return out


def logged(directory: Path) -> tuple[list[dict], int]:
    events, skipped = [], 0
    for path in sorted(directory.glob("*.jsonl")):
        got, partial = read_events(path)
        events += got
        skipped += partial
    return events, skipped


def model_ratings(base: str) -> dict[tuple[str, str], float]:
    r = httpx.post(
        f"{base}/predict-rating/batch", json={"requests": [body(*p) for p in PAIRS]}, timeout=30
    )
    return {p: a["model_rating"] for p, a in zip(PAIRS, r.json()["predictions"], strict=True)}


def test_two_replicas_sharing_redis_answer_the_same_corrections(
    artifacts, redis_url, compile_cache, tmp_path
):
    prefix = f"levi:test-fb:{uuid.uuid4().hex[:10]}"
    env = dict(
        REDIS_URL=redis_url,
        LEVI_CORRECTIONS_KEY_PREFIX=prefix,
        LEVI_FEEDBACK_DIR=str(tmp_path / "feedback"),
        LEVI_MAX_BATCH="4",
    )
    with (
        start_server(artifacts.v1, tmp_path / "a.log", compile_cache, **env) as a,
        start_server(artifacts.v1, tmp_path / "b.log", compile_cache, **env) as b,
    ):
        model = model_ratings(a.base)
        rng = np.random.default_rng(7)
        stream = []
        for k in range(12):  # alternate replicas, one event at a time
            user, item = PAIRS[rng.integers(len(PAIRS))]
            rating = float(rng.integers(1, 6))
            target = a if k % 2 == 0 else b
            r = httpx.post(
                f"{target.base}/feedback", json={"events": [body(user, item, rating)]}, timeout=30
            )
            assert r.status_code == 200 and r.json()["corrections"] == "applied", r.text
            stream.append((user, item, model[(user, item)], rating))
        k = Shrinkage.from_json(TINY_CORRECTIONS)
        for user, item in PAIRS:
            want = offsets_now(stream, user, item, k, oov_items={"new-3"})
            answers = [
                httpx.post(f"{s.base}/predict-rating", json=body(user, item), timeout=30).json()
                for s in (a, b)
            ]
            assert answers[0]["rating"] == pytest.approx(answers[1]["rating"], abs=1e-6)
            for got in answers:
                assert got["corrections"]["item"] == pytest.approx(want[0], abs=1e-5)
                assert got["corrections"]["user"] == pytest.approx(want[1], abs=1e-5)
        assert a.value("levi_corrected_entities", side="item") == len({e[1] for e in stream})
        # a request retried on the other replica (its answer was lost): not learned twice
        retried = {"events": [{**body("1", "10", 5.0), "event_id": "retry-1"}]}
        assert httpx.post(f"{a.base}/feedback", json=retried, timeout=30).json()["duplicates"] == 0
        before = httpx.post(f"{a.base}/predict-rating", json=body("1", "10"), timeout=30).json()
        assert httpx.post(f"{b.base}/feedback", json=retried, timeout=30).json()["duplicates"] == 1
        after = httpx.post(f"{b.base}/predict-rating", json=body("1", "10"), timeout=30).json()
        assert after["corrections"] == pytest.approx(before["corrections"], abs=1e-6)
    events, skipped = logged(tmp_path / "feedback")
    assert len(events) == 14 and skipped == 0  # 12, the retried one twice
    assert len(list((tmp_path / "feedback").glob("*.jsonl"))) == 2  # one file per process


@contextlib.contextmanager
def private_redis(directory: Path, port: int):
    """A redis-server of this test (append-only file, fsync always), killable with -9."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server (Debian's redis-server package) is needed for this test"
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port, socket_timeout=1)
    until = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            assert time.monotonic() < until, "private redis-server did not start"
            time.sleep(0.05)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_redis_killed_during_feedback_loses_no_increment(artifacts, compile_cache, tmp_path):
    port = free_port()
    data = tmp_path / "redis"
    prefix = "levi:test-fb"
    events: list[tuple[str, str, float]] = []
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(private_redis(data, port))
        srv = stack.enter_context(
            start_server(
                artifacts.v1,
                tmp_path / "server.log",
                compile_cache,
                REDIS_URL=f"redis://127.0.0.1:{port}/0",
                LEVI_CORRECTIONS_KEY_PREFIX=prefix,
                LEVI_FEEDBACK_DIR=str(tmp_path / "feedback"),
                LEVI_REDIS_BACKOFF_S="0.1",
                LEVI_REDIS_BACKOFF_MAX_S="0.3",
            )
        )
        model = model_ratings(srv.base)
        rng = np.random.default_rng(11)
        statuses: dict[str, int] = defaultdict(int)

        def traffic(n: int) -> None:
            for _ in range(n):
                user, item = PAIRS[rng.integers(len(PAIRS))]
                rating = float(rng.integers(1, 6))
                r = httpx.post(
                    f"{srv.base}/feedback",
                    json={"events": [body(user, item, rating)]},
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                statuses[r.json()["corrections"]] += 1
                events.append((user, item, rating))
                p = httpx.post(f"{srv.base}/predict-rating", json=body(user, item), timeout=30)
                assert p.status_code == 200, p.text

        traffic(10)
        first.send_signal(signal.SIGKILL)  # Redis killed mid-traffic
        first.wait(timeout=10)
        traffic(10)
        assert statuses["kept"] >= 1  # answered from the in-process state meanwhile
        assert srv.value("levi_feedback_replay_backlog") > 0
        stack.enter_context(private_redis(data, port))  # back, from its append-only file
        time.sleep(0.5)  # past the back-off
        traffic(5)
        assert srv.value("levi_feedback_replay_backlog") == 0
        assert srv.value("levi_feedback_replay_total", result="replayed") >= 1
        client = redis.Redis(port=port, decode_responses=True)
        items_hash = client.hgetall(f"{prefix}:{{tiny-v1}}:item")
        users_hash = client.hgetall(f"{prefix}:{{tiny-v1}}:user")
    counts = {k[2:]: v for k, v in items_hash.items() if k.startswith("n:")}
    sums = {k[2:]: v for k, v in items_hash.items() if k.startswith("s:")}
    user_counts = {k[2:]: v for k, v in users_hash.items() if k.startswith("n:")}
    want_n: dict[str, int] = defaultdict(int)
    want_s: dict[str, float] = defaultdict(float)
    want_users: dict[str, int] = defaultdict(int)
    for user, item, rating in events:  # item residuals do not depend on the state
        want_n[item] += 1
        want_s[item] += rating - model[(user, item)]
        want_users[user] += 1
    assert {k: int(v) for k, v in counts.items()} == dict(want_n)
    assert {k: int(v) for k, v in user_counts.items()} == dict(want_users)
    for item, total in want_s.items():
        assert float(sums[item]) == pytest.approx(total, abs=1e-4)


def test_the_log_keeps_every_answered_event_through_kill_9(artifacts, compile_cache, tmp_path):
    directory = tmp_path / "feedback"
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    with start_server(
        artifacts.v1, tmp_path / "server.log", compile_cache, LEVI_FEEDBACK_DIR=str(directory)
    ) as srv:

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(timeout=10) as http:
                while not stop.is_set():
                    batch = [
                        body(*PAIRS[j], float(rng.integers(1, 6)))
                        for j in rng.integers(0, len(PAIRS), 5)
                    ]
                    try:
                        r = http.post(f"{srv.base}/feedback", json={"events": batch})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 200:
                        with lock:
                            answered.extend(r.json()["event_ids"])

        threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        until = time.monotonic() + 30
        while len(answered) < 200 and time.monotonic() < until:
            time.sleep(0.02)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(answered) >= 200
    events, skipped = logged(directory)
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} answered events are not in the log"
    assert skipped <= 1
