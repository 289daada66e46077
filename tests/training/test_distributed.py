"""Training as several processes (jax.distributed, CPU collectives over gloo): the same
parameters and report as one process with as many devices; a dead process stops the others."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from training.data.shards import ShardSpec, parquet_row_groups, user_shards
from training.distributed import EXIT_PEER_LOST, DistributedConfig
from training.feed import ShardLayout, epoch_order, steps_per_epoch

RUN = Path(__file__).with_name("multiprocess_run.py")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int = 1, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(extra, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _start(out: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RUN), str(out), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"no exit within {timeout} s:\n{out[-3000:]}")
    return out


def test_two_processes_train_what_one_process_with_two_devices_trains(tmp_path):
    one = _start(tmp_path / "one", env=_env(devices=2))
    assert _finish(one, 600) is not None and one.returncode == 0
    coordinator = f"127.0.0.1:{_port()}"
    procs = [_start(tmp_path / "two", coordinator, "2", str(i), env=_env()) for i in range(2)]
    logs = [_finish(p, 600) for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]

    want = np.load(tmp_path / "one" / "process-0.npz")
    for i in range(2):
        got = np.load(tmp_path / "two" / f"process-{i}.npz")
        assert sorted(got.files) == sorted(want.files)
        for name in want.files:  # every parameter of every run, the steps taken
            np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0, err_msg=name)
    ref = json.loads((tmp_path / "one" / "process-0.json").read_text())
    assert ref["devices"] == 2
    for i in range(2):
        doc = json.loads((tmp_path / "two" / f"process-{i}.json").read_text())
        assert doc["devices"] == 2
        for section in ("methods", "online"):
            _assert_close(doc[section], ref[section], f"process {i}: {section}")
    # Process 0 alone writes the report and the artifact, scored like the single process's.
    first = json.loads((tmp_path / "two" / "process-0.json").read_text())
    _assert_close(first["exported"], ref["exported"], "exported")
    assert Path(first["report_dir"]).is_dir()
    second = json.loads((tmp_path / "two" / "process-1.json").read_text())
    assert second["report_dir"] == "None" or second["report_dir"] is None
    assert len(list((tmp_path / "two" / "run" / "reports").iterdir())) == 1

    # Run again: both processes find the checkpoints the first run saved and resume there.
    first_params = {name: np.load(tmp_path / "two" / "process-0.npz")[name] for name in want.files}
    procs = [_start(tmp_path / "two", coordinator, "2", str(i), env=_env()) for i in range(2)]
    for p in procs:
        log = _finish(p, 600)
        assert p.returncode == 0, log[-3000:]
    for i in range(2):
        again = np.load(tmp_path / "two" / f"process-{i}.npz")
        for name, value in first_params.items():
            if name.endswith("resumed_from"):
                steps = first_params[name.replace("resumed_from", "steps")]
                assert again[name] == steps > 0, name  # resumed at the saved step
            else:
                np.testing.assert_array_equal(again[name], value, err_msg=name)


def _assert_close(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_close(a, b, f"{where}[{k}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5, nan_ok=True), where
    else:
        assert got == want, where


def test_a_process_that_dies_stops_the_others_with_a_message(tmp_path):
    coordinator = f"127.0.0.1:{_port()}"
    env = _env(LEVI_TEST_SLEEP_AFTER_DATA="30")  # time to kill one mid-run
    procs = [_start(tmp_path, coordinator, "2", str(i), env=env) for i in range(2)]
    deadline = time.monotonic() + 300
    seen = ""
    while "[data]" not in seen and time.monotonic() < deadline:  # process 0's log
        line = procs[0].stdout.readline()
        if not line:
            break
        seen += line
    assert "[data]" in seen, seen[-3000:]
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait(timeout=30)
    start = time.monotonic()
    log = seen + _finish(procs[0], timeout=120)
    assert time.monotonic() - start < 120
    assert procs[0].returncode == EXIT_PEER_LOST, log[-3000:]
    assert "error: process 0 of 2:" in log and "stopping this process too" in log, log[-3000:]


def test_a_process_that_reports_an_error_exits_at_once_and_the_others_stop(tmp_path):
    """Exit 2 (a bad spec, bad data) must not wait in the runtime's shutdown barrier for peers
    that are still training: the erroring process leaves at once, the others stop."""
    coordinator = f"127.0.0.1:{_port()}"
    env = _env(LEVI_TEST_FAIL_PROCESS="1", LEVI_TEST_SLEEP_AFTER_DATA="60")
    procs = [_start(tmp_path, coordinator, "2", str(i), env=env) for i in range(2)]
    log1 = _finish(procs[1], timeout=60)  # with the shutdown barrier: until process 0 is done
    assert procs[1].returncode == 2, log1[-3000:]
    assert "error: process 1 of 2 stopped with exit 2" in log1, log1[-3000:]
    log0 = _finish(procs[0], timeout=60)  # process 0 sleeps 60 s after its data stage
    assert procs[0].returncode == EXIT_PEER_LOST, log0[-3000:]
    assert "process 1 has not been heard from" in log0 or "collective failed" in log0, log0[-3000:]


def test_settings_come_from_flags_then_the_environment():
    env = {"LEVI_COORDINATOR": "head:1234", "LEVI_NUM_PROCESSES": "4", "JOB_COMPLETION_INDEX": "3"}
    cfg = DistributedConfig.resolve(environ=env)
    assert (cfg.coordinator, cfg.num_processes, cfg.process_id) == ("head:1234", 4, 3)
    cfg = DistributedConfig.resolve("other:1", 2, 1, environ=env)
    assert (cfg.coordinator, cfg.num_processes, cfg.process_id) == ("other:1", 2, 1)
    assert not DistributedConfig.resolve(environ={}).enabled  # one process: today's run
    assert DistributedConfig.resolve(environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}).autodetect
    assert not DistributedConfig.resolve(environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).enabled
    with pytest.raises(ValueError, match="need a coordinator"):
        DistributedConfig.resolve(num_processes=2, process_id=0, environ={})
    with pytest.raises(ValueError, match="0 <= --process-id < --num-processes"):
        DistributedConfig.resolve("h:1", 2, 2, environ={})


def test_each_process_reads_its_row_groups_or_its_users(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"user_id": np.arange(1000) % 37, "rating": np.ones(1000)})
    frame.to_parquet(tmp_path / "r.parquet", row_group_size=100)  # 10 row groups
    first = parquet_row_groups(tmp_path / "r.parquet", ShardSpec.of_process(4, 0, 2))
    second = parquet_row_groups(tmp_path / "r.parquet", ShardSpec.of_process(4, 1, 2))
    assert first.groups == [0, 1, 4, 5, 8, 9] and second.groups == [2, 3, 6, 7]
    np.testing.assert_array_equal(
        np.sort(np.r_[first.file_rows, second.file_rows]), np.arange(1000)
    )
    np.testing.assert_array_equal(first.shard[:200], np.repeat([0, 1], 100))
    assert parquet_row_groups(tmp_path / "r.parquet", ShardSpec(16, (0,))) is None  # too few
    shards = user_shards([str(u) for u in range(100)], 4)
    assert set(shards) == {0, 1, 2, 3}
    np.testing.assert_array_equal(shards, user_shards([str(u) for u in range(100)], 4))


def test_batches_take_each_shard_s_share_and_one_shard_keeps_the_old_order():
    rows = np.arange(100, dtype=np.int32)
    old = np.random.default_rng([3, 1])
    want = old.permutation(rows)[:96].reshape(3, 32)
    got, _ = epoch_order(3, 1, rows, 32, 0.1)
    np.testing.assert_array_equal(got, want)  # one shard: the order runs have always had
    pair_shard = (np.arange(100) % 2).astype(np.int16)
    layout = ShardLayout(pair_shard, count=2, mine=(0, 1))
    both, _ = epoch_order(3, 1, rows, 32, 0.1, layout)
    assert both.shape == (steps_per_epoch(rows, 32, layout), 32)
    assert (pair_shard[both[:, :16]] == 0).all() and (pair_shard[both[:, 16:]] == 1).all()
    second, _ = epoch_order(3, 1, rows, 32, 0.1, ShardLayout(pair_shard, count=2, mine=(1,)))
    np.testing.assert_array_equal(second, both[:, 16:])  # a process's columns of the batch


ONE_ALL_REDUCE = r"""
import json, re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from training.train import make_mesh, one_all_reduce

