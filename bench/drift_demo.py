"""``make drift-demo``: the dashboard's story without Grafana.

Serves a model (``python -m service`` in a subprocess on 127.0.0.1), sends in-distribution
traffic (known users rating items the model was trained on), then out-of-distribution traffic
(the same users rating the items of the split's OOD side, which the model never saw), scrapes
``/metrics`` after every batch, and draws what Prometheus would have recorded: OOD score,
adapter disagreement, per-layer activation drift, prediction PSI, unknown-item share.

    python -m bench.drift_demo --model artifacts/latest --out drift_demo.png
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

WINDOWED = (
    "levi_ood_score_sum",
    "levi_ood_score_count",
    "levi_adapter_disagreement_sum",
    "levi_adapter_disagreement_count",
)


@dataclass
class Series:
    """Scraped values after each batch, and the window means between scrapes."""

    sent: list[int] = field(default_factory=list)
    ood_score: list[float] = field(default_factory=list)
    disagreement: list[float] = field(default_factory=list)
    psi: list[float] = field(default_factory=list)
    drift: list[np.ndarray] = field(default_factory=list)
    unknown_items: list[float] = field(default_factory=list)


def scrape(text: str) -> dict[str, object]:
    """The demo's metrics from one Prometheus text exposition."""
    out: dict[str, object] = {"drift": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in WINDOWED:
                out[s.name] = s.value
            elif s.name == "levi_prediction_psi":
                out["psi"] = s.value
            elif s.name == "levi_activation_drift":
                out["drift"][int(s.labels["layer"])] = s.value
            elif s.name == "levi_unknown_entities_total" and s.labels.get("kind") == "item":
                out["unknown_items"] = s.value
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(client: httpx.Client, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with code {proc.returncode} before ready")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the service was not ready after {timeout_s:.0f}s")


def traffic(model_dir: Path, n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """``n`` in-distribution and ``n`` OOD requests over the artifact's tables.

    In distribution: items of the training ratings (in the item id vocabulary of the
    artifact's features.json); OOD: the other items of its table (the split's OOD side, e.g.
    the genre-shift movies of MovieLens, the held-out items of a cold_items split), or, when
    every item was trained on (random and time splits), new item ids that carry the fields
    of existing items (cold starts).
    """
    import json

    import pandas as pd

    from model.features import FeatureSpec, clean_category

    users = pd.read_parquet(model_dir / "users.parquet")["user_id"].astype(str).to_numpy()
    items = pd.read_parquet(model_dir / "items.parquet")
    features = FeatureSpec.from_json(json.loads((model_dir / "features.json").read_text()))
    (id_column,) = [c for c in features.columns if c.entity == "item" and c.name == "item_id"]
    trained = set(id_column.vocab)
    is_id = items["item_id"].map(lambda i: clean_category(i) in trained)
    rng = np.random.default_rng(seed)

    def pick(pool: np.ndarray) -> list[dict]:
        return [
            {"user_id": str(u), "item_id": str(i)}
            for u, i in zip(rng.choice(users, n), rng.choice(pool, n), strict=True)
        ]

    id_items = items.loc[is_id, "item_id"].astype(str).to_numpy()
    ood_items = items.loc[~is_id, "item_id"].astype(str).to_numpy()
    if not len(id_items):
        raise SystemExit("the artifact's item table has no item of the training ratings")
    if len(ood_items):
        return pick(id_items), pick(ood_items)
    # Every item was trained on (random or time splits): new items, cold starts that carry
    # the fields of existing ones, stand in for the OOD side.
    fields = [c.name for c in features.fields_of("item")]
    rows = items.iloc[rng.integers(0, len(items), n)][fields].to_dict("records")
    cold = [
        {"user_id": str(u), "item_id": f"drift-demo-new-{k}", "item": _json_fields(r)}
        for k, (u, r) in enumerate(zip(rng.choice(users, n), rows, strict=True))
    ]
    return pick(id_items), cold


def _json_fields(record: dict) -> dict:
    """A table record as request fields: missing values left out, arrays as lists."""
    out = {}
    for k, v in record.items():
        if isinstance(v, np.ndarray | list | tuple):
            out[k] = [x.item() if hasattr(x, "item") else x for x in v]
        elif v is not None and not (isinstance(v, float) and v != v):
            out[k] = v.item() if hasattr(v, "item") else v
    return out


def run(args: argparse.Namespace) -> Series:
    model_dir = Path(args.model).resolve()
    id_reqs, ood_reqs = traffic(model_dir, args.requests, args.seed)
    port = args.port or _free_port()
    env = {**os.environ, "LEVI_LOG_LEVEL": "warning"}
    cmd = [
        sys.executable,
        "-m",
        "service",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(model_dir),
    ]
    proc = subprocess.Popen(cmd, env=env)
    series = Series()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            _wait_ready(client, proc, args.ready_timeout)
            prev = scrape(client.get("/metrics").text)
            sent = 0
            for phase, reqs in (("ID", id_reqs), ("OOD", ood_reqs)):
                for start in range(0, len(reqs), args.batch):
                    chunk = reqs[start : start + args.batch]
                    r = client.post("/predict-rating/batch", json={"requests": chunk})
                    r.raise_for_status()
                    sent += len(chunk)
                    now = scrape(client.get("/metrics").text)
                    _append(series, sent, prev, now, len(chunk))
                    prev = now
                print(f"{phase}: {len(reqs)} requests sent")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return series


def _delta_mean(prev: dict, now: dict, name: str) -> float:
    count = now.get(f"{name}_count", 0.0) - prev.get(f"{name}_count", 0.0)
    total = now.get(f"{name}_sum", 0.0) - prev.get(f"{name}_sum", 0.0)
    return total / count if count else float("nan")


def _append(series: Series, sent: int, prev: dict, now: dict, n: int) -> None:
    series.sent.append(sent)
    series.ood_score.append(_delta_mean(prev, now, "levi_ood_score"))
    series.disagreement.append(_delta_mean(prev, now, "levi_adapter_disagreement"))
    series.psi.append(float(now.get("psi", float("nan"))))
    drift = now["drift"]
    series.drift.append(np.array([drift[k] for k in sorted(drift)], dtype=np.float64))
    unknown = now.get("unknown_items", 0.0) - prev.get("unknown_items", 0.0)
    series.unknown_items.append(unknown / n)


def plot(series: Series, switch: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    x = np.array(series.sent)
    panels = [
        (axes[0, 0], series.ood_score, "OOD score (batch mean; training median = 1)"),
        (axes[0, 1], series.psi, "prediction PSI (sliding window)"),
        (axes[1, 1], series.disagreement, "adapter disagreement (batch mean)"),
    ]
    for ax, values, title in panels:
        ax.plot(x, values)
        ax.set_title(title)
    drift = np.stack(series.drift)  # [n_scrapes, n_layers]
    ax = axes[1, 0]
    for layer in range(drift.shape[1]):
        ax.plot(x, drift[:, layer], label=f"layer {layer + 1}")
    ax.set_title("activation drift by layer (in-distribution ~ 1)")
    ax.legend(fontsize=7, ncol=2)
    for ax in axes.flat:
        ax.axvline(switch, color="red", linestyle="--", linewidth=1)
        ax.set_xlabel("requests sent (red: ID -> OOD traffic)")
    fig.suptitle("LEVI Serve drift demo: in-distribution, then OOD traffic")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def summary(series: Series, switch: int) -> str:
    x = np.array(series.sent)
    before, after = x <= switch, x > switch
    ood = np.array(series.ood_score)
    dis = np.array(series.disagreement)
    drift = np.stack(series.drift).mean(axis=1)
    rows = [
        ("mean OOD score", np.nanmean(ood[before]), np.nanmean(ood[after])),
        ("mean adapter disagreement", np.nanmean(dis[before]), np.nanmean(dis[after])),
        ("activation drift (mean of layers, end)", drift[before][-1], drift[after][-1]),
        ("prediction PSI (end)", series.psi[int(before.sum()) - 1], series.psi[-1]),
    ]
    lines = ["| signal | ID phase | OOD phase |", "|---|---|---|"]
    lines += [f"| {name} | {a:.3f} | {b:.3f} |" for name, a, b in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drift_demo", description=__doc__)
    parser.add_argument("--model", default="artifacts/latest", help="artifact directory")
    parser.add_argument("--out", type=Path, default=Path("drift_demo.png"))
    parser.add_argument("--requests", type=int, default=1500, help="requests per phase")
    parser.add_argument("--batch", type=int, default=50, help="requests per batch call")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    if not (Path(args.model) / "manifest.json").is_file():
        print(f"error: no artifact at {args.model}; run `make train` first", file=sys.stderr)
        return 2
    series = run(args)
    plot(series, args.requests, args.out)
    print(summary(series, args.requests))
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
