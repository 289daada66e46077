"""The online catalog: registering items in bulk, ranking them by id alone, an update seen by
a second replica, and a Redis that lost everything refilled at a restart.

    .venv/bin/python -m bench.catalog --model artifacts/latest [--items 10000]
        [--candidates 1000] [--requests 60] [--updates 20]

Two replicas (``python -m service``, every shape compiled before ready) share a Redis of the
benchmark's own (a ``redis-server`` it starts without persistence, so flushing it touches
nothing else; without the binary, ``REDIS_URL`` under a fresh key prefix), each with its own
catalog log directory, as on two machines.

- **Bulk registration**: ``--items`` items (the artifact's titles, made distinct) through
  ``POST /v1/items`` in requests of 1,000, one after another: upserts/s (each request on disk
  and in Redis before its answer); then the time until both replicas have projected them all
  off the request path (``levi_catalog_pending_encodes`` 0).
- **Ranking by id alone**: ``/rank`` of ``--candidates`` registered items by id, next to the
  same ranking over as many of the artifact's own items, requests of the two kinds
  alternating, after one warm-up request each: p50 / p99 and the ratio of the p50s (target
  <= 1.2). The first ranking of the registered items (right after their projections were
  computed, before any request asked for them) is reported too.
- **Same ratings**: the same ranking with the items' fields sent in the request: the largest
  rating difference (target 0).
- **An update on the other replica**: ``--updates`` times a new title PUT on replica A, then
  replica B polled (``GET /v1/items/{id}`` every 5 ms) until it holds the new record: median
  and largest delay (the stated bound: 1 s), and B's answer then equal to the new fields'.
- **Redis flushed, replica restarted**: both replicas stopped, Redis flushed, replica A
  started again from its log directory: how many records Redis and A hold then, and A's time
  to ready.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import redis

from bench.serve import _free_port, _wait

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"rank_ratio": 1.2, "update_s": 1.0}
BULK = 1000


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[str | None]:
    """A redis-server of the benchmark (no persistence) on a free port; its URL, or None
    when the binary is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=1)
    until = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > until:
                proc.kill()
                raise SystemExit("the benchmark's redis-server did not start") from None
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def replica(model: Path, env_extra: dict[str, str], log: Path) -> Iterator[tuple[str, float]]:
    """``python -m service`` on a free port, stopped on exit; ``(base URL, seconds to ready)``."""
    port = _free_port()
    env = {
        **os.environ,
        "LEVI_LOG_LEVEL": "warning",
        "LEVI_WARMUP": "all",
        "PYTHONPATH": str(ROOT),
        **env_extra,
    }
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    t = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [*cmd, "--model", str(model)], cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(f"{base}/readyz", proc, 900)
        yield base, time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def metric(base: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples (those with ``labels``) in a replica's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=30).text
    want = set(labels.items())
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and want <= set(s.labels.items())
    )


def wait_encoded(bases: list[str], timeout: float = 1800) -> float:
    """Seconds until no replica has registered entities waiting to be projected."""
    t0 = time.perf_counter()
    while any(metric(b, "levi_catalog_pending_encodes") > 0 for b in bases):
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"registered entities not projected after {timeout:g}s")
        time.sleep(0.2)
    return time.perf_counter() - t0


def titles(model: Path, n: int) -> list[dict]:
    """``n`` item records with distinct titles (the artifact's, numbered)."""
    items = pd.read_parquet(model / "items.parquet")
    base = [str(t) for t in items["title"].fillna("untitled")]
    return [
        {"item_id": f"reg-{k}", "fields": {"title": f"{base[k % len(base)]} #{k}"}}
        for k in range(n)
    ]


