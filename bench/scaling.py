"""How the model's cost grows with batch size and text length (the exported functions, in process).

    .venv/bin/python -m bench.scaling --model artifacts/latest [--repeats 20]

Two tables, each row next to its own baseline measured in the same run:

- head: ``Artifact.score`` at batch 1, 2, 4, ..., 128 (the micro-batcher's buckets) on random
  feature ids and activations; predictions/s and milliseconds per call, with the throughput
  relative to batch 1 (how much one micro-batch of b buys over b single calls).
- backbone: ``Artifact.encode`` over batch sizes x padded lengths (cache misses: cold-start
  texts); texts/s and milliseconds per call, relative to 16 tokens at the same batch size.

Each figure is the median of ``--repeats`` calls after one untimed call (its compile). Printed
as Markdown; ``make bench`` puts it in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HEAD_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
ENCODE_BATCHES = (1, 8, 32)
ENCODE_LENGTHS = (16, 32, 64, 128, 256)  # up to the packaged MiniLM's limit


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def head_table(art, repeats: int) -> list[str]:
    rng = np.random.default_rng(0)
    sizes = art.features.vocab_sizes
    n_views = art.views.n_views
    n_layers, d = art.reference.activation_mean.shape[1:]
    rows, base = [], None
    for b in HEAD_BATCHES:
        ids = np.stack([rng.integers(0, s, b) for s in sizes], axis=1).astype(np.int32)
        mh = np.zeros((b, art.features.n_multi_hot), np.float32)
        acts = rng.normal(size=(b, n_views, n_layers, d)).astype(np.float32)
        s = median_seconds(lambda ids=ids, mh=mh, acts=acts: art.score(ids, mh, acts), repeats)
        rate = b / s
        base = base or rate
        rows.append(f"| {b} | {s * 1e3:.3f} | {rate:,.0f} | {rate / base:.1f}x |")
    return [
        "Head (`Artifact.score`, the exported head function), per call:",
        "",
        "| batch | ms / call | predictions/s | vs batch 1 |",
        "|---|---|---|---|",
        *rows,
    ]


def encode_table(art, repeats: int) -> list[str]:
    # Real token ids: a long title-like text, cut to each length (max_length allowing).
    filler = "movie id 1234, title The Long and Winding Road of a Film Never Seen (2031); " * 20
    tokens = np.asarray(art.tokenizer.encode([filler])[0], np.int32)
    rows = []
    for b in ENCODE_BATCHES:
        base = None
        for length in (n for n in ENCODE_LENGTHS if n <= len(tokens)):
            ids = np.tile(tokens[:length], (b, 1))
            mask = np.ones((b, length), np.int32)
            s = median_seconds(lambda ids=ids, mask=mask: art.encode(ids, mask), repeats)
            rate = b / s
            base = base or rate
            rows.append(f"| {b} | {length} | {s * 1e3:.2f} | {rate:,.0f} | {rate / base:.2f}x |")
    return [
        "Backbone (`Artifact.encode`, cache misses), per call:",
        "",
        "| batch | tokens | ms / call | texts/s | vs 16 tokens |",
        "|---|---|---|---|---|",
        *rows,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/latest"))
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per figure")
    args = parser.parse_args(argv)
    from model.artifact import load_artifact

    art = load_artifact(args.model)
    lines = head_table(art, args.repeats) + [""] + encode_table(art, args.repeats)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
