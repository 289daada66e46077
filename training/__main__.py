"""``python -m training``: train LEVI and the baselines, write the report and the artifact.

Flags only; the stages live in ``training.pipeline``. ``make train`` runs it with defaults.
"""

from __future__ import annotations

import argparse
import sys
import time

from training.config import METHODS, TrainConfig


def _csv(kind):
    return lambda text: tuple(kind(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train LEVI and the report's baselines on a ratings data set, write "
        "report.json/report.md/plots and export a versioned artifact.",
    )
    p.add_argument("--tiny", action="store_true", help="the tiny preset (smoke runs)")
    p.add_argument("--source", help="packaged (default), grouplens, tfds or amazon")
    p.add_argument("--data-path", help="directory of a grouplens or amazon source")
    p.add_argument("--backbone", help="minilm-l6 (default), bert or t5")
    p.add_argument("--checkpoint", help="Hugging Face-format directory of the backbone")
    p.add_argument(
        "--max-length", type=int, help="tokens per text (default: the checkpoint's own limit)"
    )
    p.add_argument("--views", choices=("factored", "pair"))
    p.add_argument("--genres", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--gender", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--methods", type=_csv(str), help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--seeds", type=_csv(int), help="comma list, e.g. 0,1,2")
    p.add_argument("--lrs", type=_csv(float), help="learning-rate grid, e.g. 1e-4,1e-3,1e-2")
    p.add_argument("--epochs", type=int, dest="max_epochs", help="maximum epochs per run")
    p.add_argument("--no-export", action="store_true", help="write the report only")
    p.add_argument("--output-dir", default="artifacts", help="default: artifacts")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig.tiny() if args.tiny else TrainConfig.default()
    names = ("source", "data_path", "backbone", "checkpoint", "views", "genres", "gender")
    names += ("max_length", "methods", "seeds", "lrs", "max_epochs")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.no_export:
        overrides["export"] = False
    return cfg.replace(**overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from training.pipeline import run_pipeline

    start = time.perf_counter()
    result = run_pipeline(cfg, output_dir=args.output_dir, progress=not args.quiet)
    print(f"stage timings: {', '.join(f'{k} {v:.1f}s' for k, v in result.timings.items())}")
    print(f"total: {time.perf_counter() - start:.1f}s")
    print(f"report: {result.report_dir / 'report.md'} (report.json, plots/ beside it)")
    print(f"artifact: {result.artifact if result.artifact else 'not exported'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