def percentiles(times: list[float]) -> tuple[float, float]:
    ms = np.asarray(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def rank_time(client: httpx.Client, base: str, body: dict) -> tuple[float, dict]:
    t = time.perf_counter()
    r = client.post(f"{base}/rank", json=body)
    elapsed = time.perf_counter() - t
    if r.status_code != 200:
        raise SystemExit(f"/rank answered {r.status_code}: {r.text[:300]}")
    return elapsed, r.json()


def run(args) -> list[str]:
    model = args.model.resolve()
    lines: list[str] = []
    users = pd.read_parquet(model / "users.parquet")["user_id"].astype(str).tolist()
    own_items = pd.read_parquet(model / "items.parquet")["item_id"].astype(str).tolist()
    rng = np.random.default_rng(0)
    records = titles(model, args.items)
    with (
        tempfile.TemporaryDirectory() as tmp,
        private_redis(Path(tmp)) as own_url,
    ):
        work = Path(tmp)
        url = own_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        prefix = f"levi:bench-cat:{uuid.uuid4().hex[:8]}"
        client_redis = redis.Redis.from_url(url)
        common = {
            "REDIS_URL": url,
            "LEVI_CATALOG_KEY_PREFIX": prefix,
            "LEVI_CACHE_KEY_PREFIX": f"{prefix}:act",
            "LEVI_CORRECTIONS_KEY_PREFIX": f"{prefix}:fb",
            "LEVI_ONLINE_KEY_PREFIX": f"{prefix}:online",
            "LEVI_FEEDBACK_DIR": str(work / "feedback"),
        }
        env_a = {**common, "LEVI_CATALOG_DIR": str(work / "catalog-a")}
        env_b = {**common, "LEVI_CATALOG_DIR": str(work / "catalog-b")}
        with (
            replica(model, env_a, work / "a.log") as (a, _),
            replica(model, env_b, work / "b.log") as (b, _),
            httpx.Client(timeout=120) as client,
        ):
            # -- bulk registration
            t0 = time.perf_counter()
            shared: dict[str, int] = {}
            for start in range(0, len(records), BULK):
                r = client.post(f"{a}/v1/items", json={"items": records[start : start + BULK]})
                if r.status_code != 200:
                    raise SystemExit(f"POST /v1/items answered {r.status_code}: {r.text[:300]}")
                shared[r.json()["shared"]] = shared.get(r.json()["shared"], 0) + BULK
            bulk_s = time.perf_counter() - t0
            encoded_s = wait_encoded([a, b])
            lines.append(
                f"bulk registration: {len(records):,} items in {len(records) // BULK} requests "
                f"of {BULK:,} in {bulk_s:.2f} s: **{len(records) / bulk_s:,.0f} upserts/s** "
                f"(shared: {', '.join(f'{k} {v:,}' for k, v in shared.items())}); both replicas "
                f"had projected them all off the request path {encoded_s:.1f} s later"
            )
            # -- ranking by id alone vs the artifact's own items
            pool = rng.choice(users, 8, replace=False).tolist()
            picked = rng.choice(len(records), args.candidates, replace=False)
            registered = [{"item_id": records[k]["item_id"]} for k in picked]
            own = [{"item_id": i} for i in rng.choice(own_items, args.candidates, replace=False)]
            first_s, _ = rank_time(client, a, {"user_id": pool[0], "candidates": registered})
            # The artifact's own items are projected on first use, not ahead: in slices, so
            # that no request needs more than the request deadline to encode their titles.
            t = time.perf_counter()
            for start in range(0, len(own), 100):
                body = {"user_id": pool[1], "candidates": own[start : start + 100]}
                rank_time(client, a, body)
            own_warm_s = time.perf_counter() - t
            for u in pool:  # every user's projections once, both lists
                for cands in (registered, own):
                    rank_time(client, a, {"user_id": u, "candidates": cands})
            times: dict[str, list[float]] = {"registered": [], "own": []}
            for k in range(args.requests):
                u = pool[k % len(pool)]
                for name, cands in (("registered", registered), ("own", own)):
                    elapsed, _ = rank_time(client, a, {"user_id": u, "candidates": cands})
                    times[name].append(elapsed)
            reg50, reg99 = percentiles(times["registered"])
            own50, own99 = percentiles(times["own"])
            ratio = reg50 / own50
            verdict = "met" if ratio <= TARGETS["rank_ratio"] else "**missed**"
            lines.append(
                f"/rank of {args.candidates:,} registered items by id alone: p50 {reg50:.1f} ms, "
                f"p99 {reg99:.1f} ms; the same ranking over {args.candidates:,} of the "
                f"artifact's own items: p50 {own50:.1f} ms, p99 {own99:.1f} ms; ratio of the "
                f"p50s **{ratio:.2f}** ({verdict}: target <= {TARGETS['rank_ratio']}; "
                f"{args.requests} requests of each kind, alternating, on replica A)"
            )
            lines.append(
                f"the first /rank of the registered items (their projections computed off the "
                f"path, the user's not yet): {first_s * 1000:.1f} ms; the artifact's own items "
                f"are projected on first use instead: their first rankings (10 of 100 "
                f"candidates) took {own_warm_s:.1f} s in all"
            )
            # -- the same ratings as with the fields in the request
            fields = {x["item_id"]: x["fields"] for x in records}
            _, by_id = rank_time(client, a, {"user_id": pool[0], "candidates": registered})
            _, sent = rank_time(
                client,
                a,
                {
                    "user_id": pool[0],
                    "candidates": [{**c, "item": fields[c["item_id"]]} for c in registered],
                },
            )
            got = {x["item_id"]: x["rating"] for x in by_id["ranked"]}
            want = {x["item_id"]: x["rating"] for x in sent["ranked"]}
            diff = max(abs(got[i] - want[i]) for i in got)
            sources = {x["source"] for x in by_id["ranked"]}
            lines.append(
                f"same pairs, fields sent in the request instead: largest rating difference "
                f"{diff:.2g} over {len(got):,} pairs (sources by id: {sorted(sources)})"
            )
            # -- an update seen by the other replica
            delays = []
            for k in range(args.updates):
                item = records[k]["item_id"]
                new = {"title": f"Retitled {k} {uuid.uuid4().hex[:6]}"}
                t = time.perf_counter()
                r = client.put(f"{a}/v1/items/{item}", json={"fields": new})
                assert r.status_code == 200, r.text
                version = client.get(f"{a}/v1/items/{item}").json()["version"]
                while client.get(f"{b}/v1/items/{item}").json().get("version") != version:
                    if time.perf_counter() - t > 10:
                        raise SystemExit(f"update of {item} not seen by replica B in 10 s")
                    time.sleep(0.005)
                delays.append(time.perf_counter() - t)
            body = {"user_id": pool[0], "item_id": records[0]["item_id"]}
            on_b = client.post(f"{b}/predict-rating", json=body).json()["rating"]
            new_fields = client.get(f"{a}/v1/items/{body['item_id']}").json()["fields"]
            sent_b = client.post(f"{b}/predict-rating", json={**body, "item": new_fields})
            fresh = sent_b.json()["rating"]
            worst = max(delays)
            verdict = "met" if worst <= TARGETS["update_s"] else "**missed**"
            lines.append(
                f"an update on replica A held by replica B (from the PUT's start) after median "
                f"{np.median(delays) * 1000:.0f} ms, at most **{worst * 1000:.0f} ms** over "
                f"{len(delays)} updates ({verdict}: bound {TARGETS['update_s']:g} s, "
                f"LEVI_CATALOG_SYNC_S 0.1); B's answer for the updated item then equals the new "
                f"fields' answer: {on_b == fresh}"
            )
        # -- Redis flushed, replica A restarted from its log
        if own_url is not None:
            client_redis.flushall()
            flushed = "FLUSHALL on the benchmark's own redis-server"
        else:
            for key in client_redis.scan_iter(match=f"{prefix}:*", count=1000):
                client_redis.delete(key)
            flushed = f"every key under {prefix} deleted"
        with replica(model, env_a, work / "a2.log") as (a2, ready_s):
            held = int(metric(a2, "levi_catalog_records", kind="item"))
            key = f"{prefix}:{{{_dataset(a2)}}}:records:item"
            in_redis = client_redis.hlen(key)
            back = held == in_redis == len(records)
            lines.append(
                f"Redis flushed ({flushed}) with both replicas stopped, replica A started again: "
                f"ready after {ready_s:.1f} s holding {held:,} items, Redis refilled from its log "
                f"with {in_redis:,} of {len(records):,} (every record back: {back})"
            )
    return lines


def _dataset(base: str) -> str:
    return httpx.get(f"{base}/v1/model", timeout=30).json()["dataset"]["name"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.catalog", description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("artifacts/latest"))
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=60, help="timed /rank of each kind")
    parser.add_argument("--updates", type=int, default=20)
    args = parser.parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        print(f"no artifact at {args.model}: run `make train` first", file=sys.stderr)
        return 2
    for line in run(args):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