mesh = make_mesh()
rng = np.random.default_rng(0)
params = {f"w{k}": jnp.asarray(rng.normal(size=(3, k + 1)), jnp.float32) for k in range(12)}
x = jax.device_put(rng.normal(size=(8, 3)).astype(np.float32), NamedSharding(mesh, P("data")))
y = jax.device_put(rng.normal(size=(8,)).astype(np.float32), NamedSharding(mesh, P("data")))

def loss(params, batch, key):
    x, y = batch
    pred = sum(jnp.sum(x @ w, axis=1) for w in params.values())
    return jnp.mean((pred - y) ** 2)

key = jax.random.key(0)
plain = jax.jit(jax.value_and_grad(loss))
ours = jax.jit(one_all_reduce(jax.value_and_grad(loss), mesh))
(l0, g0), (l1, g1) = plain(params, (x, y), key), ours(params, (x, y), key)
diff = max(float(jnp.max(jnp.abs(g0[k] - g1[k]))) for k in params)

def operands(fn):
    hlo = fn.lower(params, (x, y), key).compile().as_text()
    return [len(re.findall(r"%[\w.\-]+", line.split("all-reduce(", 1)[1].split(")", 1)[0]))
            for line in hlo.splitlines() if " all-reduce(" in line]

print(json.dumps({"devices": mesh.size, "loss": abs(float(l0 - l1)), "grads": diff,
                  "plain": operands(plain), "ours": operands(ours)}))
"""


def test_a_step_all_reduces_its_gradients_once_as_one_vector():
    """Data parallel over two devices: the loss and gradients of the whole batch, from one
    all-reduce of one operand (the CPU collectives pay per operand; left to XLA, every
    gradient leaf is one)."""
    proc = subprocess.run(
        [sys.executable, "-c", ONE_ALL_REDUCE],
        env=_env(devices=2),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["devices"] == 2
    assert got["loss"] < 1e-5 and got["grads"] < 1e-4
    assert sum(got["plain"]) > 1  # what the partitioner does alone
    assert got["ours"] == [1]
