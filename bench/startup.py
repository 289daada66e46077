"""Start-up benchmark: seconds from ``python -m service`` to ready, first and second start.

    .venv/bin/python -m bench.startup --model artifacts/latest [--workers 1] [--no-baseline]

Three runs of the real server, each timed from process start (interpreter, imports, artifact,
warm-up) to the first 200 from ``/readyz``, then to ``levi_warmup_pending_shapes`` reaching
0 (every shape compiled, in the background after ready):

- **baseline**: what staged warm-up and the cache save, measured in the same run:
  ``LEVI_WARMUP=all`` (every shape compiled before ready), no compilation cache.
- **first start**: defaults, an empty compilation cache (a new machine or a new jaxlib).
- **second start**: defaults, the cache the first start filled (a restart, or a replica on
  a node that has served this model before).

Each run's own log lines (JSON) give where its time went: artifact and tables, the first
shapes, the background. Printed as Markdown; ``make bench`` puts it in docs/BENCHMARKS.md.
Targets (issue 13, 2 cores): first start <= 20 s, second start <= 5 s to ready.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"first": 20.0, "second": 5.0}
STAGES = re.compile(
    r"artifact and entity tables read in ([\d.]+)s, first shapes compiled in ([\d.]+)s"
)


@dataclass
class Run:
    name: str
    ready_s: float
    complete_s: float | None
    load_s: float | None
    first_s: float | None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pending(base: str) -> float | None:
    try:
        text = httpx.get(f"{base}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    m = re.search(r"^levi_warmup_pending_shapes(?:\{[^}]*\})? ([\d.e+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def time_start(name: str, model: Path, env: dict, workers: int, timeout: float) -> Run:
    """Start the server, time it to ready and to every shape compiled, stop it."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkstemp(prefix="levi-startup-", suffix=".log")[1])
    full = dict(
        os.environ,
        **env,
        LEVI_LOG_FORMAT="json",
        LEVI_LOG_LEVEL="info",
        LEVI_HOST="127.0.0.1",
        LEVI_PORT=str(port),
        LEVI_WORKERS=str(workers),
        REDIS_URL="",
    )
    full.pop("LEVI_REDIS_URL", None)
    t0 = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--model", str(model)],
            cwd=ROOT,
            env=full,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    ready = complete = None
    try:
        until = t0 + timeout
        while time.perf_counter() < until and proc.poll() is None:
            now = time.perf_counter()
            if ready is None:
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        ready = now - t0
                except httpx.HTTPError:
                    pass
            elif _pending(base) == 0:
                complete = time.perf_counter() - t0
                break
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if ready is None:
        raise SystemExit(f"{name}: not ready within {timeout:.0f}s; log: {log}")
    load = first = None
    for line in log.read_text().splitlines():
        try:
            m = STAGES.search(json.loads(line).get("message", ""))
        except ValueError:
            continue
        if m:
            load, first = float(m.group(1)), float(m.group(2))
    log.unlink()
    return Run(name, ready, complete, load, first)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.startup", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, default=Path("artifacts/latest"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline run")
    parser.add_argument("--timeout", type=float, default=600.0, help="per start")
    args = parser.parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        raise SystemExit(f"no artifact at {args.model}: run `make train` first")
    runs = []
    with tempfile.TemporaryDirectory(prefix="levi-startup-xla-") as cache:
        if not args.no_baseline:
            runs.append(
                time_start(
                    "baseline: LEVI_WARMUP=all (every shape before ready), no cache",
                    args.model,
                    {"LEVI_WARMUP": "all", "LEVI_COMPILATION_CACHE": "0"},
                    args.workers,
                    args.timeout,
                )
            )
        cached = {"LEVI_COMPILATION_CACHE_DIR": cache, "LEVI_WARMUP": "first"}
        runs.append(
            time_start(
                "first start (empty compilation cache)",
                args.model,
                cached,
                args.workers,
                args.timeout,
            )
        )
        runs.append(
            time_start(
                "second start (the cache of the first)",
                args.model,
                cached,
                args.workers,
                args.timeout,
            )
        )
    print(
        f"`python -m service --workers {args.workers}`, timed from process start; the "
        "service's own log gives the stages (artifact and entity tables, first shapes).\n"
    )
    print("| start | to ready s | artifact + tables s | first shapes s | every shape compiled s |")
    print("|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r.name} | **{r.ready_s:.1f}** | {_fmt(r.load_s)} | {_fmt(r.first_s)} | "
            f"{_fmt(r.complete_s)} |"
        )
    first, second = runs[-2], runs[-1]
    verdict = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    print(
        f"\nFirst start {first.ready_s:.1f} s ({verdict(first.ready_s <= TARGETS['first'])} "
        f"target <= {TARGETS['first']:g} s), second start {second.ready_s:.1f} s "
        f"({verdict(second.ready_s <= TARGETS['second'])} target <= {TARGETS['second']:g} s)."
    )
    if not args.no_baseline:
        print(f"Baseline / second start: {runs[0].ready_s / second.ready_s:.1f}x.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
