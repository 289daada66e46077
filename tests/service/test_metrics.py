"""The exposition: no ``_created`` series; with several workers, every worker's values.

Multiprocess mode is chosen when prometheus-client is imported, so those checks run in a
fresh interpreter with ``PROMETHEUS_MULTIPROC_DIR`` set, two "workers" being two processes
that write into the same directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.servers import ROOT

from service.metrics import Metrics, exposition
from service.metrics_files import TolerantMultiProcessCollector, damage_of

WORKER = """
import os
import sys
from service.metrics import Metrics
print(os.getpid())
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
DAMAGED = "levi_metrics_damaged_files_total"


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


def _runner(directory: Path):
    """``run(code, *args)``: a fresh interpreter in multiprocess mode over ``directory``;
    its stdout (and stderr in ``run.stderr``)."""
    env = {"PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(directory)}

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
        run.stderr = proc.stderr
        return proc.stdout

    return run


def test_several_processes_sum_counters_and_combine_gauges_by_mode(tmp_path):
    run = _runner(tmp_path)

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


def test_damaged_value_files_are_left_out_counted_logged_and_a_dead_workers_removed(tmp_path):
    """A 0-byte file (a worker killed between creating and sizing it, client_python#1199),
    one cut short and one of garbage: the scrape answers with everything else."""
    from prometheus_client.multiprocess import MultiProcessCollector

    run = _runner(tmp_path)
    dead_1 = int(run(WORKER, "5", "0.1", "v2").split()[0])  # both have exited: dead pids
    dead_2 = int(run(WORKER, "7", "0.3", "v2").split()[0])
    (tmp_path / f"counter_{dead_1}.db").write_bytes(b"")  # its 5 requests are lost
    histogram = tmp_path / f"histogram_{dead_2}.db"
    histogram.write_bytes(histogram.read_bytes()[:200])  # cut short: the header says more
    zero_dead = tmp_path / f"summary_{dead_1}.db"
    zero_dead.write_bytes(b"")
    live = tmp_path / f"gauge_livesum_{os.getpid()}.db"  # this test runs: a live worker's
    live.write_bytes(b"\xff" * 4096)  # garbage: its header reads -1 bytes used
    stray = tmp_path / "notes.db"
    stray.write_bytes(b"not metrics")
    with pytest.raises(Exception):  # noqa: B017 - what the stock collector does
        list(MultiProcessCollector(None, str(tmp_path)).collect())

    samples = _samples(run(SCRAPE))
    assert "left out of the scrape" in run.stderr and str(zero_dead) in run.stderr
    assert (
        samples[("levi_requests_total", (("endpoint", "/predict-rating"), ("status", "200")))] == 7
    )
    assert samples[("levi_prediction_psi", ())] == 0.3
    assert samples[(DAMAGED, (("action", "removed"),))] == 3
    assert samples[(DAMAGED, (("action", "skipped"),))] == 2
    assert not (tmp_path / f"counter_{dead_1}.db").exists() and not histogram.exists()
    assert not zero_dead.exists()
    assert live.exists() and stray.exists()  # not a dead worker's: left in place
    samples = _samples(run(SCRAPE))  # the next scrape: only the ones left in place again
    assert samples[(DAMAGED, (("action", "removed"),))] == 3
    assert samples[(DAMAGED, (("action", "skipped"),))] == 4


def _header(used: int) -> bytes:
    return used.to_bytes(4, "little", signed=True) + b"\x00" * 4


def _file(key: bytes) -> bytes:
    """A value file of one entry (prometheus-client's layout), whatever the key says."""
    entry = len(key).to_bytes(4, "little") + key + b" " * (8 - (len(key) + 4) % 8) + b"\x00" * 16
    return _header(8 + len(entry)) + entry


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "0 bytes"),
        (b"\x00\x00", "2 bytes"),
        (b"\x00" * 4096, "says 0 bytes are used"),  # sized, never written
        (_header(1 << 20) + b"\x00" * 56, "says 1048576 bytes are used, of 64"),
        (_header(64) + (-100).to_bytes(4, "little", signed=True) + b"\x00" * 52, "unreadable"),
        (_file(b"[1, 2, 3"), "unreadable (JSONDecodeError"),
        (_file(b"[1, 2, 3]"), "unreadable (ValueError"),
        (_file(b'["a", "b", 1, "d"]'), "not [metric, sample, labels, help]"),
    ],
    ids=[
        "empty",
        "short-header",
        "unused",
        "cut-short",
        "negative-length",
        "bad-json",
        "bad-key",
        "key-types",
    ],
)
def test_damage_of_names_what_is_wrong(tmp_path, content, reason):
    path = tmp_path / "counter_1.db"
    path.write_bytes(content)
    damage = damage_of(str(path))
    assert damage is not None and reason in damage, damage
    path.write_bytes(_file(b'["m", "m_total", {}, "help"]'))  # the same layout, sound
    assert damage_of(str(path)) is None


