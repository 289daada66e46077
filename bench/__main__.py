"""``make bench``: run every benchmark and write docs/BENCHMARKS.md.

    .venv/bin/python -m bench [--model artifacts/latest] [--output docs/BENCHMARKS.md]
        [--connections 1,8,32,128] [--requests 4000] [--seconds 20] [--cold 100]
        [--skip encode,serve,variants,rank,feedback,catalog,train,rss,startup,train_scale]
        [--reference-python PATH]

Parts, each a figure next to a baseline measured in the same run:
- serving (bench/serve.py): warm ``/predict-rating`` req/s, p50, p99 at each connection count
  vs a no-op FastAPI endpoint served the same way; cold (never-seen item text) p50 vs warm.
- variants at the largest connection count <= 32: micro-batching off (``LEVI_MAX_BATCH=1``)
  and the Redis tier (``REDIS_URL`` set, in-process LRU off), each vs its own no-op and vs
  the default (micro-batching on, in-process cache only).
- ranking and batch scoring (bench/rank.py): ``/rank`` with 1,000 candidates next to the
  batch endpoint on the same pairs and the compute floor; the pair function (first-layer
  decomposition) vs the whole head; the batch CLI on 1,000,000 pairs, cold and warm.
- feedback loop (bench/feedback.py): progressive validation over HTTP (OOD, then ID test
  ratings in time order, each predicted before its feedback is sent): RMSE with the online
  corrections next to the model alone from the same answers; ``/feedback`` latency next to
  ``/predict-rating`` of the same pairs.
- online catalog (bench/catalog.py): bulk registration (upserts/s), ``/rank`` of registered
  items by id alone vs the artifact's own items, the same ratings as with the fields in the
  request, an update read on a second replica, every record back after Redis is flushed.
- encoder (bench/encode.py): our jitted encoder vs the reference PyTorch implementation.
- scaling (bench/scaling.py): the exported head and backbone by batch size and text length,
  each row relative to the smallest in the same run.
- training: ``make train`` stage timings from the newest report, as shares of the total and
  the total vs the 10-minute target.
- memory: RSS of the service with the model loaded and warm vs a no-op FastAPI process.
- start-up (bench/startup.py): process start to ready, first start (empty compilation cache)
  and second start (its cache), next to ``LEVI_WARMUP=all`` without a cache.
- training at scale (bench/train_scale.py): stage times and peak memory on generated catalogs
  of 0.5M to 4M ratings, one process and two; rendered from docs/train_scale.json (the
  measurement takes about an hour: ``python -m bench.train_scale``).

A part whose prerequisites are missing is skipped with the reason in the output file (no
artifact → "run `make train` first"; no packaged data → "run `make fetch` first"; no Redis →
the Redis variant is skipped). Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = (
    "serve",
    "variants",
    "rank",
    "feedback",
    "rollout",
    "fairness",
    "catalog",
    "encode",
    "scaling",
    "train",
    "rss",
    "startup",
    "train_scale",
)
TARGETS = {
    "noop_ratio": 0.75,
    "encode_ratio": 1.5,
    "encode_whole_ratio": 1.0,
    "train_s": 600.0,
    "warm_p99_ms": 20.0,
    "cold_p50_ms": 30.0,
}
SERVE_LINE = re.compile(
    r"^(?P<name>.+?)\s+(?P<rps>[\d.]+) req/s\s+p50\s+(?P<p50>[\d.]+) ms\s+p99\s+(?P<p99>[\d.]+) ms"
    r"\s+\((?P<n>\d+) requests, (?P<errors>\d+) errors\)"
)


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    skipped: str | None = None

    def render(self) -> str:
        out = [f"## {self.title}", ""]
        if self.skipped:
            out.append(f"Skipped: {self.skipped}")
        out += self.lines
        return "\n".join(out) + "\n"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def describe_machine() -> list[str]:
    cpuinfo = _read("/proc/cpuinfo")
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    memory = f"{int(mem.group(1)) / 1024**2:.1f} GiB" if mem else "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    versions = []
    for dist in ("jax", "jaxlib", "fastapi", "uvicorn"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
    return [
        f"- CPU: {model}; {os.cpu_count()} logical CPUs, {usable} usable by this process (nproc)",
        f"- memory: {memory}",
        f"- load average at start (1, 5, 15 min): {load}",
        f"- OS: {platform.platform()}; Python {platform.python_version()}; " + ", ".join(versions),
        "- client and server share the machine's cores, so absolute throughput is a lower "
        "bound; the ratios compare figures measured side by side in this run.",
        "- load generator: "
        + (
            "wrk (C; a small share of one core)"
            if shutil.which("wrk")
            else "the Python asyncio + httpx client (wrk not installed: `apt-get install wrk`; "
            "the Python client saturates a core before a no-op endpoint does, so the no-op "
            "figure is the client's limit)"
        ),
    ]


# --------------------------------------------------------------------------- helpers


def run_module(module: str, args: list[str], env: dict | None, timeout: float) -> tuple[int, str]:
    """Run ``python -m module args``; (exit code, stdout + stderr). Output is echoed."""
    cmd = [sys.executable, "-m", module, *args]
    log("$ " + " ".join(cmd))
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\n(timed out after {timeout:.0f}s)"
    out = proc.stdout + (("\n" + proc.stderr) if proc.returncode else "")
    for line in proc.stdout.splitlines():
        print("    " + line, flush=True)
    return proc.returncode, out


def parse_serve(output: str) -> dict[str, dict]:
    found = {}
    for line in output.splitlines():
        m = SERVE_LINE.match(line.strip())
        if m:
            found[m["name"].strip()] = {
                "rps": float(m["rps"]),
                "p50": float(m["p50"]),
                "p99": float(m["p99"]),
                "n": int(m["n"]),
                "errors": int(m["errors"]),
            }
    return found


def model_summary(model: Path) -> dict | None:
    try:
        manifest = json.loads((model / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    backbone = manifest.get("backbone", {})
    return {
        "version": manifest.get("model_version"),
        "backbone": backbone.get("name"),
        "layers": backbone.get("n_layers"),
        "hidden": backbone.get("hidden_size"),
    }


def redis_reachable(url: str | None) -> str | None:
    """None when reachable, else why not."""
    if not url:
        return "REDIS_URL is not set"
    u = urllib.parse.urlparse(url)
    try:
        socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=2).close()
    except OSError as e:
        return f"Redis at {url} is not reachable ({e})"
    return None


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


# --------------------------------------------------------------------------- parts


def serve_env(**extra: str) -> dict:
    # In-process cache only; every shape compiled before ready (the steady state).
    env = dict(os.environ, LEVI_LOG_LEVEL="warning", REDIS_URL="", LEVI_WARMUP="all")
    env.pop("LEVI_REDIS_URL", None)
    env.update(extra)
    return env


def serve_args(args, connections: int, cold: int | None = None) -> list[str]:
    return [
        *("--model", str(args.model), "--requests", str(args.requests)),
        *("--seconds", str(args.seconds), "--connections", str(connections)),
        *("--cold", str(args.cold if cold is None else cold)),
    ]


def bench_serve(args) -> tuple[Section, dict[int, dict]]:
    sec = Section("Serving: /predict-rating vs a no-op FastAPI endpoint (bench/serve.py)")
    results: dict[int, dict] = {}
    rows = []
    for c in args.connections:
        code, out = run_module(
            "bench.serve", serve_args(args, c), serve_env(), timeout=900 + 4 * args.seconds
        )
        parsed = parse_serve(out)
        noop, warm = parsed.get("no-op FastAPI endpoint"), parsed.get("/predict-rating (warm)")
        cold = parsed.get("/predict-rating (cold, 1 conn)")
        cold_load = parsed.get("/predict-rating (cold)")
        if code != 0 or not (noop and warm):
            rows.append(
                f"| {c} | failed (exit {code}): {out.strip().splitlines()[-1:]} | | | | | | | | |"
            )
            continue
        results[c] = {"noop": noop, "warm": warm, "cold": cold}
        ratio = warm["rps"] / noop["rps"]
        errors = warm["errors"] + noop["errors"] + (cold_load["errors"] if cold_load else 0)
        cold_cells = (
            f"{cold_load['rps']:.0f} | {cold_load['p50']:.2f} / {cold_load['p99']:.2f}"
            if cold_load
            else "n/a | n/a"
        )
        rows.append(
            f"| {c} | {warm['rps']:.0f} | {noop['rps']:.0f} | **{ratio:.2f}** "
            f"({verdict(ratio >= TARGETS['noop_ratio'])}) | {warm['p50']:.2f} / {warm['p99']:.2f}"
            f" | {noop['p50']:.2f} / {noop['p99']:.2f} | {cold_cells} | {errors} |"
        )
    sec.lines += [
        f"Warm cache (50 users x 20 items, cached before timing), {args.requests} requests or "
        f"{args.seconds:g} s per run. Target: predict / no-op req/s >= {TARGETS['noop_ratio']}.",
        "",
        "Cold: every request names an item never seen before, so each one misses both cache "
        "tiers and runs the backbone on its title.",
        "",
        "| connections | predict req/s | no-op req/s | predict / no-op | predict p50 / p99 ms "
        "| no-op p50 / p99 ms | cold req/s | cold p50 / p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    colds = [(c, r) for c, r in results.items() if r.get("cold")]
    if colds:
        c, r = colds[0]  # the fewest connections: closest to the cold run's single one
        cold, warm = r["cold"], r["warm"]
        sec.lines += [
            "",
            f"Cold cache (an item text never seen before, 1 connection, {cold['n']} requests): "
            f"p50 {cold['p50']:.2f} ms ({verdict(cold['p50'] <= TARGETS['cold_p50_ms'])} "
            f"target <= {TARGETS['cold_p50_ms']:g} ms), p99 {cold['p99']:.2f} ms; "
            f"cold p50 / warm p50 at {c} connections: {cold['p50'] / warm['p50']:.2f}.",
        ]
        p99s = [(c, r["warm"]["p99"]) for c, r in results.items() if c <= 32]
        if p99s:
            c32, p99 = p99s[-1]
            sec.lines.append(
                f"Warm p99 at {c32} connections: {p99:.2f} ms "
                f"({verdict(p99 <= TARGETS['warm_p99_ms'])} target <= "
                f"{TARGETS['warm_p99_ms']:g} ms)."
            )
    return sec, results


def bench_variants(args, default: dict[int, dict]) -> Section:
    sec = Section("Serving variants: micro-batching off, online corrections off, Redis tier")
    c = max([x for x in args.connections if x <= 32] or [min(args.connections)])
    variants = [
        ("micro-batching off (LEVI_MAX_BATCH=1)", {"LEVI_MAX_BATCH": "1"}),
        ("online corrections off (LEVI_CORRECTIONS=0)", {"LEVI_CORRECTIONS": "0"}),
    ]
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    why_not = redis_reachable(url)
    if why_not is None:
        prefix = f"levi:bench:{os.getpid()}:{int(time.time())}"
        variants.append(
            (
                "Redis tier (REDIS_URL set, LEVI_LOCAL_CACHE_SIZE=0; corrections read from Redis)",
                {
                    "REDIS_URL": url,
                    "LEVI_LOCAL_CACHE_SIZE": "0",
                    "LEVI_CACHE_KEY_PREFIX": prefix,
                    "LEVI_CORRECTIONS_KEY_PREFIX": f"{prefix}:fb",
                },
            )
        )
    base = default.get(c)
    rows = []
    if base:
        rows.append(
            f"| default: micro-batching on, in-process cache | {base['warm']['rps']:.0f} | "
            f"{base['warm']['rps'] / base['noop']['rps']:.2f} | 1.00 | "
            f"{base['warm']['p50']:.2f} / {base['warm']['p99']:.2f} |"
        )
    for name, extra in variants:
        code, out = run_module(
            "bench.serve",
            serve_args(args, c, cold=1),
            serve_env(**extra),
            timeout=900 + 4 * args.seconds,
        )
        parsed = parse_serve(out)
        noop, warm = parsed.get("no-op FastAPI endpoint"), parsed.get("/predict-rating (warm)")
        if code != 0 or not (noop and warm):
            rows.append(f"| {name} | failed (exit {code}) | | | |")
            continue
        vs_default = warm["rps"] / base["warm"]["rps"] if base else None
        rows.append(
            f"| {name} | {warm['rps']:.0f} | {warm['rps'] / noop['rps']:.2f} | "
            f"{fmt_ratio(vs_default)} | {warm['p50']:.2f} / {warm['p99']:.2f} |"
        )
    sec.lines += [
        f"At {c} connections, warm cache; each run has its own no-op baseline.",
        "",
        "| configuration | req/s | / no-op | / default | p50 / p99 ms |",
        "|---|---|---|---|---|",
        *rows,
    ]
    if why_not:
        sec.lines += ["", f"Redis tier skipped: {why_not}."]
    return sec


def bench_encode(args) -> Section:
    sec = Section("Encoder: our jitted Flax encoder vs the PyTorch reference (bench/encode.py)")
    try:
        from model.packaged import MINILM_WHEEL, MOVIELENS_WHEEL, wheel_path

        for wheel in (MOVIELENS_WHEEL, MINILM_WHEEL):
            wheel_path(wheel, download=False)
    except Exception as e:  # PackagedSourceError, or the module itself missing
        sec.skipped = f"the packaged data or backbone is not cached: run `make fetch` first ({e})"
        return sec
    extra = ["--reference-python", args.reference_python] if args.reference_python else []
    code, out = run_module("bench.encode", extra, None, timeout=3600)
    ours = re.search(r"ours \(flax, jit\):\s+([\d.]+) sentences/s", out)
    ref = re.search(r"reference \((.+?)\):\s+([\d.]+) sentences/s", out)
    skipped = re.search(r"reference: skipped \((.*)\)", out)
    if code != 0 or not ours:
        sec.skipped = f"bench/encode.py failed (exit {code}): {out.strip()[-500:]}"
        return sec
    header = out.strip().splitlines()[0]
    sec.lines += [header, "", "| encoder | sentences/s | vs reference |", "|---|---|---|"]
    ours_rate = float(ours.group(1))
    if ref:
        ratio = ours_rate / float(ref.group(2))
        sec.lines += [
            f"| ours (Flax, jit) | {ours_rate:.1f} | **{ratio:.2f}x** "
            f"({verdict(ratio >= TARGETS['encode_ratio'])} target >= "
            f"{TARGETS['encode_ratio']}x) |",
            f"| reference ({ref.group(1)}) | {float(ref.group(2)):.1f} | 1.00x |",
        ]
        whole = re.search(
            r"whole process \((\d+) texts, (\d+) passes\): ours ([\d.]+) s \(empty "
            r"compilation cache\), ([\d.]+) s \(the first run's cache\), reference "
            r"([\d.]+) s, ratio ([\d.]+)x / ([\d.]+)x",
            out,
        )
        if whole:
            cold, warm = float(whole.group(6)), float(whole.group(7))
            target = TARGETS["encode_whole_ratio"]
            sec.lines += [
                "",
                f"Whole process (each side a fresh process: imports, loading, compiles and "
                f"{whole.group(2)} passes, {int(whole.group(1)):,} texts; ours as "
                f"`python -m model.encode` and the trainer run, with the persistent compilation "
                f"cache): reference {float(whole.group(5)):.1f} s; ours "
                f"{float(whole.group(3)):.1f} s on a first run (empty cache): **{cold:.2f}x** "
                f"({verdict(cold >= target)} target >= {target}x, issue 27); "
                f"{float(whole.group(4)):.1f} s on a later run (the shapes load from the "
                f"cache): **{warm:.2f}x** ({verdict(warm >= target)}).",
            ]
    else:
        reason = skipped.group(1) if skipped else "not run"
        sec.lines += [
            f"| ours (Flax, jit) | {ours_rate:.1f} | n/a |",
            "",
            f"Reference skipped ({reason}): create an interpreter with torch and transformers "
            "and pass it with `--reference-python` for the ratio.",
        ]
    return sec


def bench_scaling(args) -> Section:
    sec = Section("Scaling: cost by batch size and text length (bench/scaling.py)")
    code, out = run_module("bench.scaling", ["--model", str(args.model)], None, timeout=1800)
    if code != 0:
        sec.skipped = f"bench/scaling.py failed (exit {code}): {out.strip()[-500:]}"
        return sec
    sec.lines += [
        "The exported functions called in process (median of 20 calls after a compile). A "
        "micro-batch of b pairs costs far less than b single calls; a cold text costs about "
        "its token count.",
        "",
        *out.strip().splitlines(),
    ]
    return sec


def bullet_section(args, title: str, module: str, intro: str) -> Section:
    """A part whose script prints its own result lines: ``intro``, then one bullet a line."""
    sec = Section(title)
    code, out = run_module(module, ["--model", str(args.model)], None, timeout=1800)
    if code != 0:
        script = module.replace(".", "/") + ".py"
        sec.skipped = f"{script} failed (exit {code}): {out.strip()[-500:]}"
        return sec
    sec.lines += [intro, "", *[f"- {line}" for line in out.strip().splitlines()]]
    return sec


def bench_rank(args) -> Section:
    return bullet_section(
        args,
        "Ranking and batch scoring (bench/rank.py)",
        "bench.rank",
        "The vectorised scoring path: per-entity projections of the head's first layers "
        "(first-layer decomposition), one pair function per batch. Targets: /rank 1,000 "
        "candidates p50 <= 20 ms, p99 <= 40 ms; pair function >= 2x the whole head; batch CLI "
        "1,000,000 pairs <= 40 s. The floor is the pair function's FLOPs over the GEMM rate "
        "measured in the same run.",
    )


def bench_feedback(args) -> Section:
    return bullet_section(
        args,
        "Feedback loop: progressive validation over HTTP (bench/feedback.py)",
        "bench.feedback",
        "The MovieLens preset's OOD ratings, then its ID test ratings (a fresh service each), "
        "in timestamp order: each pair is asked (POST /predict-rating) before its rating is "
        "sent (POST /feedback). The model alone is the answers' model_rating, the corrected "
        "figure their rating. Targets: OOD <= 1.00; ID test no worse than the model alone "
        "+ 0.002.",
    )


def bench_rollout(args) -> Section:
    return bullet_section(
        args,
        "Safe rollout: champion and challenger judged by feedback (bench/rollout.py)",
        "bench.rollout",
        "Champion = a weaker LEVI (one epoch at a tenth of the learning rate), challenger = "
        "the default model: a 50% canary with shadow and the gate on, the ID test then OOD "
        "ratings replayed in time order (predict, then feedback). Then, at a fixed request "
        "rate, the champion's latency alone, while the challenger loads, with shadow off and "
        "on, after a promotion, and RSS with one vs two versions. Targets: the gate picks the "
        "better model; shadow on / off p99 <= 1.10; the second version (shared backbone) adds "
        "at most 15% RSS.",
    )


def bench_fairness(args) -> Section:
    return bullet_section(
        args,
        "No request can starve: single predictions next to maximal cold rankings "
        "(bench/fairness.py)",
        "bench.fairness",
        "8 clients of single predictions (closed loop), alone and while a ninth sends /rank "
        "requests of as many new titled items as LEVI_MAX_COLD_TOKENS admits, back to back. "
        "Target: the single predictions' p99 within 3x of their p99 alone, and no timeouts.",
    )


def bench_catalog(args) -> Section:
    return bullet_section(
        args,
        "Online catalog: registered items ranked by id alone (bench/catalog.py)",
        "bench.catalog",
        "Two replicas sharing a Redis of the benchmark's own, each with its own catalog log: "
        "10,000 items registered through POST /v1/items, then /rank of 1,000 of them by id "
        "alone next to the same ranking over 1,000 of the artifact's own items, the same pairs "
        "with the fields sent in the request, updates on one replica read on the other, and "
        "Redis flushed before a restart. Targets: rank p50 ratio <= 1.2; identical ratings; an "
        "update on the other replica within 1 s; every record back after the restart.",
    )


def training_timings(model: Path) -> tuple[dict[str, float], Path] | None:
    """Stage -> seconds from report.json ("timings") or report.md ("## Stage timings")."""
    candidates = [model / "report.json", model / "report.md"]
    reports = model.resolve().parent / "reports"
    if reports.is_dir():
        newest = sorted(reports.glob("*/report.md"), key=lambda p: p.stat().st_mtime)
        candidates += newest[::-1]
    for path in candidates:
        if not path.is_file():
            continue
        if path.suffix == ".json":
            with contextlib.suppress(ValueError, OSError):
                timings = json.loads(path.read_text()).get("timings")
                if isinstance(timings, dict) and timings:
                    return {k: float(v) for k, v in timings.items()}, path
            continue
        text = path.read_text()
        if "## Stage timings" in text:
            table = text.split("## Stage timings", 1)[1]
            rows = re.findall(r"^\|\s*([\w-]+)\s*\|\s*([\d.]+)\s*\|", table, re.MULTILINE)
            if rows:
                return {k: float(v) for k, v in rows}, path
    return None


def bench_train(args) -> Section:
    sec = Section("Training: `make train` wall time by stage")
    found = training_timings(args.model)
    if found is None:
        sec.skipped = (
            f"no stage timings in {args.model}/report.json or report.md (or a reports/ folder "
            "next to it): run `make train` first"
        )
        return sec
    timings, source = found
    total = sum(timings.values())
    sec.lines += [
        f"From {source} (the newest report; measured by the trainer, not re-run here).",
        "",
        "| stage | seconds | share of total |",
        "|---|---|---|",
        *[f"| {k} | {v:.1f} | {v / total:.2f} |" for k, v in timings.items()],
        f"| **total** | **{total:.1f}** | 1.00 |",
        "",
        f"Total / 10-minute target: **{total / TARGETS['train_s']:.2f}** "
        f"({verdict(total <= TARGETS['train_s'])}).",
    ]
    return sec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int, field: str = "VmRSS") -> float | None:
    """``field`` of ``/proc/PID/status`` in MiB: VmRSS, or its parts RssAnon (the heap,
    executables, tables) and RssFile (mapped files: libraries' code, the artifact's weights)."""
    m = re.search(rf"{field}:\s+(\d+) kB", _read(f"/proc/{pid}/status"))
    return int(m.group(1)) / 1024 if m else None


def _get(url: str, body: dict | None = None, timeout: float = 5) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except Exception:
        return 0


def _serve_and_measure(
    cmd: list[str],
    ready_url: str,
    env: dict,
    timeout: float,
    warm: Callable[[], None] | None = None,
    parts: dict | None = None,
) -> float | None:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        until = time.monotonic() + timeout
        while time.monotonic() < until and proc.poll() is None:
            if _get(ready_url) == 200:
                if warm:
                    warm()
                # Read once the service has settled: it hands freed heap back when idle, at
                # most once a second (service/batcher.py, HEAP_TRIM_INTERVAL_S).
                time.sleep(2.0)
                if parts is not None:
                    parts.update({f: _rss_mib(proc.pid, f) for f in ("RssAnon", "RssFile")})
                return _rss_mib(proc.pid)
            time.sleep(0.25)
        return None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


RSS_RANKINGS = 20  # /rank calls of 1,000 candidates in the memory benchmark's traffic


def bench_rss(args) -> Section:
    sec = Section("Memory: service RSS vs a no-op FastAPI process")
    if not Path(f"/proc/{os.getpid()}/status").exists():
        sec.skipped = "no /proc on this system to read RSS from"
        return sec
    from bench.serve import NOOP_APP

    noop_port, api_port = _free_port(), _free_port()
    noop = _serve_and_measure(
        [sys.executable, "-c", NOOP_APP.replace("{port}", str(noop_port))],
        f"http://127.0.0.1:{noop_port}/docs",
        dict(os.environ),
        60,
    )
    base = f"http://127.0.0.1:{api_port}"

    import pandas as pd

    items = pd.read_parquet(args.model / "items.parquet")["item_id"].astype(str).tolist()
    users = pd.read_parquet(args.model / "users.parquet")["user_id"].astype(str).tolist()
    rng = random.Random(0)

    def warm() -> None:
        # A few hundred distinct pairs through both cache tiers' code, then rankings of
        # 1,000 random candidates each (every item's projections, the large pair shapes,
        # the prediction log), for 20 users.
        for u in range(1, 21):
            for i in range(1, 11):
                _get(f"{base}/predict-rating", {"user_id": str(u), "item_id": str(i)})
        for u in rng.sample(users, min(RSS_RANKINGS, len(users))):
            candidates = [{"item_id": i} for i in rng.sample(items, min(1000, len(items)))]
            _get(f"{base}/rank", {"user_id": u, "candidates": candidates}, timeout=60)

    api = _serve_and_measure(
        [sys.executable, "-m", "service", "--port", str(api_port), "--model", str(args.model)],
        f"{base}/readyz",
        serve_env(),
        600,
        warm,
        parts := {},
    )
    if noop is None or api is None:
        sec.skipped = f"could not start both processes (no-op RSS {noop}, service RSS {api})"
        return sec
    model = model_summary(args.model) or {}
    sec.lines += [
        f"After start-up, warm-up (every shape compiled) and traffic: 200 predictions, then "
        f"{RSS_RANKINGS} /rank calls of 1,000 random candidates; model {model.get('version')} "
        f"({model.get('backbone')}). Target: service <= 600 MiB.",
        "",
        "| process | RSS MiB | vs no-op |",
        "|---|---|---|",
        f"| service (python -m service, 1 worker) | {api:.0f} ({verdict(api <= 600)}) | "
        f"**{api / noop:.2f}x** |",
        f"| no-op FastAPI app (uvicorn) | {noop:.0f} | 1.00x |",
        "",
        f"Of the service's RSS: {parts.get('RssAnon') or 0:.0f} MiB anonymous (heap, compiled "
        f"executables, tables), {parts.get('RssFile') or 0:.0f} MiB of mapped files (libraries' "
        "code, the artifact's weights as read; shared with other processes that map them).",
    ]
    return sec


def bench_startup(args) -> Section:
    sec = Section("Start-up: process start to ready, first and second start (bench/startup.py)")
    code, out = run_module("bench.startup", ["--model", str(args.model)], None, timeout=1800)
    if code != 0:
        sec.skipped = f"bench/startup.py failed (exit {code}): {out.strip()[-500:]}"
        return sec
    sec.lines += out.strip().splitlines()
    return sec


def bench_train_scale(args) -> Section:
    """The section of bench/train_scale.py's last measurement (docs/train_scale.json): the
    generated catalogs take about an hour on 2 cores, so ``make bench`` renders, not re-runs."""
    from bench.train_scale import SECTION, load_results, render

    source = ROOT / "docs" / "train_scale.json"
    title = SECTION.removeprefix("## ")
    if not source.exists():
        return Section(title, skipped="no docs/train_scale.json: run `python -m bench.train_scale`")
    lines = render(load_results(source))[2:]  # without the title and its blank line
    note = (
        f"Rendered from {source.relative_to(ROOT)} (measured by `python -m bench.train_scale "
        "--append`, not re-run by `make bench`)."
    )
    return Section(title, lines=[note, "", *lines])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/latest"))
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    parser.add_argument(
        "--connections",
        default="1,8,32,128",
        help="comma-separated connection counts of the serving runs",
    )
    parser.add_argument("--requests", type=int, default=4000, help="per measured serving run")
    parser.add_argument("--seconds", type=float, default=20.0, help="cap per serving run")
    parser.add_argument("--cold", type=int, default=100, help="cold requests (sequential)")
    parser.add_argument("--skip", default="", help=f"comma-separated parts of {PARTS}")
    parser.add_argument(
        "--reference-python",
        default=None,
        help="interpreter with torch + transformers for bench/encode.py",
    )
    args = parser.parse_args(argv)
    args.connections = sorted({int(c) for c in args.connections.split(",") if c.strip()})
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if unknown := skip - set(PARTS):
        parser.error(f"--skip: unknown part(s) {sorted(unknown)}; parts are {PARTS}")

    started = dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    machine = describe_machine()  # load average before anything of ours runs
    model = model_summary(args.model)
    log(f"model {args.model}: {model or 'missing'}; writing {args.output}")
    missing_model = (
        f"no artifact at {args.model} (no manifest.json): run `make train` first "
        "(or pass --model artifacts/<version>)"
    )
    serving: dict[int, dict] = {}  # bench_serve's figures, the variants' default row

    def serve(a) -> Section:
        sec, figures = bench_serve(a)
        serving.update(figures)
        return sec

    # part -> (title when skipped, needs the artifact, runner), in PARTS order
    runners = {
        "serve": ("Serving", True, serve),
        "variants": ("Serving variants", True, lambda a: bench_variants(a, serving)),
        "rank": ("Ranking and batch scoring", True, bench_rank),
        "feedback": ("Feedback loop", True, bench_feedback),
        "rollout": ("Safe rollout", True, bench_rollout),
        "fairness": ("No request can starve", True, bench_fairness),
        "catalog": ("Online catalog", True, bench_catalog),
        "encode": ("Encoder", False, bench_encode),
        "scaling": ("Scaling", True, bench_scaling),
        "train": ("Training", False, bench_train),
        "rss": ("Memory", True, bench_rss),
        "startup": ("Start-up", True, bench_startup),
        "train_scale": ("Training at scale", False, bench_train_scale),
    }
    assert tuple(runners) == PARTS
    sections: list[Section] = []
    for part, (title, needs_model, runner) in runners.items():
        if part in skip:
            continue
        if needs_model and model is None:
            sections.append(Section(title, skipped=missing_model))
        else:
            sections.append(runner(args))

    head = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`python -m bench`) on {started:%Y-%m-%d %H:%M %Z} in "
        f"{time.perf_counter() - t0:.0f} s. Every figure is shown next to a baseline measured "
        "in the same run; regenerate rather than edit.",
        "",
    ]
    if model:
        head.append(
            f"Model: `{model['version']}` from `{args.model}` (backbone `{model['backbone']}`, "
            f"{model['layers']} layers x {model['hidden']})."
        )
        if model["backbone"] != "minilm-l6":
            head.append(
                "\n> Not the default model: these figures describe the artifact above, not the "
                "`make train` MiniLM model."
            )
    else:
        head.append(f"Model: none ({missing_model}).")
    head += [
        "",
        "What was profiled and fixed where a target was missed, with before/after figures: "
        "[PROFILING.md](PROFILING.md).",
    ]
    head += ["", "## Machine", "", *machine, ""]
    if skip:
        head += [f"Parts skipped on request (--skip): {', '.join(sorted(skip))}.", ""]
    text = "\n".join(head) + "\n" + "\n".join(s.render() for s in sections)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
