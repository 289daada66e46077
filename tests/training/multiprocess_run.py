"""One process of a test run of the whole pipeline on the tiny data (tests/training/
test_distributed.py starts it): ``python multiprocess_run.py OUT [COORDINATOR N I]``.

Without a coordinator it is one process (its devices from XLA_FLAGS); with one, process I of
N. Every process writes ``OUT/process-I.npz``: the trained parameters of every run, the report
figures and the layout it fed. ``LEVI_TEST_SLEEP_AFTER_DATA`` seconds of sleep after the data
stage give a test the time to kill a process mid-run; ``LEVI_TEST_FAIL_PROCESS=I`` makes process I
report an error (exit 2, as for a bad spec) right after the catalog is written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    from training import distributed

    cfg = distributed.DistributedConfig()
    if len(argv) > 1:
        cfg = distributed.DistributedConfig(
            argv[1], int(argv[2]), int(argv[3]), heartbeat_timeout=10
        )
    distributed.initialize(cfg)
    return distributed.run_or_exit(lambda: _run(out)) if cfg.enabled else _run(out)


def _run(out: Path) -> int:
    import jax
    import numpy as np
    from support.tiny_data import make_tiny_backbone, write_tiny_catalog

    from training.config import TrainConfig
    from training.pipeline import run_pipeline

    me = jax.process_index()
    data = out / "data"
    if me == 0:
        spec = write_tiny_catalog(data)
        # Row groups of 100 ratings: each process reads its groups only.
        import pandas as pd

        ratings = pd.read_parquet(data / "ratings.parquet")
        ratings.to_parquet(data / "ratings.parquet", index=False, row_group_size=100)
    from training import distributed

    distributed.barrier("catalog written")
    if os.environ.get("LEVI_TEST_FAIL_PROCESS") == str(me):
        print(f"error: process {me} reports a bad spec (test)", flush=True)
        return 2
    spec = data / "spec.toml"
    cfg = TrainConfig.tiny().replace(
        dataset=str(spec),
        methods=("global_mean", "biases", "levi"),
        seeds=(0,),
        lrs=(1e-2,),
        max_epochs=2,
        batch_size=32,
        data_shards=2,
    )
    pause = float(os.environ.get("LEVI_TEST_SLEEP_AFTER_DATA", "0"))

    def log(line: str) -> None:
        print(line, flush=True)
        if pause and line.startswith("[data]"):
            time.sleep(pause)

    (out / f"backbone-{me}").mkdir(parents=True, exist_ok=True)
    backbone = make_tiny_backbone(out / f"backbone-{me}")
    result = run_pipeline(
        cfg,
        output_dir=out / "run",
        backbone=backbone,
        cache=out / "cache",
        progress=False,
        log=log,
    )
    flat = {}
    for method, runs in result.runs.items():
        for r in runs:
            leaves = jax.tree_util.tree_flatten_with_path(r.params)[0]
            for path, leaf in leaves:
                flat[f"{method}/{r.seed}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
            flat[f"{method}/{r.seed}/steps"] = np.asarray(r.steps)
            flat[f"{method}/{r.seed}/resumed_from"] = np.asarray(r.resumed_from)
    np.savez(out / f"process-{me}.npz", **flat)
    (out / f"process-{me}.json").write_text(
        json.dumps(
            {
                "methods": result.report["methods"],
                "online": result.report["online_corrections"],
                "exported": result.report["exported"],
                "report_dir": str(result.report_dir),
                "devices": jax.device_count(),
            },
            default=float,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
