"""How training grows with the catalog: stage times and peak memory on generated catalogs.

    .venv/bin/python -m bench.train_scale [--catalogs 20000x8000,40000x16000] [--processes 1,2]
        [--json FILE] [--doc docs/BENCHMARKS.md]

Each catalog (users x items, about 28 ratings per user: ``bench/synthetic_catalog.py``) is
trained by ``python -m training`` through its dataset spec: LEVI only, one seed, one learning
rate, one epoch, export on, a cold activation cache (a fresh ``LEVI_CACHE_DIR`` holding only
the packaged backbone), so every stage does its full work. The resident memory of each
training process (with its children) is sampled every ``--interval`` seconds and attributed to
the stage running then (a stage ends when the trainer logs ``[stage] N s``).

With ``--processes N`` (N > 1) the same catalog is trained by N cooperating processes on this
machine (``--coordinator 127.0.0.1:PORT --num-processes N --process-id I``, one CPU device
each); each process's peak is reported next to the single process's.

Results go to a JSON file (``--json``) and, with ``--doc``, replace the section "Training at
scale" of that Markdown file (``make bench`` renders the same section from the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data", "encode", "train", "evaluate", "export")
STAGE_LINE = re.compile(r"^\[(?P<stage>\w+)\] (?P<seconds>[\d.]+)s$")
TRAIN_ARGS = ("--methods", "levi", "--seeds", "0", "--lrs", "1e-3", "--epochs", "1", "--quiet")
SECTION = "## Training at scale: generated catalogs (bench/train_scale.py)"


@dataclass
class ProcessRun:
    """One training process: its stage times (s) and peak resident memory (bytes) per stage."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    total_s: float = 0.0
    returncode: int | None = None
    log_tail: str = ""

    @property
    def peak_rss(self) -> int:
        return max(self.peak.values(), default=0)


