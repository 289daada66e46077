"""Backbone encode throughput: our jitted Flax encoder vs the reference PyTorch implementation.

    .venv/bin/python -m bench.encode [--reference-python /tmp/refvenv/bin/python]

Both sides encode the same MovieLens-100K entity texts (943 user texts + 1,682 item texts
rendered with the default ``factored`` views) at the same batch size, sorted by token count
and pooled per layer (attention-masked mean over layers 1..N), and report sentences per second
after one untimed warm-up pass (our compiles, torch's allocator). The reference runs
transformers ``BertModel`` in a subprocess under ``--reference-python`` (an interpreter with
torch and transformers, which are not project dependencies); without one it is skipped.
Target: ours / reference >= 1.5.

Whole process (``--whole-process``, on by default): each side also runs once as a fresh
process that starts the interpreter, imports its stack, loads the checkpoint and encodes the
texts ``1 + repeats`` times (the warm-up pass included: 2,625 x 4 = 10,500 texts by default),
timed from the process's start to its exit. This is what a training run's encode or a new
replica pays, compiles and imports included. Ours runs twice, as ``python -m model.encode``
and the trainer do: first with an empty persistent compilation cache (a first run on a
machine: every shape compiles), then with the cache that run left (every later run, and a
replica whose cache is warm: the shapes load). The reference runs between the two. Target:
ours >= 1.0x the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_REFERENCE_PYTHON = "/tmp/refvenv/bin/python"

# Runs under the reference interpreter: argv = texts.json, checkpoint dir, batch, repeats.
REFERENCE_SCRIPT = r"""
import json, sys, time
import numpy as np
import torch
from transformers import AutoTokenizer, BertModel

texts = json.load(open(sys.argv[1]))
path = sys.argv[2]
batch_size, repeats, max_length = (int(a) for a in sys.argv[3:6])
tok = AutoTokenizer.from_pretrained(path)
model = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
lengths = [len(x) for x in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
order = np.argsort(lengths, kind="stable")

def run():
    cfg = model.config
    out = np.zeros((len(texts), cfg.num_hidden_layers, cfg.hidden_size), np.float32)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            b = tok([texts[i] for i in rows], padding=True, truncation=True,
                    max_length=max_length, return_tensors="pt")
            hs = model(**b, output_hidden_states=True).hidden_states[1:]
            m = b["attention_mask"].float()[:, None, :, None]
            x = torch.stack(hs, 1)
            out[rows] = ((x * m).sum(2) / m.sum(2)).numpy()
    return out

run()
times = []
for _ in range(repeats):
    t = time.perf_counter(); out = run(); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": min(times), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "checksum": float(out.sum())}))
"""


# Runs under our interpreter: argv = texts.json, batch, passes, max_length.
OURS_WHOLE_SCRIPT = r"""
import json, sys
from model.backbone import load_backbone
from model.compilation_cache import enable_from_env
enable_from_env()  # as python -m model.encode and the trainer
texts = json.load(open(sys.argv[1]))
batch_size, passes, max_length = (int(a) for a in sys.argv[2:5])
backbone = load_backbone("minilm-l6", max_length=max_length)
for _ in range(passes):
    out = backbone.encode(texts, batch_size=batch_size)
print(json.dumps({"checksum": float(out.sum())}))
"""


def movielens_entity_texts() -> list[str]:
    """The user and item texts of MovieLens-100K as the default preset's views render them."""
    from training.data import load_spec_dataset
    from training.spec import load_spec

    spec = load_spec("movielens-100k")
    ds = load_spec_dataset(spec)
    user_view, item_view = spec.views().views
    texts = [user_view.render(u, {}) for u in ds.users.to_dict("records")]
    texts += [item_view.render({}, i) for i in ds.items.to_dict("records")]
    return texts


def bench_ours(texts: list[str], batch_size: int, repeats: int, max_length: int) -> dict:
    from model.backbone import load_backbone

    backbone = load_backbone("minilm-l6", max_length=max_length)
    t = time.perf_counter()
    backbone.encode(texts, batch_size=batch_size)  # warm-up: compiles each bucket shape
    warmup = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = backbone.encode(texts, batch_size=batch_size)
        times.append(time.perf_counter() - t)
    return {"seconds": min(times), "warmup_seconds": warmup, "checksum": float(out.sum())}


REFERENCE_ENV = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}


def _reference_argv(
    python: str, texts_file: Path, batch_size: int, repeats: int, max_length: int
) -> list[str]:
    """The reference run: one untimed pass, then ``repeats`` timed ones (REFERENCE_SCRIPT)."""
    from model.packaged import MINILM_WHEEL, extract_prefix

    return [
        python,
        "-c",
        REFERENCE_SCRIPT,
        str(texts_file),
        str(extract_prefix(MINILM_WHEEL)),
        str(batch_size),
        str(repeats),
        str(max_length),
    ]


