"""Encode texts with a backbone: one text per line on stdin, pooled activations to a .npy file.

    printf 'user id 1, age 24\\nmovie id 1, title Toy Story (1995)\\n' \\
        | python -m model.encode --backbone minilm-l6 --out acts.npy

The file holds float32 ``[n_texts, n_layers, d]``: the attention-masked mean of each encoder
layer's hidden states, in input order. Compiled shapes are kept in the persistent compilation
cache (``LEVI_COMPILATION_CACHE`` / ``LEVI_COMPILATION_CACHE_DIR``, model/compilation_cache.py),
so a second run loads them instead of compiling.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from model.backbone import BACKBONE_NAMES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m model.encode", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, default="minilm-l6")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="Hugging Face-format directory"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per text, special tokens included (default: the checkpoint's own limit)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output .npy file")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from model.backbone import load_backbone
    from model.compilation_cache import enable_from_env
    from model.hf_checkpoint import CheckpointError
    from model.packaged import PackagedSourceError

    texts = sys.stdin.read().splitlines()
    if not texts:
        print("error: no texts on stdin (expected one text per line)", file=sys.stderr)
        return 2
    try:
        enable_from_env()
        backbone = load_backbone(args.backbone, args.checkpoint, max_length=args.max_length)
        pooled = backbone.encode(texts, batch_size=args.batch_size, progress=args.progress)
    except (CheckpointError, PackagedSourceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, pooled.astype(np.float32))
    print(
        f"wrote {args.out}: {pooled.shape[0]} texts x {pooled.shape[1]} layers x "
        f"{pooled.shape[2]} (backbone {backbone.name}, fingerprint {backbone.fingerprint[:12]})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
