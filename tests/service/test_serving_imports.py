"""The serving process reads its artifact and scores without pandas (about 34 MiB of every
replica's memory: docs/PROFILING.md, "Third pass"; the batch and import CLIs still use it)
and without Flax (8 MiB: the head's configuration and the decomposition's layout are plain
data in model/head_config.py and model/decomposed_layout.py; the exported functions need no
module)."""

from __future__ import annotations

import subprocess
import sys

SERVE_AND_SCORE = """
import sys
import service.app
from model.artifact import load_artifact
from service.metrics import Metrics
from service.scorer import ScoreInput
from service.scorer_setup import build_scorer
from service.settings import Settings

scorer = build_scorer(load_artifact(sys.argv[1]), Settings(), Metrics(), redis=None)
known, cold = "1", "cold-item"
batch = scorer.score(
    [ScoreInput(known, "10"), ScoreInput("new-user", cold, item={"title": "A New Film (2031)"})]
)
assert len(batch) == 2
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("pandas", "flax"))
print("pandas or flax modules:", loaded[:5])
sys.exit(1 if loaded else 0)
"""


def test_loading_and_scoring_import_neither_pandas_nor_flax(artifacts):
    run = subprocess.run(
        [sys.executable, "-c", SERVE_AND_SCORE, str(artifacts.v2)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
