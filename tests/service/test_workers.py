"""``python -m service --workers 2`` over real HTTP: one readiness, one set of metrics, one
reload, JSON logs.

Every request opens its own connection, so the kernel spreads them over both workers (the
test checks that both served predictions, from their metric files). A scrape of either
worker must count every request; no prediction may get 503 once ``/readyz`` has answered
200; a reload must reach both workers without a failed request; a worker that is killed
leaves the scrape, and its replacement serves the model the other one does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from support.load import wait_for
from support.servers import ADMIN_TOKEN, launch_server, wait_ready

pytestmark = [pytest.mark.e2e]

PAIRS = [{"user_id": str(u), "item_id": str(i)} for u in range(1, 5) for i in (10, 11, 12)]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _children(pid: int) -> list[int]:
    """The child processes of uvicorn's supervisor (Linux /proc): the workers, and
    multiprocessing's resource tracker."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _scrape(base: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=10).text  # a new connection each time
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _predictions_200(samples: dict) -> float:
    return samples.get(
        ("levi_requests_total", (("endpoint", "/predict-rating"), ("status", "200"))), 0.0
    )


def _per_worker_counts(shared: Path) -> dict[int, float]:
    """Predictions answered 200 per worker pid, read from each worker's own counter file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    out = {}
    for file in shared.glob("counter_*.db"):
        pid = int(file.stem.split("_")[1])
        for family in MultiProcessCollector.merge([str(file)]):
            for s in family.samples:
                if s.name == "levi_requests_total" and s.labels == {
                    "endpoint": "/predict-rating",
                    "status": "200",
                }:
                    out[pid] = s.value
    return out


def _worker_pids(samples: dict) -> dict[int, str]:
    """pid -> model version of every live worker, from ``levi_model_info``."""
    return {
        int(dict(labels)["pid"]): dict(labels)["model_version"]
        for (name, labels) in samples
        if name == "levi_model_info"
    }


@pytest.fixture(scope="module")
def two_workers(artifacts, compile_cache, tmp_path_factory):
    """``--workers 2`` with JSON logs; its shared directory lands in its own TMPDIR."""
    work = tmp_path_factory.mktemp("two-workers")
    tmp = work / "tmp"
    tmp.mkdir()
    log = work / "server.log"
    with launch_server(
        artifacts.v1,
        log,
        compile_cache,
        LEVI_WORKERS="2",
        LEVI_LOG_FORMAT="json",
        LEVI_ADMIN_TOKEN=ADMIN_TOKEN,
        TMPDIR=str(tmp),
        LEVI_MAX_BATCH="4",
    ) as srv:
        yield srv, tmp
    assert not list(tmp.glob("levi-workers-*")), "the shared directory outlived the server"


def test_no_503_after_readyz_answers_200(two_workers):
    server, _ = two_workers
    statuses: list[int] = []
    # From the moment it starts: predictions answer 503 while loading, and never after
    # /readyz has answered 200 once (whichever worker answered it).
    until = time.monotonic() + 240
    while time.monotonic() < until:
        assert server.proc.poll() is None, server.log.read_text()[-4000:]
        try:
            r = httpx.post(f"{server.base}/predict-rating", json=PAIRS[0], timeout=30)
            statuses.append(r.status_code)
            if httpx.get(f"{server.base}/readyz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:  # not listening yet
            pass
        time.sleep(0.05)
    else:
        pytest.fail("never ready:\n" + server.log.read_text()[-4000:])
    after: list[int] = []

    def fire() -> None:
        for pair in PAIRS:
            after.append(
                httpx.post(f"{server.base}/predict-rating", json=pair, timeout=30).status_code
            )

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert after and set(after) == {200}, f"after ready: {after}"
    assert set(statuses) <= {200, 503}, statuses
    body = httpx.get(f"{server.base}/readyz", timeout=5).json()
    assert body == {"status": "ready", "model_version": "tiny-v1"}


def test_a_scrape_of_any_worker_counts_every_request(two_workers):
    server, tmp = two_workers
    wait_ready(server.base, server.proc, server.log)
    (shared,) = tmp.glob("levi-workers-*")
    before = _predictions_200(_scrape(server.base))
    sent = 0
    deadline = time.monotonic() + 60
    while True:  # until both workers have answered some (the kernel picks who accepts)
        for _ in range(20):
            pair = PAIRS[sent % len(PAIRS)]
            r = httpx.post(f"{server.base}/predict-rating", json=pair, timeout=30)
            assert r.status_code == 200, r.text
            sent += 1
        per_worker = _per_worker_counts(shared)
        if len(per_worker) == 2 and all(v > 0 for v in per_worker.values()):
            break
        assert time.monotonic() < deadline, f"one worker answered everything: {per_worker}"
    for _ in range(10):  # scrapes land on either worker; each must see the sum
        samples = _scrape(server.base)
        assert _predictions_200(samples) == before + sent
        assert _predictions_200(samples) == sum(per_worker.values())
        assert samples[("levi_predictions_total", ())] >= before + sent
        assert not any(name.endswith("_created") for name, _ in samples)
    info = {
        dict(labels)["pid"]: v for (name, labels), v in samples.items() if name == "levi_model_info"
    }
    assert sorted(int(p) for p in info) == sorted(per_worker), info
    assert set(info.values()) == {1.0}


def test_a_damaged_metrics_file_leaves_the_scrape_working(two_workers):
    """A 0-byte value file (a worker killed between creating and sizing it) made every
    /metrics a 503: now it is left out, counted and logged, and removed when its worker is
    gone; a live process's is left in place."""
    server, tmp = two_workers
    wait_ready(server.base, server.proc, server.log)
    (shared,) = tmp.glob("levi-workers-*")
    before = _scrape(server.base)
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid runs no more: a dead worker's
    dead = shared / f"counter_{gone.pid}.db"
    dead.write_bytes(b"")
    alive = shared / f"summary_{server.proc.pid}.db"  # uvicorn's supervisor runs
    alive.write_bytes(b"")
    try:
        for _ in range(4):  # either worker answers
            r = httpx.get(f"{server.base}/metrics", timeout=10)
            assert r.status_code == 200, r.text
        samples = _scrape(server.base)
    finally:
        alive.unlink()
    assert _predictions_200(samples) == _predictions_200(before)
    assert not dead.exists()

    def damaged(samples: dict, action: str) -> float:
        return samples.get(("levi_metrics_damaged_files_total", (("action", action),)), 0.0)

    assert damaged(samples, "removed") == damaged(before, "removed") + 1
    assert damaged(samples, "skipped") == damaged(before, "skipped") + 5  # once per scrape
    assert "left out of the scrape" in server.log.read_text()


