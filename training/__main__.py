"""``python -m training``: train LEVI and the baselines, write the report and the artifact.

Flags only; ``training.pipeline`` runs the stages. ``make train`` runs it with defaults.
"""

from __future__ import annotations

import argparse
import sys
import time

from training.config import METHODS, TUNING_KINDS, TrainConfig
from training.spec import READERS, preset_names


def _csv(kind):
    return lambda text: tuple(kind(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train LEVI and the report's baselines on a ratings data set, write "
        "report.json/report.md/plots and export a versioned artifact. "
        "`python -m training init --ratings FILE ...` drafts a dataset spec from your files.",
    )
    data = p.add_mutually_exclusive_group()
    data.add_argument("--config", dest="dataset", metavar="SPEC", help="a dataset spec file (TOML)")
    data.add_argument(
        "--preset",
        dest="dataset",
        metavar="NAME",
        help=f"a shipped dataset spec: {', '.join(preset_names())} (default: movielens-100k)",
    )
    p.add_argument("--data-path", help="replaces the spec's ratings.path (a file or directory)")
    p.add_argument("--reader", choices=READERS, help="replaces the spec's reader")
    p.add_argument("--split-seed", type=int, help="replaces the spec's split.seed")
    p.add_argument(
        "--feedback",
        metavar="DIR",
        help="add the ratings the service logged from POST /feedback (its LEVI_FEEDBACK_DIR; "
        "every *.jsonl under DIR, each event once)",
    )
    p.add_argument(
        "--catalog",
        metavar="DIR",
        help="add the users and items registered in the service's catalog (its "
        "LEVI_CATALOG_DIR; every catalog-*.jsonl under DIR, each entity once with its latest "
        "record); may be the --feedback directory",
    )
    p.add_argument("--tiny", action="store_true", help="the tiny training preset (smoke runs)")
    p.add_argument("--backbone", help="minilm-l6 (default), bert or t5")
    p.add_argument("--checkpoint", help="Hugging Face-format directory of the backbone")
    p.add_argument(
        "--max-length", type=int, help="tokens per text (default: the checkpoint's own limit)"
    )
    tune = p.add_argument_group(
        "backbone tuning before LEVI (the paper's light-tuned backbone; FT, HT, LoRA, LPFT rows)"
    )
    tune.add_argument(
        "--backbone-tuning",
        dest="tuning_kind",
        choices=TUNING_KINDS,
        help="none (default: the frozen pre-trained backbone), half (top half of the layers, "
        "HT), lora (LoRA adapters, merged), full (FT), lpft (head first, then full)",
    )
    tune.add_argument("--tuning-steps", type=int, dest="tuning_steps", help="steps at most")
    tune.add_argument(
        "--tuning-text-fraction",
        type=float,
        dest="tuning_text_fraction",
        help="share of every view's training texts per step (default 0.25)",
    )
    tune.add_argument(
        "--tuning-eval-every", type=int, dest="tuning_eval_every", help="steps per validation (40)"
    )
    tune.add_argument("--tuning-lr", type=float, dest="tuning_lr", help="encoder learning rate")
    tune.add_argument("--lora-rank", type=int, dest="tuning_lora_rank", help="LoRA rank (8)")
    tune.add_argument(
        "--lora-from-layer",
        type=int,
        dest="tuning_lora_from_layer",
        help="first layer with LoRA adapters (0: all; above 0 the layers below are cached)",
    )
    p.add_argument("--methods", type=_csv(str), help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--seeds", type=_csv(int), help="comma list, e.g. 0,1,2")
    p.add_argument("--lrs", type=_csv(float), help="learning-rate grid, e.g. 1e-4,1e-3,1e-2")
    p.add_argument("--epochs", type=int, dest="max_epochs", help="maximum epochs per run")
    p.add_argument(
        "--data-shards",
        type=int,
        help="cut the ratings into this many shards, one fed by each process's devices "
        "(default: one per process; set it to train on one process what N processes train)",
    )
    p.add_argument("--no-export", action="store_true", help="write the report only")
    p.add_argument("--output-dir", default="artifacts", help="default: artifacts")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    many = p.add_argument_group(
        "several processes or hosts (jax.distributed; default: the environment's LEVI_COORDINATOR, "
        "LEVI_NUM_PROCESSES, LEVI_PROCESS_ID or JOB_COMPLETION_INDEX; Slurm and Open MPI "
        "detected; else one process)"
    )
    many.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    many.add_argument("--num-processes", type=int, help="processes in the run")
    many.add_argument("--process-id", type=int, help="this process, 0 .. N-1")
    many.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=30,
        help="seconds after which a silent process counts as dead and the others stop",
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig.tiny() if args.tiny else TrainConfig.default()
    names = ("dataset", "data_path", "reader", "split_seed", "feedback", "catalog", "backbone")
    names += ("checkpoint", "max_length", "methods", "seeds", "lrs", "max_epochs", "data_shards")
    names += ("tuning_kind", "tuning_steps", "tuning_eval_every", "tuning_text_fraction")
    names += ("tuning_lr",)
    names += ("tuning_lora_rank", "tuning_lora_from_layer")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.no_export:
        overrides["export"] = False
    return cfg.replace(**overrides)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["init"]:
        from training.init_spec import main as init_main

        return init_main(argv[1:])
    args = parse_args(argv)
    from model.compilation_cache import directory_from_env, enable_compilation_cache
    from training import distributed

    try:
        cfg = config_from_args(args)
        compilation_cache = directory_from_env()  # checked before joining the other processes
        processes = distributed.DistributedConfig.resolve(
            args.coordinator,
            args.num_processes,
            args.process_id,
            heartbeat_timeout=args.heartbeat_timeout,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    distributed.initialize(processes)  # before any other JAX call; nothing for one process
    if compilation_cache is not None:  # a second run loads its compiled shapes from disk
        enable_compilation_cache(compilation_cache)
    if processes.enabled:  # a failure anywhere must not leave the others waiting
        return distributed.run_or_exit(lambda: _train(cfg, args))
    return _train(cfg, args)


def _train(cfg: TrainConfig, args: argparse.Namespace) -> int:
    from training.data.tables import DataError
    from training.pipeline import run_pipeline
    from training.spec import SpecError

    start = time.perf_counter()
    try:
        result = run_pipeline(cfg, output_dir=args.output_dir, progress=not args.quiet)
    except (SpecError, DataError) as e:  # a bad spec or data: the message says what to fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"stage timings: {', '.join(f'{k} {v:.1f}s' for k, v in result.timings.items())}")
    print(f"total: {time.perf_counter() - start:.1f}s")
    if result.report_dir is not None:
        print(f"report: {result.report_dir / 'report.md'} (report.json, plots/ beside it)")
        print(f"artifact: {result.artifact if result.artifact else 'not exported'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
