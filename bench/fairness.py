"""No request can starve the others: single predictions next to maximal cold rankings.

    .venv/bin/python -m bench.fairness --model artifacts/latest [--seconds 15]

8 clients send ``POST /predict-rating`` of warm pairs back to back (closed loop), first
alone (the baseline), then while a ninth client sends ``POST /rank`` requests back to back,
each of new items with titles (cold: every candidate is encoded), as large as the service
admits (``LEVI_MAX_COLD_TOKENS``). Target (issue: no request can starve): the single
predictions' p99 within 3x of the baseline's, and no timeouts (504) at all.
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench.rank import ROOT, serving
from bench.serve import _load_wrk

TARGET_RATIO = 3.0
TITLE = "The Remarkable and Unexpected Adventures of a Film Never Seen Before, Part {k} ({y})"


BODIES = [{"user_id": str(1 + (k * 37) % 900), "item_id": str(1 + k % 1600)} for k in range(4000)]


def warm(base: str) -> None:
    """Every pair the single predictions send, scored once (their projections cached)."""
    with httpx.Client(timeout=120) as c:
        for start in range(0, len(BODIES), 100):
            r = c.post(
                f"{base}/predict-rating/batch", json={"requests": BODIES[start : start + 100]}
            )
            assert r.status_code == 200, r.text[:300]


def singles(base: str, seconds: float, connections: int = 8) -> dict:
    """``connections`` closed-loop clients of single predictions of warm pairs, by wrk (the
    C load generator of bench/serve.py): requests, errors (non-2xx: 503, 504), p50, p99."""
    return _load_wrk(f"{base}/predict-rating", BODIES, connections, seconds)


def rankings(base: str, stop: threading.Event, n: int, out: dict) -> None:
    """``/rank`` of ``n`` new titled items, back to back, until ``stop``."""
    counter = itertools.count()
    with httpx.Client(timeout=120) as c:
        while not stop.is_set():
            batch = next(counter)
            cands = [
                {
                    "item_id": f"fair-{batch}-{k}",
                    "item": {"title": TITLE.format(k=k, y=1990 + k % 30)},
                }
                for k in range(n)
            ]
            t = time.perf_counter()
            r = c.post(f"{base}/rank", json={"user_id": "7", "candidates": cands, "top_k": 10})
            out.setdefault("statuses", {}).setdefault(r.status_code, 0)
            out["statuses"][r.status_code] += 1
            if r.status_code == 200:
                out.setdefault("ms", []).append((time.perf_counter() - t) * 1000)
            elif r.status_code == 413:
                out["refused"] = r.json()["detail"]
                return


def largest_admitted() -> int:
    """The most cold titled candidates one ``/rank`` may bring: ``LEVI_MAX_COLD_TOKENS`` over
    the service's own estimate per new item (``Scorer.estimate_cold_tokens``), less the
    user's share, capped by ``LEVI_MAX_RANK_CANDIDATES``."""
    from service.cold_tokens import TEMPLATE_TOKENS
    from service.settings import Settings

    settings = Settings()
    longest = max(len(TITLE.format(k=k, y=2019)) for k in range(10_000))
    per_item = TEMPLATE_TOKENS + longest // 3
    return min(
        settings.max_rank_candidates, (settings.max_cold_tokens - TEMPLATE_TOKENS) // per_item
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "artifacts" / "latest")
    p.add_argument("--seconds", type=float, default=15.0)
    args = p.parse_args(argv)
    with serving(args.model, 900, LEVI_WARMUP="all", LEVI_FEEDBACK_DIR="") as (base, _, _):
        warm(base)
        alone = singles(base, args.seconds)
        n = largest_admitted()
        stop, ranks = threading.Event(), {}
        ranker = threading.Thread(target=rankings, args=(base, stop, n, ranks))
        ranker.start()
        time.sleep(0.5)
        mixed = singles(base, args.seconds)
        stop.set()
        ranker.join()
    ratio = mixed["p99_ms"] / alone["p99_ms"]
    rank_status = ranks.get("statuses", {})
    timeouts = rank_status.get(504, 0)
    ok = "met" if ratio <= TARGET_RATIO and timeouts == 0 and mixed["errors"] == 0 else "MISSED"
    rank_ms = np.asarray(ranks.get("ms", [np.nan]))
    print(
        f"8 connections of single predictions alone (wrk): {alone['rps']:,.0f} req/s, p50 "
        f"{alone['p50_ms']:.1f} ms, p99 {alone['p99_ms']:.1f} ms ({alone['requests']:,} "
        f"requests, {alone['errors']} errors)"
    )
    print(
        f"the same while one client sends /rank of {n:,} cold titled candidates back to back "
        f"(the most LEVI_MAX_COLD_TOKENS admits): {mixed['rps']:,.0f} req/s, p50 "
        f"{mixed['p50_ms']:.1f} ms, p99 {mixed['p99_ms']:.1f} ms ({mixed['requests']:,} "
        f"requests, {mixed['errors']} errors: non-2xx, 504 included)"
    )
    print(
        f"the rankings: {len(ranks.get('ms', []))} answered in {args.seconds:g} s, statuses "
        f"{rank_status}, each {np.nanmedian(rank_ms) / 1000:.2f} s (median)"
    )
    print(
        f"single-prediction p99 with / without the rankings: **{ratio:.2f}x**; timeouts: "
        f"{timeouts} rankings, {mixed['errors']} single predictions failed (target <= "
        f"{TARGET_RATIO:g}x and none: {ok})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
