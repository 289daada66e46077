"""Stage 3 of a run: every trained method over the seeds and learning rates, and the
trained runs' predictions on pair rows (on the devices of the mesh)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from model.head_config import HeadConfig
from training.config import TRAINED_METHODS, TrainConfig
from training.feed import ShardLayout
from training.prepare import Prepared
from training.train import (
    RunResult,
    device_tables,
    head_config,
    make_mesh,
    predict_adapters,
    predict_ratings,
    train_method,
)


@dataclass(frozen=True)
class DeviceData:
    """The head's tables on the devices (``training.train.device_tables``), their mesh, and
    the pairs' data shards with this process's (``training.feed.ShardLayout``)."""

    tables: dict[str, Any]
    mesh: Any  # jax.sharding.Mesh
    layout: ShardLayout | None = None


def _head_for(method: str, cfg: TrainConfig, prep: Prepared, n_layers: int) -> HeadConfig:
    mu = float(prep.tables.rating[prep.rows["train"]].mean())
    id_features = (prep.features.id_column("user"), prep.features.id_column("item"))
    return head_config(
        method,
        cfg,
        vocab_sizes=prep.features.vocab_sizes,
        n_multi_hot=prep.features.n_multi_hot,
        n_layers=n_layers,
        rating_mean=mu,
        rating_range=prep.spec.rating_scale.bounds,
        id_features=id_features,
    )


def methods_to_train(cfg: TrainConfig) -> list[str]:
    wanted = set(cfg.methods)
    if "mlp_lp_ensemble" in wanted:
        wanted |= {"mlp", "linear_probe"}
    return [m for m in TRAINED_METHODS if m in wanted]


def train_all(
    prep: Prepared,
    cfg: TrainConfig,
    n_layers: int,
    *,
    checkpoint_root: Path | None,
    progress: bool,
    log: Callable[[str], None],
    mesh=None,
) -> tuple[dict[str, float], dict[str, list[RunResult]], Any]:
    """Every trained method over the seeds. Returns ``(chosen lrs, runs, device data)``."""
    mesh = mesh or make_mesh()
    layout = prep.layout
    n_train = len(prep.rows["train"])
    smallest = int(np.bincount(layout.pair_shard[prep.rows["train"]], minlength=layout.count).min())
    if smallest * layout.count < cfg.batch_size:  # a small catalog: one batch holds it all
        unit = int(np.lcm(mesh.size, layout.count))
        smaller = max(unit, smallest * layout.count // unit * unit)
        log(f"{n_train} training pairs: batch size {cfg.batch_size} -> {smaller}")
        cfg = dataclasses.replace(cfg, batch_size=smaller)
    data = device_tables(prep.tables, mesh)
    signature = prep.tables.signature()
    if layout.count > 1:  # the batches depend on the shards too
        shards = hashlib.sha256(layout.pair_shard.tobytes()).hexdigest()[:8]
        signature += f"-shards{layout.count}-{shards}"
    lrs, runs = {}, {}
    for method in methods_to_train(cfg):
        log(f"training {method} ({len(cfg.lrs)} learning rates, seeds {list(cfg.seeds)})")
        lrs[method], runs[method] = train_method(
            method,
            _head_for(method, cfg, prep, n_layers),
            cfg,
            data,
            prep.rows["train"],
            prep.rows["val"],
            mesh=mesh,
            data_signature=signature,
            checkpoint_root=checkpoint_root,
            progress=progress,
            log=log,
            layout=layout,
        )
    return lrs, runs, DeviceData(data, mesh, layout)


def run_adapters(
    run: RunResult, device: DeviceData, cfg: TrainConfig, rows: np.ndarray
) -> np.ndarray:
    """Adapter ratings ``[len(rows), A]`` of one trained run on pair ``rows``."""
    return predict_adapters(
        run.head,
        run.params,
        device.tables,
        rows,
        mesh=device.mesh,
        batch_size=cfg.eval_batch_size,
        layout=device.layout,
    )


def run_ratings(
    run: RunResult, device: DeviceData, cfg: TrainConfig, rows: np.ndarray
) -> np.ndarray:
    """Ratings ``[len(rows)]`` of one trained run on pair ``rows``."""
    return predict_ratings(run.head, run_adapters(run, device, cfg, rows))


def items_hidden(prep: Prepared, device: DeviceData) -> dict[str, Any] | None:
    """The device tables with every item's id OOV (0), as a cold-start item is served (its
    other fields kept; the trainer's item-OOV dropout hides the same column); None when the
    item id is no model input. The other tables are shared, not copied."""
    item_columns = [c.name for c in prep.features.categorical if c.entity == "item"]
    if "item_id" not in item_columns:
        return None
    hidden = prep.tables.item_ids.copy()
    hidden[:, item_columns.index("item_id")] = 0
    sharding = device.tables["item_ids"].sharding
    return {**device.tables, "item_ids": jax.device_put(hidden, sharding)}
