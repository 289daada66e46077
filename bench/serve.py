"""Serving benchmark: warm-cache ``/predict-rating`` next to a no-op FastAPI endpoint.

Both are served the same way (uvicorn, one worker, 127.0.0.1) in the same run and loaded by
the same client at 32 concurrent connections; prints requests/s, p50 and p99 of each and
their ratio, the same for cold requests (every item text never seen before) at those
connections, then the sequential cold latency p50.

    .venv/bin/python -m bench.serve --model artifacts/latest [--requests 4000] [--seconds 20]

Targets (issue 4): ratio >= 0.75, warm p99 <= 20 ms, cold p50 <= 30 ms on 2 cores.

Load generator (``--client``): ``wrk`` (Debian's ``wrk``, a C event loop; ``auto`` picks it
when it is on PATH) or the Python asyncio + httpx client. Either shares the machine's cores
with the server; wrk takes a small fraction of one core where the Python client takes most
of one, so its figures are the closer to what the server alone can do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

NOOP_APP = (
    "import uvicorn; from fastapi import FastAPI; from pydantic import BaseModel\n"
    "class Body(BaseModel):\n    user_id: str\n    item_id: str\n"
    "app = FastAPI()\n"
    "@app.post('/noop')\nasync def noop(body: Body) -> dict:\n    return {'rating': 3.5}\n"
    "uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning', access_log=False)\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{url} not ready after {timeout}s")


async def _load(url: str, bodies: list[dict], connections: int, seconds: float) -> dict:
    """Send ``bodies`` over ``connections`` concurrent workers (stop after ``seconds``)."""
    latencies: list[float] = []
    errors = 0
    next_index = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal next_index, errors
            while next_index < len(bodies) and time.perf_counter() < deadline:
                body = bodies[next_index]
                next_index += 1
                t0 = time.perf_counter()
                r = await client.post(url, json=body)
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


# Each wrk thread has its own Lua state: thread k sends bodies k, k + T, k + 2T, ... (T threads),
# so no body is sent twice until the list wraps (a cold run's list never does).
WRK_SCRIPT = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local threads = %d
local counter = 0
function setup(thread)
  thread:set("first", counter)
  counter = counter + 1
end
local i = nil
request = function()
  i = i or first
  local body = bodies[i %% #bodies + 1]
  i = i + threads
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
"""
WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m[1]) * WRK_UNITS[m[2]]