@dataclass
class CatalogRun:
    users: int
    items: int
    ratings: int
    texts: int
    activation_bytes: int
    processes: int
    runs: list[ProcessRun]


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and its children (0 once it has exited)."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def _watch(popen: subprocess.Popen, run: ProcessRun, interval: float) -> None:
    """Read the trainer's stdout (stage lines) while sampling its memory."""
    stage = {"now": STAGES[0]}
    lines: list[str] = []

    def read() -> None:
        for line in popen.stdout:
            line = line.rstrip()
            lines.append(line)
            m = STAGE_LINE.match(line)
            if m:
                run.seconds[m["stage"]] = float(m["seconds"])
                later = [s for s in STAGES if s not in run.seconds]
                stage["now"] = later[0] if later else "report"

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc = psutil.Process(popen.pid)
    while popen.poll() is None:
        rss = tree_rss(proc)
        now = stage["now"]
        run.peak[now] = max(run.peak.get(now, 0), rss)
        time.sleep(interval)
    reader.join(timeout=10)
    run.returncode = popen.returncode
    run.log_tail = "\n".join(lines[-30:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bench_cache(root: Path) -> Path:
    """A cache directory with the packaged backbone and data but no activations."""
    from model.packaged import cache_dir

    source = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    for name in ("wheels", "extracted"):
        if (source / name).exists() and not (root / name).exists():
            (root / name).symlink_to(source / name)
    return root


def train_catalog(
    spec: Path, work: Path, processes: int, interval: float, timeout: float
) -> list[ProcessRun]:
    """Run ``python -m training`` on ``spec`` as ``processes`` cooperating processes."""
    cache = _bench_cache(work / "cache")
    env = {**os.environ, "LEVI_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    env.pop("XLA_FLAGS", None)
    base = [sys.executable, "-m", "training", "--config", str(spec), *TRAIN_ARGS]
    base += ["--output-dir", str(work / "out")]
    commands = [base]
    if processes > 1:
        coordinator = f"127.0.0.1:{_free_port()}"
        commands = [
            [*base, "--coordinator", coordinator, "--num-processes", str(processes)]
            + ["--process-id", str(i)]
            for i in range(processes)
        ]
    runs = [ProcessRun() for _ in commands]
    start = time.perf_counter()
    popens = [
        subprocess.Popen(
            c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for c in commands
    ]
    watchers = [
        threading.Thread(target=_watch, args=(p, r, interval), daemon=True)
        for p, r in zip(popens, runs, strict=True)
    ]
    for w in watchers:
        w.start()
    for p, w in zip(popens, watchers, strict=True):
        try:
            p.wait(timeout=max(1.0, timeout - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            p.kill()
        w.join(timeout=30)
    for r in runs:
        r.total_s = time.perf_counter() - start
    return runs


def _activation_bytes(cache: Path) -> tuple[int, int]:
    """(texts, bytes) of the activations the run wrote to its cache."""
    import numpy as np

    texts, size = 0, 0
    for values in (cache / "activations").rglob("*.values.npy"):
        array = np.load(values, mmap_mode="r")
        texts += array.shape[0]
        size += array.nbytes
    return texts, size


def run_catalog(
    users: int, items: int, processes: int, work: Path, interval: float, timeout: float
) -> CatalogRun:
    import pandas as pd

    from bench.synthetic_catalog import write_catalog

    spec = write_catalog(work / "catalog", users, items)
    ratings = len(pd.read_parquet(spec.parent / "ratings.parquet", columns=["rating"]))
    runs = train_catalog(spec, work, processes, interval, timeout)
    texts, size = _activation_bytes(work / "cache")
    return CatalogRun(users, items, ratings, texts, size, processes, runs)


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def render(results: list[CatalogRun]) -> list[str]:
    """The Markdown section of ``results``."""
    lines = [
        SECTION,
        "",
        "`python -m training --config <generated spec> " + " ".join(TRAIN_ARGS[:-1]) + "` on "
        "catalogs from bench/synthetic_catalog.py (Parquet ratings, about 28 per user; a fifth "
        "of the items OOD), a cold activation cache; seconds per stage as the trainer logs "
        "them, peak resident memory of each process sampled by bench/train_scale.py. "
        '"beyond activations": (peak - the per-text activation tables) / ratings.',
        "",
        "| ratings | users x items (texts) | processes | data | encode | train | evaluate "
        "| export | total | export share | peak RSS | beyond activations |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results:
        for k, r in enumerate(c.runs):
            s = r.seconds
            stages = " | ".join(f"{s[x]:.1f} s" if x in s else "-" for x in STAGES)
            total = sum(s.values())
            share = f"{s.get('export', 0) / total:.0%}" if total else "-"
            who = str(c.processes) if c.processes == 1 else f"{c.processes} (process {k})"
            failed = "" if r.returncode == 0 else f" (exit {r.returncode})"
            beyond = (r.peak_rss - c.activation_bytes) / max(1, c.ratings)
            lines.append(
                f"| {c.ratings:,} | {c.users:,} x {c.items:,} ({c.texts:,}) | {who}{failed} | "
                f"{stages} | {total:.0f} s | {share} | {_mb(r.peak_rss)} | {beyond:,.0f} B |"
            )
    ones = sorted(
        (c for c in results if c.processes == 1 and c.runs[0].peak_rss), key=lambda c: c.ratings
    )
    for small, large in zip(ones, ones[1:], strict=False):
        grown = (large.runs[0].peak_rss - large.activation_bytes) - (
            small.runs[0].peak_rss - small.activation_bytes
        )
        lines.append("")
        lines.append(
            f"From {small.ratings:,} to {large.ratings:,} ratings the peak beyond the activation "
            f"tables grows by {grown / max(1, large.ratings - small.ratings):,.0f} B per added "
            "rating (what the catalog costs; the rest of the peak is the process's fixed part: "
            "the runtime, the backbone, compiled executables)."
        )
    singles = {(c.users, c.items): c for c in results if c.processes == 1}
    for c in results:
        single = singles.get((c.users, c.items))
        if c.processes > 1 and single and single.runs[0].peak_rss:
            ratio = max(r.peak_rss for r in c.runs) / single.runs[0].peak_rss
            lines.append("")
            lines.append(
                f"{c.users:,} x {c.items:,}, {c.processes} processes: the largest per-process "
                f"peak is {ratio:.2f}x the single process's."
            )
    lines.append("")
    lines.append("Peak memory by stage (GB), per run:")
    lines.append("")
    lines.append("| ratings | processes | " + " | ".join(STAGES) + " | report |")
    lines.append("|---|---|" + "---|" * (len(STAGES) + 1))
    for c in results:
        for k, r in enumerate(c.runs):
            who = str(c.processes) if c.processes == 1 else f"{c.processes} (process {k})"
            cells = " | ".join(
                f"{r.peak[x] / 1e9:.2f}" if x in r.peak else "-" for x in (*STAGES, "report")
            )
            lines.append(f"| {c.ratings:,} | {who} | {cells} |")
    return lines


def replace_section(doc: Path, lines: list[str]) -> None:
    """Put ``lines`` in place of the section titled :data:`SECTION` (appended when absent)."""
    text = doc.read_text() if doc.exists() else ""
    body = "\n".join(lines) + "\n"
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + ("" if end < 0 else text[end:])
    doc.write_text(text)


def load_results(path: Path) -> list[CatalogRun]:
    data = json.loads(path.read_text())
    return [
        CatalogRun(**{**c, "runs": [ProcessRun(**r) for r in c["runs"]]}) for c in data["catalogs"]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--catalogs", default="20000x8000,40000x16000", help="comma list of USERSxITEMS"
    )
    parser.add_argument("--processes", default="1", help="comma list of process counts")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds per training run")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "train_scale.json")
    parser.add_argument("--doc", type=Path, help="replace the section in this Markdown file")
    parser.add_argument(
        "--append", action="store_true", help="keep the results already in --json (other runs)"
    )
    args = parser.parse_args(argv)
    catalogs = [tuple(int(x) for x in c.split("x")) for c in args.catalogs.split(",") if c]
    counts = [int(x) for x in args.processes.split(",") if x]
    results = load_results(args.json) if args.append and args.json.exists() else []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for users, items in catalogs:
            for n in counts:
                work = Path(tmp) / f"{users}x{items}-{n}"
                print(f"[train_scale] {users:,} x {items:,}, {n} process(es)", flush=True)
                c = run_catalog(users, items, n, work, args.interval, args.timeout)
                for r in c.runs:
                    if r.returncode != 0:
                        print(f"[train_scale] exit {r.returncode}:\n{r.log_tail}", flush=True)
                results.append(c)
                args.json.write_text(json.dumps({"catalogs": [asdict(x) for x in results]}))
                print("\n".join(render(results)), flush=True)
    if args.doc:
        replace_section(args.doc, render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