def _timed_process(argv: list[str], env: dict | None = None) -> tuple[float, str | None]:
    """Wall seconds of one process from its start to its exit, and its failure if any."""
    t = time.perf_counter()
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1]
    )
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        return seconds, " | ".join(proc.stderr.strip().splitlines()[-3:])
    return seconds, None


def bench_whole_process(
    python: str | None, texts: list[str], batch_size: int, passes: int, max_length: int
) -> dict:
    """Seconds of a fresh process per side that encodes ``texts`` ``passes`` times (imports,
    loading and compiles included); ``reference`` is None without a reference interpreter."""

    out: dict = {"passes": passes, "texts": len(texts) * passes}
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        args = [str(batch_size), str(passes), str(max_length)]
        ours_argv = [sys.executable, "-c", OURS_WHOLE_SCRIPT, str(texts_file), *args]
        # A cache of this run's own: empty for the first process, that process's for the last.
        ours_env = {
            **os.environ,
            "LEVI_COMPILATION_CACHE": "1",
            "LEVI_COMPILATION_CACHE_DIR": str(Path(tmp) / "xla"),
        }
        out["ours"], err = _timed_process(ours_argv, env=ours_env)
        if err:
            raise RuntimeError(f"our whole-process run failed: {err}")
        out["reference"] = None
        if python and Path(python).exists():
            # the reference script's own passes: one warm-up + (passes - 1) timed
            seconds, err = _timed_process(
                _reference_argv(python, texts_file, batch_size, passes - 1, max_length),
                env=REFERENCE_ENV,
            )
            out["reference"] = None if err else seconds
        out["ours_cached"], err = _timed_process(ours_argv, env=ours_env)
        if err:
            raise RuntimeError(f"our whole-process run (cache warm) failed: {err}")
    return out


def bench_reference(
    python: str, texts: list[str], batch_size: int, repeats: int, max_length: int
) -> dict | str:
    """Reference timings, or the reason they were skipped."""
    if not Path(python).exists():
        return f"{python} does not exist"

    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        proc = subprocess.run(
            _reference_argv(python, texts_file, batch_size, repeats, max_length),
            capture_output=True,
            text=True,
            env=REFERENCE_ENV,
        )
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return f"reference run failed (torch/transformers importable under {python}?): {tail}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--reference-python",
        default=DEFAULT_REFERENCE_PYTHON,
        help="interpreter with torch + transformers for the reference side ('' to skip)",
    )
    parser.add_argument(
        "--whole-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time each side as a fresh process (imports, loading, compiles included)",
    )
    args = parser.parse_args(argv)

    texts = movielens_entity_texts()
    print(
        f"{len(texts)} MovieLens-100K entity texts, batch {args.batch_size}, {os.cpu_count()} CPUs"
    )
    ours = bench_ours(texts, args.batch_size, args.repeats, args.max_length)
    ours_rate = len(texts) / ours["seconds"]
    print(
        f"ours (flax, jit):        {ours_rate:8.1f} sentences/s  "
        f"(warm-up with compiles {ours['warmup_seconds']:.1f} s)"
    )
    if not args.reference_python:
        print("reference: skipped (--reference-python '')")
        return 0
    ref = bench_reference(
        args.reference_python, texts, args.batch_size, args.repeats, args.max_length
    )
    if isinstance(ref, str):
        print(f"reference: skipped ({ref})")
        return 0
    ref_rate = len(texts) / ref["seconds"]
    print(
        f"reference (torch {ref['torch']}, {ref['threads']} threads): {ref_rate:8.1f} sentences/s"
    )
    ratio = ours_rate / ref_rate
    print(f"ratio ours / reference:  {ratio:.2f}x (target >= 1.5x)")
    rel = abs(ours["checksum"] - ref["checksum"]) / max(abs(ref["checksum"]), 1e-9)
    print(f"output checksum relative difference: {rel:.1e}")
    if args.whole_process:
        whole = bench_whole_process(
            args.reference_python, texts, args.batch_size, 1 + args.repeats, args.max_length
        )
        cold, warm = whole["ours"], whole["ours_cached"]
        if whole["reference"] is None:
            print(
                f"whole process: ours {cold:.1f} s (empty compilation cache), {warm:.1f} s "
                "(the first run's cache); reference skipped"
            )
        else:
            ref_s = whole["reference"]
            print(
                f"whole process ({whole['texts']} texts, {whole['passes']} passes): ours "
                f"{cold:.1f} s (empty compilation cache), {warm:.1f} s (the first run's "
                f"cache), reference {ref_s:.1f} s, ratio {ref_s / cold:.2f}x / "
                f"{ref_s / warm:.2f}x (target >= 1.0x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