def _load_wrk(url: str, bodies: list[dict], connections: int, seconds: float) -> dict:
    """The same measurement as :func:`_load`, made by wrk (``--latency``: HdrHistogram)."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "bodies.jsonl"
        lines.write_text("\n".join(json.dumps(b) for b in bodies) + "\n")
        threads = 1 if connections < 8 else 2
        script = Path(tmp) / "rotate.lua"
        script.write_text(WRK_SCRIPT % (lines, threads))
        # --timeout as the Python client's: a slow answer is measured, not dropped (wrk's 2 s
        # default turned overloaded runs into socket errors with no latency lines).
        cmd = [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, seconds):.0f}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
    return parse_wrk(proc.stdout)


def parse_wrk(out: str) -> dict:
    """Requests, errors (non-2xx and socket errors), req/s, p50 and p99 of a ``wrk --latency``
    report."""
    # wrk pads a unit to two characters: "1.13s " (a trailing space) past one second
    pct = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)[ \t]*$", out, re.M))
    if not {"50", "99"} <= pct.keys():
        raise ValueError(f"wrk printed no 50%/99% latency lines (no request finished?):\n{out}")
    total = int(re.search(r"(\d+) requests in", out)[1])
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx[1]) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {
        "requests": total,
        "errors": errors,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50_ms": _wrk_ms(pct["50"]),
        "p99_ms": _wrk_ms(pct["99"]),
    }


def _line(name: str, r: dict) -> str:
    return (
        f"{name:<28} {r['rps']:8.0f} req/s   p50 {r['p50_ms']:6.2f} ms   "
        f"p99 {r['p99_ms']:6.2f} ms   ({r['requests']} requests, {r['errors']} errors)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="artifacts/latest", help="artifact directory")
    parser.add_argument("--requests", type=int, default=4000, help="per measured run")
    parser.add_argument("--seconds", type=float, default=20.0, help="cap per measured run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cold", type=int, default=100, help="cold requests (sequential)")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator for the warm runs (auto: wrk when installed)",
    )
    args = parser.parse_args(argv)
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    elif client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--client wrk: wrk is not on PATH (Debian: apt-get install wrk)")

    def load(url: str, bodies: list[dict], connections: int, seconds: float) -> dict:
        if client == "wrk":
            return _load_wrk(url, bodies, connections, seconds)
        return asyncio.run(_load(url, bodies, connections, seconds))

    api_port, noop_port = _free_port(), _free_port()
    env = dict(os.environ, LEVI_MODEL_DIR=str(args.model), LEVI_PORT=str(api_port))
    env.setdefault("LEVI_LOG_LEVEL", "warning")
    # The steady state: every shape compiled before timing starts (by default the service is
    # ready earlier and compiles the rest in the background, bench/startup.py measures that).
    env.setdefault("LEVI_WARMUP", "all")
    cmd = [sys.executable, "-m", "service", "--port", str(api_port), "--model", args.model]
    root = Path(__file__).resolve().parents[1]
    api = subprocess.Popen(cmd, cwd=root, env=env)
    noop = subprocess.Popen(
        [sys.executable, "-c", NOOP_APP.replace("{port}", str(noop_port))], cwd=root
    )
    try:
        _wait(f"http://127.0.0.1:{noop_port}/docs", noop, 60)
        _wait(f"http://127.0.0.1:{api_port}/readyz", api, 600)
        api_url = f"http://127.0.0.1:{api_port}/predict-rating"
        model = httpx.get(f"http://127.0.0.1:{api_port}/v1/model").json()
        print(
            f"model {model['model_version']} ({model['backbone']['name']}), "
            f"{args.connections} connections, {os.cpu_count()} cores, "
            f"client {client}"
        )

        users = [str(u) for u in range(1, 51)]
        items = [str(i) for i in range(1, 21)]
        warm = [{"user_id": u, "item_id": i} for u in users for i in items]
        bodies = [warm[k % len(warm)] for k in range(args.requests)]
        asyncio.run(_load(api_url, warm, args.connections, args.seconds))  # fill the cache
        noop_body = [{"user_id": "1", "item_id": "2"}] * args.requests
        asyncio.run(_load(f"http://127.0.0.1:{noop_port}/noop", noop_body[:500], 32, 5))
        noop_r = load(
            f"http://127.0.0.1:{noop_port}/noop", noop_body, args.connections, args.seconds
        )
        api_r = load(api_url, bodies, args.connections, args.seconds)
        print(_line("no-op FastAPI endpoint", noop_r))
        print(_line("/predict-rating (warm)", api_r))
        print(f"ratio predict/no-op: {api_r['rps'] / noop_r['rps']:.2f}   (target >= 0.75)")

        run = uuid.uuid4().hex[:8]
        # Cold under load: every request names an item never seen, more of them than a run can
        # send, so each one misses both cache tiers and runs the backbone.
        cold_load = [
            {
                "user_id": str(1 + k % 50),
                "item_id": f"new-{run}-c{k}",
                "item": {"title": f"An Unseen Film {run} take {k} (2031)"},
            }
            for k in range(max(args.cold, int(args.seconds * 2000)))
        ]
        cold_c = load(api_url, cold_load, args.connections, args.seconds)
        print(_line("/predict-rating (cold)", cold_c))
        cold = [
            {
                "user_id": "1",
                "item_id": f"new-{run}-{k}",
                "item": {"title": f"An Unseen Film {run} part {k} (2031)"},
            }
            for k in range(args.cold)
        ]
        if cold:  # --cold 0: no sequential cold run
            cold_r = asyncio.run(_load(api_url, cold, 1, args.seconds))
            print(_line("/predict-rating (cold, 1 conn)", cold_r))
            print(f"cold p50 {cold_r['p50_ms']:.2f} ms (target <= 30 ms)")
    finally:
        for proc in (api, noop):
            proc.terminate()
        for proc in (api, noop):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
