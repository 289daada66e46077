"""What one training run carries from chunk to chunk, and its checkpoints: the early-stopping
record (:class:`EarlyStopping`), the run's state (:class:`RunState`), the tree a checkpoint
holds (:func:`checkpoint_tree`) and the orbax manager of one run's checkpoints
(:class:`Checkpoints`). The loop itself is training/train.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jax
import numpy as np

PyTree = Any


@dataclass
class EarlyStopping:
    """Patience on the ID validation RMSE (lower is better), keeping the best parameters.

    In the spirit of t5x's ``EarlyStoppingAction``: one small record, updated once per epoch,
    that says when to stop. Mutable: a run owns one and a checkpoint saves its fields.

    Attributes:
        patience: consecutive epochs without improvement after which :meth:`update` says
            stop (0 or less: stop after the first epoch).
        best_params: the parameters of the best epoch (numpy pytree, on the host); before
            the first improvement, those the run started from.
        best_val: the best validation RMSE so far, rating units (``inf`` before the first).
        best_epoch: that epoch, 0-based (-1 before the first improvement).
        bad_epochs: epochs since the last improvement.
        min_delta: an RMSE improves only when below ``best_val - min_delta``; a tie, or a gain
            within it, counts as an epoch without improvement.
    """

    patience: int
    best_params: PyTree
    best_val: float = np.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    min_delta: float = 1e-5

    def update(self, val_rmse: float, params: PyTree, epoch: int) -> bool:
        """Record the validation RMSE of ``params`` after ``epoch``; True: stop training.

        An improvement copies ``params`` to the host (``jax.device_get``) as the new best and
        resets the count; otherwise the count grows and the best is kept.
        """
        if val_rmse < self.best_val - self.min_delta:
            self.best_val, self.best_epoch, self.bad_epochs = val_rmse, epoch, 0
            self.best_params = jax.device_get(params)
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience


@dataclass
class RunState:
    """What one run carries from chunk to chunk, and what its checkpoints hold.

    Attributes:
        params, opt_state: current parameters and optimizer state (replicated on the mesh).
        stopping: the early-stopping record (best parameters on the host).
        step: optimizer steps taken, all epochs together.
        done: training is over (patience spent or ``max_epochs`` reached).
    """

    params: PyTree
    opt_state: PyTree
    stopping: EarlyStopping
    step: int = 0
    done: bool = False


def checkpoint_tree(state: RunState) -> dict[str, Any]:
    """The tree a checkpoint holds: one builder for saving and for the restore template.

    The layout every checkpoint has had (so old ones resume): ``params``, ``opt_state``,
    ``best_params``, and ``meta`` of 0-d numpy arrays ``step``, ``best_epoch``,
    ``bad_epochs``, ``done`` (int64, ``done`` 0 or 1) and ``best_val`` (float64).
    """
    stopping = state.stopping
    meta = {
        "step": state.step,
        "best_val": stopping.best_val,
        "best_epoch": stopping.best_epoch,
        "bad_epochs": stopping.bad_epochs,
        "done": int(state.done),
    }
    return {
        "params": state.params,
        "opt_state": state.opt_state,
        "best_params": stopping.best_params,
        "meta": {k: np.asarray(v) for k, v in meta.items()},
    }


def _state_of_tree(tree: dict[str, Any], template: RunState) -> RunState:
    """Inverse of :func:`checkpoint_tree`; what a checkpoint does not hold (the patience and
    ``min_delta`` of the early stopping) comes from ``template``."""
    meta = {k: v.item() for k, v in tree["meta"].items()}
    stopping = replace(
        template.stopping,
        best_params=jax.device_get(tree["best_params"]),
        best_val=meta["best_val"],
        best_epoch=meta["best_epoch"],
        bad_epochs=meta["bad_epochs"],
    )
    return RunState(
        tree["params"], tree["opt_state"], stopping, step=int(meta["step"]), done=bool(meta["done"])
    )


class Checkpoints:
    """One run's checkpoints: an orbax ``CheckpointManager`` keeping the latest step only.

    Each checkpoint is a step directory (``<directory>/<step>``) holding
    :func:`checkpoint_tree`. ``directory=None`` turns checkpoints off: none is found and
    :meth:`save` does nothing.
    """

    def __init__(self, directory: Path | None):
        self.manager = None
        if directory is not None:
            import orbax.checkpoint as ocp

            self._ocp = ocp
            self.manager = ocp.CheckpointManager(
                Path(directory).absolute(),
                options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
            )

    def latest(self) -> int | None:
        """The step of the newest checkpoint; None when there is none."""
        return None if self.manager is None else self.manager.latest_step()

    def save(self, state: RunState) -> None:
        """Checkpoint ``state`` under its step (may finish in the background: :meth:`close`)."""
        if self.manager is not None:
            self.manager.save(state.step, args=self._ocp.args.StandardSave(checkpoint_tree(state)))

    def restore(self, template: RunState, step: int | None = None) -> RunState:
        """The state saved at ``step`` (default: the latest), its arrays shaped, typed and
        placed like ``template``'s (whose early-stopping settings it keeps).

        Raises:
            FileNotFoundError: no checkpoint to restore (none saved, or no directory).
        """
        step = self.latest() if step is None else step
        if self.manager is None or step is None:
            raise FileNotFoundError("no checkpoint to restore")
        args = self._ocp.args.StandardRestore(checkpoint_tree(template))
        return _state_of_tree(self.manager.restore(step, args=args), template)

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()
