"""The exposition: no ``_created`` series; with several workers, every worker's values.

Multiprocess mode is chosen when prometheus-client is imported, so those checks run in a
fresh interpreter with ``PROMETHEUS_MULTIPROC_DIR`` set, two "workers" being two processes
that write into the same directory.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics, exposition

WORKER = """
import sys
from service.metrics import Metrics
m = Metrics()
m.requests.labels(endpoint="/predict-rating", status="200").inc(int(sys.argv[1]))
m.prediction_psi.set(float(sys.argv[2]))
m.set_model("v1", "tiny")
m.set_model(sys.argv[3], "tiny")  # a reload: v1's series must not stay
"""
SCRAPE = """
from service.metrics import Metrics, exposition
print(exposition(Metrics()).decode())
"""


def _samples(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_no_created_series_in_one_process():
    m = Metrics()
    m.requests.labels(endpoint="/x", status="200").inc()
    m.batch_size.observe(3)
    text = exposition(m).decode()
    assert "levi_requests_total" in text and "_created" not in text


def test_several_processes_sum_counters_and_combine_gauges_by_mode(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def run(code: str, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    run(WORKER, "5", "0.1", "v2")
    run(WORKER, "7", "0.3", "v2")  # the later one: its PSI is the most recent
    samples = _samples(run(SCRAPE))
    assert (
        samples[("levi_requests_total", (("endpoint", "/predict-rating"), ("status", "200")))] == 12
    )
    assert samples[("levi_prediction_psi", ())] == 0.3
    info = {labels: v for (name, labels), v in samples.items() if name == "levi_model_info"}
    assert len(info) == 2 and set(info.values()) == {1.0}  # one per process (pid), v2 only
    assert all(dict(labels)["model_version"] == "v2" for labels in info)
    assert not any(name.endswith("_created") for name, _ in samples)
