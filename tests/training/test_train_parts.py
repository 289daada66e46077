"""The trainer's parts: the early-stopping record and the checkpoint helper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from training.run_state import Checkpoints, EarlyStopping, RunState, checkpoint_tree


def _params(v: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), v, np.float32), "b": np.full(3, -v, np.float32)}


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    stop = EarlyStopping(patience=2, best_params=_params(0))
    assert stop.update(1.0, _params(1), epoch=0) is False
    assert stop.update(0.9, _params(2), epoch=1) is False
    assert stop.update(0.95, _params(3), epoch=2) is False  # one bad epoch: go on
    assert stop.bad_epochs == 1
    assert stop.update(0.8, _params(4), epoch=3) is False  # an improvement resets the count
    assert stop.bad_epochs == 0
    assert stop.update(0.85, _params(5), epoch=4) is False
    assert stop.update(0.81, _params(6), epoch=5) is True  # two in a row: stop
    assert (stop.best_val, stop.best_epoch, stop.bad_epochs) == (0.8, 3, 2)


def test_early_stopping_keeps_the_best_params_on_the_host():
    initial = _params(0)
    stop = EarlyStopping(patience=3, best_params=initial)
    assert stop.best_params is initial and stop.best_val == np.inf and stop.best_epoch == -1
    device_params = jax.tree_util.tree_map(jnp.asarray, _params(7))
    stop.update(0.5, device_params, epoch=0)
    stop.update(0.7, _params(8), epoch=1)  # worse: the best stays
    assert stop.best_epoch == 0 and stop.best_val == 0.5
    for leaf in jax.tree_util.tree_leaves(stop.best_params):
        assert isinstance(leaf, np.ndarray)  # a host copy, not the device arrays
    np.testing.assert_array_equal(stop.best_params["w"], _params(7)["w"])
    np.testing.assert_array_equal(stop.best_params["b"], _params(7)["b"])


def test_early_stopping_counts_a_tie_as_no_improvement():
    stop = EarlyStopping(patience=2, best_params=_params(0))
    stop.update(0.5, _params(1), epoch=0)
    assert stop.update(0.5, _params(2), epoch=1) is False  # exactly equal: a bad epoch
    assert stop.bad_epochs == 1 and stop.best_epoch == 0
    np.testing.assert_array_equal(stop.best_params["w"], _params(1)["w"])
    # within min_delta (1e-5) of the best is a tie too
    assert stop.update(0.5 - 0.5e-5, _params(3), epoch=2) is True
    assert stop.best_epoch == 0 and stop.best_val == 0.5
    # a gain of exactly min_delta too; with no min_delta, only an exact tie
    assert stop.update(stop.best_val - stop.min_delta, _params(4), epoch=3) is True
    assert stop.best_epoch == 0 and stop.bad_epochs == 3
    exact = EarlyStopping(patience=5, best_params=_params(0), min_delta=0.0)
    exact.update(0.5, _params(1), epoch=0)
    exact.update(0.5, _params(2), epoch=1)
    assert exact.best_epoch == 0 and exact.bad_epochs == 1
    exact.update(np.nextafter(0.5, 0), _params(3), epoch=2)
    assert exact.best_epoch == 2 and exact.bad_epochs == 0
    # beyond it is an improvement
    stop = EarlyStopping(patience=1, best_params=_params(0))
    stop.update(0.5, _params(1), epoch=0)
    assert stop.update(0.5 - 2e-5, _params(2), epoch=1) is False and stop.best_epoch == 1


def test_patience_zero_stops_after_the_first_epoch():
    stop = EarlyStopping(patience=0, best_params=_params(0))
    assert stop.update(0.5, _params(1), epoch=0) is True and stop.best_epoch == 0


def _state(v: float, *, step: int, done: bool, best_epoch: int) -> RunState:
    params = jax.tree_util.tree_map(jnp.asarray, _params(v))
    opt_state = optax.adamw(1e-3).init(params)
    stopping = EarlyStopping(
        patience=2,
        best_params=_params(v + 0.5),
        best_val=v / 10,
        best_epoch=best_epoch,
        bad_epochs=best_epoch + 1,
    )
    return RunState(params, opt_state, stopping, step=step, done=done)


def _assert_same_state(got: RunState, want: RunState) -> None:
    assert (got.step, got.done) == (want.step, want.done)
    for field in ("patience", "best_val", "best_epoch", "bad_epochs"):
        assert getattr(got.stopping, field) == getattr(want.stopping, field), field
    for tree in ("params", "opt_state"):
        jax.tree_util.tree_map(
            np.testing.assert_array_equal, getattr(got, tree), getattr(want, tree)
        )
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, got.stopping.best_params, want.stopping.best_params
    )


def test_checkpoint_round_trip(tmp_path):
    saved = _state(3.0, step=17, done=True, best_epoch=4)
    ckpt = Checkpoints(tmp_path / "run")
    assert ckpt.latest() is None
    ckpt.save(saved)
    ckpt.close()
    assert (tmp_path / "run" / "17").is_dir()  # one directory per step

    again = Checkpoints(tmp_path / "run")
    assert again.latest() == 17
    # the template gives structure and types only: another state comes back as saved
    template = _state(0.0, step=0, done=False, best_epoch=-1)
    template.stopping.min_delta = 0.25  # not in a checkpoint: the template's is kept
    restored = again.restore(template)
    again.close()
    _assert_same_state(restored, saved)
    assert restored.stopping.min_delta == 0.25
    assert isinstance(restored.step, int) and isinstance(restored.done, bool)


def test_checkpoints_keep_the_latest_step_only(tmp_path):
    ckpt = Checkpoints(tmp_path)
    ckpt.save(_state(1.0, step=5, done=False, best_epoch=0))
    ckpt.save(_state(2.0, step=9, done=False, best_epoch=1))
    ckpt.close()
    again = Checkpoints(tmp_path)
    assert again.latest() == 9
    restored = again.restore(_state(0.0, step=0, done=False, best_epoch=-1))
    again.close()
    _assert_same_state(restored, _state(2.0, step=9, done=False, best_epoch=1))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["9"]


def test_a_checkpoint_written_in_the_old_layout_resumes(tmp_path):
    """The tree as the trainer wrote it before the helper existed, saved by orbax directly."""
    import orbax.checkpoint as ocp

    old = _state(4.0, step=12, done=False, best_epoch=2)
    legacy = {
        "params": old.params,
        "opt_state": old.opt_state,
        "best_params": old.stopping.best_params,
        "meta": {
            "step": np.asarray(12),
            "best_val": np.asarray(0.4),
            "best_epoch": np.asarray(2),
            "bad_epochs": np.asarray(3),
            "done": np.asarray(0),
        },
    }
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    manager = ocp.CheckpointManager(tmp_path.absolute(), options=options)
    manager.save(12, args=ocp.args.StandardSave(legacy))
    manager.wait_until_finished()
    manager.close()

    ckpt = Checkpoints(tmp_path)
    restored = ckpt.restore(_state(0.0, step=0, done=True, best_epoch=-1))
    ckpt.close()
    _assert_same_state(restored, old)


def test_checkpoint_tree_layout_is_the_one_old_checkpoints_have():
    """Saved runs resume only while this layout holds (names, and meta's dtypes)."""
    tree = checkpoint_tree(_state(1.0, step=3, done=True, best_epoch=0))
    assert list(tree) == ["params", "opt_state", "best_params", "meta"]
    meta = tree["meta"]
    assert list(meta) == ["step", "best_val", "best_epoch", "bad_epochs", "done"]
    assert {k: (v.shape, v.dtype) for k, v in meta.items()} == {
        "step": ((), np.int64),
        "best_val": ((), np.float64),
        "best_epoch": ((), np.int64),
        "bad_epochs": ((), np.int64),
        "done": ((), np.int64),
    }
    assert (meta["step"], meta["done"], meta["best_epoch"]) == (3, 1, 0)
    fresh = checkpoint_tree(RunState({}, {}, EarlyStopping(1, {})))
    assert fresh["meta"]["best_val"] == np.inf and fresh["meta"]["best_val"].dtype == np.float64


def test_no_checkpoint_directory_finds_and_saves_nothing(tmp_path):
    ckpt = Checkpoints(None)
    ckpt.save(_state(1.0, step=2, done=False, best_epoch=0))  # a no-op
    assert ckpt.latest() is None
    with pytest.raises(FileNotFoundError):
        ckpt.restore(_state(1.0, step=0, done=False, best_epoch=-1))
    ckpt.close()
    empty = Checkpoints(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        empty.restore(_state(1.0, step=0, done=False, best_epoch=-1))
    empty.close()