def test_a_file_damage_of_accepts_but_the_merge_refuses_is_found_by_merging_alone(tmp_path):
    """A well-formed file the stock merge still fails on (a histogram bucket whose ``le`` is
    no number): found by merging each file alone, left out, the others merged."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    run = _runner(tmp_path)
    dead = int(run(WORKER, "3", "0.2", "v1").split()[0])
    odd = MmapedDict(str(tmp_path / f"histogram_{dead}.db"))
    odd.write_value(mmap_key("levi_x", "levi_x_bucket", ["le"], ["abc"], "help"), 1.0, 0.0)
    odd.close()
    assert damage_of(str(tmp_path / f"histogram_{dead}.db")) is None
    metrics = Metrics()
    families = {
        f.name: f
        for f in TolerantMultiProcessCollector(
            str(tmp_path), metrics.damaged_metric_files
        ).collect()
    }
    assert "levi_requests" in families and "levi_x" not in families
    assert metrics.damaged_metric_files.labels(action="removed")._value.get() == 1
    assert not (tmp_path / f"histogram_{dead}.db").exists()


def test_rating_histograms_follow_the_served_models_rating_range():
    """A 0-10 catalog's ratings land in buckets up to 10, not in +Inf (the buckets used to be
    fixed for a 1-5 scale)."""
    from service.metrics import rating_buckets

    assert rating_buckets(1.0, 5.0) == tuple(1.0 + 0.25 * i for i in range(17))
    m = Metrics()
    assert m.prediction_rating is None  # no model, no scale yet
    m.use_rating_scale(0.0, 10.0)
    m.prediction_rating.observe(7.4)
    m.adapter_rating.labels(layer="1").observe(9.9)
    m.use_rating_scale(1.0, 5.0)  # a later model cannot rebucket: the first range stays
    assert m.rating_range == (0.0, 10.0)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(exposition(m).decode())
        for s in f.samples
    }
    assert samples[("levi_prediction_rating_bucket", (("le", "7.5"),))] == 1
    assert samples[("levi_prediction_rating_bucket", (("le", "6.875"),))] == 0
    assert samples[("levi_adapter_rating_bucket", (("layer", "1"), ("le", "10.0")))] == 1


def test_observe_many_counts_as_observe_does_each_value():
    import numpy as np
    from prometheus_client import CollectorRegistry, Histogram

    from service.metrics import observe_many

    registry = CollectorRegistry()
    one = Histogram("one_by_one", "x", buckets=(1.0, 2.5, 5.0), registry=registry)
    many = Histogram("vectorised", "x", buckets=(1.0, 2.5, 5.0), registry=registry)
    for values in ([0.5, 1.0, 1.0001, 2.5, 4.9, 5.0, 7.0, -3.0], [2.0, 9.0], []):
        for v in values:
            one.observe(v)
        observe_many(many, np.asarray(values, np.float32 if len(values) == 2 else np.float64))

    def by_metric(name):
        metric = next(m for m in registry.collect() if m.name == name)
        return {
            (s.name.removeprefix(name), tuple(sorted(s.labels.items()))): round(s.value, 4)
            for s in metric.samples
            if not s.name.endswith("_created")
        }

    assert by_metric("vectorised") == by_metric("one_by_one")
