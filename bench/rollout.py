"""A simulated rollout: a weaker champion, the default LEVI model as challenger, judged by the
ratings users send back; and what the second version costs the champion.

    .venv/bin/python -m bench.rollout --model artifacts/latest [--weak DIR] [--limit N]

- **The gate.** Champion = a weaker model (``--weak``; default: LEVI trained for one epoch
  at a tenth of the learning rate, written once into ``artifacts-bench/``), challenger =
  ``--model``, a 50% canary with shadow, ``LEVI_GATE=1``. The MovieLens preset's ID test
  then OOD ratings are replayed in time order: ``POST /predict-rating``, then ``POST
  /feedback``. Reported: how many joined events the gate needed to decide, whether it chose
  the model that is better offline, both versions' online RMSE next to their offline
  figures (report.json).
- **Cost.** In one service (no Redis), at a fixed request rate (open loop: latency from the
  scheduled send time), champion p50 / p99: alone; while the challenger loads; with the
  challenger loaded, shadow off vs on (target: p99 within +10%); after a promotion. RSS
  with one version vs two sharing the backbone (target: at most +15%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench.feedback import replay_parts
from bench.rank import ROOT, serving

ADMIN_TOKEN = "bench-rollout-" + "Zq8xT4kLw2"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TARGETS = {"shadow_p99_ratio": 1.10, "rss_ratio": 1.15}
ROUNDS = 3  # shadow off / on alternations of the cost phase


def weak_model(out_root: Path) -> Path:
    """A weaker LEVI of the same backbone: one epoch at learning rate 1e-4 (seed 0)."""
    latest = out_root / "latest"
    if (latest / "manifest.json").is_file():
        return latest.resolve()
    cmd = [
        sys.executable,
        "-m",
        "training",
        "--methods",
        "levi",
        "--seeds",
        "0",
        "--lrs",
        "1e-4",
        "--epochs",
        "1",
        "--output-dir",
        str(out_root),
        "--quiet",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return latest.resolve()


def offline(model: Path) -> dict[str, float | None]:
    """The exported model's ID test and OOD RMSE from its report.json (``exported``: scored
    end to end through the artifact at training time)."""
    try:
        exported = json.loads((model / "report.json").read_text()).get("exported") or {}
    except (OSError, ValueError):
        exported = {}
    return {"id": exported.get("id_test_rmse"), "ood": exported.get("ood_rmse")}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


async def _open_loop(base: str, rate: float, seconds: float, pairs: list[dict]) -> np.ndarray:
    """Latencies (ms) of ``/predict-rating`` sent at a fixed rate, each from its scheduled
    send time (no coordinated omission); failures count as NaN."""
    out: list[float] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        t0 = time.perf_counter()
        n = int(rate * seconds)

        async def one(k: int) -> None:
            due = t0 + k / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                r = await client.post(f"{base}/predict-rating", json=pairs[k % len(pairs)])
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append((time.perf_counter() - due) * 1000 if ok else float("nan"))

        await asyncio.gather(*(one(k) for k in range(n)))
    return np.asarray(out)


def load(base: str, rate: float, seconds: float, pairs: list[dict]) -> np.ndarray:
    return asyncio.run(_open_loop(base, rate, seconds, pairs))


def fmt(lat: np.ndarray) -> str:
    ok = lat[~np.isnan(lat)]
    fails = int(np.isnan(lat).sum())
    return (
        f"p50 {np.percentile(ok, 50):.1f} ms, p99 {np.percentile(ok, 99):.1f} ms "
        f"({len(lat)} requests, {fails} failed)"
    )


def p99(lat: np.ndarray) -> float:
    return float(np.percentile(lat[~np.isnan(lat)], 99))


def shadow_counts(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("levi_shadow_pairs_total{"):
            result = line.split('result="')[1].split('"')[0]
            out[result] = float(line.rsplit(" ", 1)[1])
    return out


def cost(champion: Path, challenger: Path, rate: float, seconds: float) -> list[str]:
    """Champion latency and RSS through a challenger's load, shadow off/on, a promotion."""
    pairs = [{"user_id": str(u), "item_id": str(i)} for u in range(1, 201) for i in range(1, 51)]
    lines = []
    env = {"LEVI_ADMIN_TOKEN": ADMIN_TOKEN, "LEVI_WARMUP": "all", "LEVI_FEEDBACK_DIR": ""}
    with serving(champion, 900, **env) as (base, proc, _):
        with httpx.Client(timeout=120) as c:  # every pair's projections cached
            for start in range(0, len(pairs), 100):
                r = c.post(
                    f"{base}/predict-rating/batch", json={"requests": pairs[start : start + 100]}
                )
                assert r.status_code == 200, r.text[:300]
        load(base, rate, 2, pairs)
        alone = load(base, rate, seconds, pairs)
        rss_one = rss_mib(proc.pid)
        answer: dict = {}

        def put() -> None:
            body = {"path": str(challenger), "canary": 0.0, "shadow": False}
            r = httpx.put(f"{base}/admin/challenger", json=body, headers=ADMIN, timeout=600)
            answer["status"], answer["body"] = r.status_code, r.json()

        loader = threading.Thread(target=put)
        t = time.perf_counter()
        loader.start()
        during = []
        while loader.is_alive():
            during.append(load(base, rate, 1.0, pairs))
        loader.join()
        load_s = time.perf_counter() - t
        assert answer["status"] == 200, answer
        during_lat = np.concatenate(during)
        rss_two = rss_mib(proc.pid)
        # Shadow off and on, alternated in rounds (pooled per condition), so that drift of a
        # shared machine falls on both alike.
        offs, ons, shadowed = [], [], {}
        for _ in range(ROUNDS):
            for shadow, into in ((False, offs), (True, ons)):
                body = {"path": str(challenger), "canary": 0.0, "shadow": shadow}
                r = httpx.put(f"{base}/admin/challenger", json=body, headers=ADMIN, timeout=600)
                assert r.status_code == 200, r.text
                before = shadow_counts(base)
                into.append(load(base, rate, seconds / ROUNDS, pairs))
                after = shadow_counts(base)
                for k in after:
                    shadowed[k] = shadowed.get(k, 0) + after[k] - before.get(k, 0)
        off, on = np.concatenate(offs), np.concatenate(ons)
        r = httpx.post(f"{base}/admin/promote", headers=ADMIN, timeout=600)
        assert r.status_code == 200, r.text
        promoted = load(base, rate, seconds, pairs)
    ratio = p99(on) / p99(off)
    rss_ratio = rss_two / rss_one
    ok = "met" if ratio <= TARGETS["shadow_p99_ratio"] else "MISSED"
    rss_ok = "met" if rss_ratio <= TARGETS["rss_ratio"] else "MISSED"
    lines += [
        f"load: {rate:g} requests/s (open loop) of /predict-rating over 10,000 warm pairs, "
        f"{seconds:g} s per phase; champion {champion.name}, challenger {challenger.name}",
        f"champion alone: {fmt(alone)}",
        f"while the challenger loads ({load_s:.1f} s, at lower CPU priority, backbone shared): "
        f"{fmt(during_lat)}",
        f"challenger loaded, shadow off ({ROUNDS} rounds alternated with shadow on): {fmt(off)}",
        f"challenger loaded, shadow on: {fmt(on)}; shadow pairs scored "
        f"{shadowed.get('scored', 0):.0f}, dropped {shadowed.get('dropped', 0):.0f}, expired "
        f"{shadowed.get('expired', 0):.0f}",
        f"shadow on / off p99: **{ratio:.2f}** (target <= {TARGETS['shadow_p99_ratio']:.2f}: {ok})",
        f"after the promotion (the challenger's state kept): {fmt(promoted)}",
        f"RSS: one version {rss_one:.0f} MiB, two versions (shared backbone) {rss_two:.0f} MiB: "
        f"**{rss_ratio:.2f}x** (target <= {TARGETS['rss_ratio']:.2f}: {rss_ok})",
    ]
    return lines