def test_reload_reaches_every_worker_without_a_failed_request(two_workers, artifacts):
    server, tmp = two_workers
    wait_ready(server.base, server.proc, server.log)
    before = _worker_pids(_scrape(server.base))
    assert set(before.values()) == {"tiny-v1"} and len(before) == 2
    url = f"{server.base}/admin/reload"
    # A refused artifact is refused by every worker, and each keeps its model.
    broken = tmp / "wrong-format"
    shutil.copytree(artifacts.v1, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    r = httpx.post(url, json={"path": str(broken)}, headers=ADMIN, timeout=120)
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "format_version 99" in detail and "still serving model tiny-v1" in detail
    assert "(in 2 of 2 workers)" in detail
    assert _worker_pids(_scrape(server.base)) == before

    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = httpx.post(f"{server.base}/predict-rating", json=PAIRS[1], timeout=60)
            statuses.append(r.status_code)
            if r.status_code == 200:
                versions.add(r.json()["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        r = httpx.post(url, json={"path": str(artifacts.v2)}, headers=ADMIN, timeout=300)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert r.status_code == 200, r.text
    assert r.json()["previous_version"] == "tiny-v1" and r.json()["model_version"] == "tiny-v2"
    # The answer came once both workers serve the new model, in place (same processes).
    assert _worker_pids(_scrape(server.base)) == dict.fromkeys(before, "tiny-v2")
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert versions == {"tiny-v1", "tiny-v2"}
    assert httpx.get(f"{server.base}/readyz", timeout=5).json()["model_version"] == "tiny-v2"
    # A worker announces the new model (what the answer waited for) from the swap on, and
    # counts its reload only after the GC freeze that follows it: wait for both counts.
    success = ("levi_model_reloads_total", (("result", "success"),))
    wait_for(lambda: _scrape(server.base).get(success, 0.0) >= 2, 30)
    samples = _scrape(server.base)
    assert samples[success] == 2  # per worker
    assert samples[("levi_model_reloads_total", (("result", "failure"),))] == 2


def _json_lines(log: Path) -> list[dict]:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")
    return out


def _serving_lines(records: list[dict]) -> list[dict]:
    """The lines in which a worker says which model it serves (once warm)."""
    return [r for r in records if r["message"].startswith("serving model tiny-v")]


def test_json_logs_one_object_per_line_with_model_version_and_request_id(two_workers):
    server, tmp = two_workers
    wait_ready(server.base, server.proc, server.log)
    # /readyz answers 200 once every worker has swapped its model in; each logs "serving
    # model" only after the GC freeze that follows: wait for both lines.
    wait_for(lambda: len(_serving_lines(_json_lines(server.log))) >= 2, 30)
    records = _json_lines(server.log)
    keys = {"time", "level", "logger", "message", "model_version", "request_id"}
    assert all(keys <= set(r) for r in records), [r for r in records if not keys <= set(r)]
    serving = _serving_lines(records)
    assert len(serving) >= 2, "each worker logs the model it serves"
    assert all(r["logger"] == "service.engine" and r["level"] == "INFO" for r in serving)
    assert all(r["message"].startswith(f"serving model {r['model_version']} ") for r in serving)
    assert any(r["logger"].startswith("uvicorn") for r in records), "uvicorn's own lines"
    # A line logged while handling a request carries its id (a directory that is no artifact:
    # every worker refuses it).
    empty = tmp / "not-an-artifact"
    empty.mkdir(exist_ok=True)
    r = httpx.post(
        f"{server.base}/admin/reload",
        json={"path": str(empty)},
        headers={**ADMIN, "X-Request-ID": "logged-1"},
        timeout=120,
    )
    assert r.status_code == 409 and r.headers["x-request-id"] == "logged-1", r.text
    deadline = time.monotonic() + 10
    while not (lines := [r for r in _json_lines(server.log) if r["request_id"] == "logged-1"]):
        assert time.monotonic() < deadline, "no log line carries the request id"
        time.sleep(0.1)
    refused = [r for r in lines if r["level"] == "WARNING"]
    assert refused and "change refused by 2 of 2 workers" in refused[0]["message"]
    assert refused[0]["logger"] == "service.engine"


def test_a_killed_worker_is_replaced_with_the_reloaded_model_and_counters_stay(two_workers):
    server, _ = two_workers
    wait_ready(server.base, server.proc, server.log)
    total = _predictions_200(_scrape(server.base))
    workers = _worker_pids(_scrape(server.base))
    assert len(workers) == 2 and set(workers) <= set(_children(server.proc.pid))
    version = set(workers.values())  # tiny-v2 after the reload test, tiny-v1 run alone
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        samples = _scrape(server.base)
        assert _predictions_200(samples) == total, "counters must not go down"
        now = _worker_pids(samples)
        if victim not in now and len(now) == 2:
            break  # gone from the scrape, and uvicorn's replacement serves
        time.sleep(0.2)
    else:
        pytest.fail(f"worker {victim} not replaced:\n{server.log.read_text()[-3000:]}")
    assert set(now) <= set(_children(server.proc.pid))
    assert set(now.values()) == version, "the new worker serves what the others serve"
    assert httpx.get(f"{server.base}/readyz", timeout=5).status_code == 200
    r = httpx.post(f"{server.base}/predict-rating", json=PAIRS[0], timeout=30)
    assert r.status_code == 200


def _champions(samples: dict) -> dict[int, str]:
    """pid -> champion model version of every live worker (``levi_model_version_info``)."""
    return {
        int(dict(labels)["pid"]): dict(labels)["model_version"]
        for (name, labels), value in samples.items()
        if name == "levi_model_version_info" and dict(labels)["alias"] == "champion" and value
    }


def test_promote_and_rollback_under_load_from_8_clients(two_workers, artifacts):
    """A challenger (canary + shadow) on both workers, then promote and roll back while 8
    clients predict: no request fails, and every worker switches each time."""
    server, _ = two_workers
    wait_ready(server.base, server.proc, server.log)
    start = set(_champions(_scrape(server.base)).values())
    assert len(start) == 1
    (champion,) = start
    r = httpx.put(
        f"{server.base}/admin/challenger",
        json={"path": str(artifacts.v3), "canary": 0.5, "shadow": True},
        headers=ADMIN,
        timeout=300,
    )
    assert r.status_code == 200, r.text
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(timeout=60) as c:
            n = 0
            while not stop.is_set():
                pair = {"user_id": f"load-{k}-{n % 20}", "item_id": "11"}
                r = c.post(f"{server.base}/predict-rating", json=pair)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["model_version"])
                n += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        r = httpx.post(f"{server.base}/admin/promote", headers=ADMIN, timeout=300)
        assert r.status_code == 200, r.text
        assert _champions(_scrape(server.base)) == dict.fromkeys(
            _worker_pids(_scrape(server.base)), "tiny-v3"
        )
        time.sleep(0.5)
        r = httpx.post(f"{server.base}/admin/rollback", headers=ADMIN, timeout=300)
        assert r.status_code == 200, r.text
        assert r.json()["champion"] == champion
        assert set(_champions(_scrape(server.base)).values()) == {champion}
        assert len(_champions(_scrape(server.base))) == 2
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert versions == {champion, "tiny-v3"}
    models = httpx.get(f"{server.base}/v1/models", timeout=10).json()
    assert [v["aliases"] for v in models["versions"]] == [["champion"]]


def test_workers_that_cannot_load_the_model_stop_the_server_with_the_reason(
    artifacts, compile_cache, tmp_path
):
    broken = tmp_path / "wrong-format"
    shutil.copytree(artifacts.v1, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    log = tmp_path / "server.log"
    with launch_server(broken, log, compile_cache, LEVI_WORKERS="2", TMPDIR=str(tmp_path)) as srv:
        assert srv.proc.wait(timeout=120) == 3, log.read_text()[-3000:]
    text = log.read_text()
    assert "error: no worker could start: model not loaded: ArtifactError" in text
    assert "format_version 99 is not supported" in text
    assert not list(tmp_path.glob("levi-workers-*"))