def gate(champion: Path, challenger: Path, limit: int | None, min_events: int) -> list[str]:
    """Replay ID test then OOD ratings through a 50% canary with shadow and the gate on."""
    parts = replay_parts()
    events = parts["test"] + parts["ood"]
    events = events[:limit] if limit else events
    weak_v, strong_v = _version(champion), _version(challenger)
    env = {
        "LEVI_ADMIN_TOKEN": ADMIN_TOKEN,
        "LEVI_WARMUP": "all",
        "LEVI_CHALLENGER_DIR": str(challenger),
        "LEVI_CANARY": "0.5",
        "LEVI_SHADOW": "true",
        "LEVI_GATE": "true",
        "LEVI_GATE_MIN_EVENTS": str(min_events),
    }
    decided_at, models = None, None
    with (
        tempfile.TemporaryDirectory() as tmp,
        serving(champion, 900, LEVI_FEEDBACK_DIR=tmp, **env) as (base, _, _),
        httpx.Client(timeout=60) as client,
    ):
        for k, (user, item, rating) in enumerate(events):
            p = client.post(f"{base}/predict-rating", json={"user_id": user, "item_id": item})
            assert p.status_code == 200, p.text[:300]
            if k % 20 == 0:
                time.sleep(0.01)  # idle moments: the shadow scoring runs in them
            f = client.post(
                f"{base}/feedback",
                json={"events": [{"user_id": user, "item_id": item, "rating": rating}]},
            )
            assert f.status_code == 200, f.text[:300]
            if k % 25 == 0 or k == len(events) - 1:
                models = client.get(f"{base}/v1/models").json()
                aliases = {a: v["model_version"] for v in models["versions"] for a in v["aliases"]}
                if "challenger" not in aliases:
                    decided_at = k + 1
                    break
        models = client.get(f"{base}/v1/models").json()
    aliases = {a: v["model_version"] for v in models["versions"] for a in v["aliases"]}
    online = {v["model_version"]: v["online"] for v in models["versions"]}
    off_weak, off_strong = offline(champion), offline(challenger)
    better = strong_v if (off_strong["id"] or 9) <= (off_weak["id"] or 9) else weak_v
    chosen = aliases.get("champion")
    lines = [
        f"champion (weaker) {weak_v}: offline LEVI RMSE ID test {_f(off_weak['id'])}, OOD "
        f"{_f(off_weak['ood'])}; challenger {strong_v}: ID test {_f(off_strong['id'])}, OOD "
        f"{_f(off_strong['ood'])}",
    ]
    if decided_at is None:
        lines.append(f"the gate did not decide within {len(events):,} events (min {min_events})")
    else:
        lines.append(
            f"the gate decided after {decided_at:,} feedback events (joined events at least "
            f"{min_events}): champion now {chosen}; "
            f"{'**the better model**' if chosen == better else '**NOT the better model**'}"
        )
    for v in (weak_v, strong_v):
        o = online.get(v)
        if o:
            lines.append(
                f"{v} online over the replay: RMSE (model alone) {_f(o['model']['rmse'])} on "
                f"{o['n']:,} joined events, served {_f(o['rmse'])}"
            )
    return lines


def _version(path: Path) -> str:
    return json.loads((Path(path) / "manifest.json").read_text())["model_version"]


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "artifacts" / "latest")
    p.add_argument("--weak", type=Path, default=None, help="the weaker champion's artifact")
    p.add_argument("--limit", type=int, default=None, help="events replayed (default: all)")
    p.add_argument("--min-events", type=int, default=300, help="LEVI_GATE_MIN_EVENTS")
    p.add_argument("--rate", type=float, default=150.0, help="requests/s of the cost phases")
    p.add_argument("--seconds", type=float, default=12.0, help="seconds per cost phase")
    args = p.parse_args(argv)
    challenger = Path(args.model).resolve()
    champion = (args.weak or weak_model(ROOT / "artifacts-bench" / "weak")).resolve()
    for line in gate(champion, challenger, args.limit, args.min_events):
        print(line)
    for line in cost(champion, challenger, args.rate, args.seconds):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
