"""What each process feeds the training mesh: its shards' rows of every global batch.

The ratings are cut into ``count`` data shards (``training.data.shards``); process ``p`` of
``P`` owns the contiguous block of shards ``[p * count / P, (p + 1) * count / P)``, and the mesh
lists each process's devices together (``jax.devices()`` order), so the batch positions of
a process's devices are exactly its shards' positions. A global batch of ``b`` pairs holds
``b / count`` pairs of each shard, in shard order; each shard is shuffled by its own
``default_rng([seed, epoch, shard])`` (one shard: ``[seed, epoch]``, the single-process order
of old), and an epoch has as many steps as the smallest shard fills. Batches and every table
are therefore a function of the data and ``count`` only: one process with two devices and
``count`` 2 computes what two processes compute.

Batches become global ``jax.Array`` s through ``jax.make_array_from_process_local_data`` (each
process gives its own columns); replicated tables and parameters, the same on every process,
go through ``jax.device_put`` to the whole mesh as with one process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from training import distributed

PyTree = Any


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value to compare by
class ShardLayout:
    """The data shards of the pairs and which of them this process feeds.

    Attributes:
        pair_shard: int16 ``[n_pairs]`` shard of every pair.
        count: shards in the run.
        mine: this process's shards (a contiguous block).
    """

    pair_shard: np.ndarray
    count: int = 1
    mine: tuple[int, ...] = (0,)

    @classmethod
    def single(cls, n_pairs: int) -> ShardLayout:
        """One shard, one process: every pair is this process's."""
        return cls(np.zeros(n_pairs, np.int16))

    @classmethod
    def of_process(cls, pair_shard: np.ndarray, count: int) -> ShardLayout:
        """This process's block of ``count`` shards (see the module docstring).

        Raises:
            ValueError: ``count`` is no multiple of the processes.
        """
        procs, me = distributed.process_count(), distributed.process_index()
        if count % procs:
            raise ValueError(f"data_shards {count} must be a multiple of the {procs} processes")
        per = count // procs
        return cls(np.asarray(pair_shard, np.int16), count, tuple(range(me * per, (me + 1) * per)))

    @property
    def alone(self) -> bool:
        """This process feeds every shard (a single process)."""
        return len(self.mine) == self.count

    def owned(self, rows: np.ndarray) -> np.ndarray:
        """bool ``[len(rows)]``: which of pair ``rows`` this process feeds."""
        if self.alone:
            return np.ones(len(rows), bool)
        shard = self.pair_shard[rows]
        return (shard >= self.mine[0]) & (shard <= self.mine[-1])


def steps_per_epoch(train_rows: np.ndarray, batch_size: int, layout: ShardLayout) -> int:
    """Full global batches in an epoch: as many as the smallest shard fills.

    Raises:
        ValueError: the batch does not split over the shards, or a shard fills no batch.
    """
    if batch_size % layout.count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {layout.count} data shards"
        )
    per_shard = batch_size // layout.count
    sizes = np.bincount(layout.pair_shard[train_rows], minlength=layout.count)
    steps = int(sizes.min()) // per_shard
    if steps == 0:
        raise ValueError(
            f"{len(train_rows)} training pairs in {layout.count} shard(s) (smallest "
            f"{int(sizes.min())}) are fewer than one batch of {batch_size}"
        )
    return steps


def epoch_order(
    seed: int,
    epoch: int,
    train_rows: np.ndarray,
    batch_size: int,
    item_oov_prob: float,
    layout: ShardLayout | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """This process's columns of one epoch's batches and item-OOV masks, ``[steps, b_local]``.

    A function of (seed, epoch, the data, the shard count), so a resumed run sees the batches
    it would have seen and every process agrees on the steps.
    """
    layout = layout or ShardLayout.single(int(train_rows.max(initial=-1)) + 1)
    if layout.count == 1:  # one shard: the order runs have always had
        rng = np.random.default_rng([seed, epoch])
        steps = len(train_rows) // batch_size
        rows = rng.permutation(train_rows)[: steps * batch_size].reshape(steps, batch_size)
        drop = rng.random((steps, batch_size)) < item_oov_prob
        return rows.astype(np.int32), drop
    steps = steps_per_epoch(train_rows, batch_size, layout)
    per_shard = batch_size // layout.count
    shard_of = layout.pair_shard[train_rows]
    rows, drop = [], []
    for s in layout.mine:
        rng = np.random.default_rng([seed, epoch, s])
        mine = rng.permutation(train_rows[shard_of == s])[: steps * per_shard]
        rows.append(mine.reshape(steps, per_shard))
        drop.append(rng.random((steps, per_shard)) < item_oov_prob)
    return np.concatenate(rows, axis=1).astype(np.int32), np.concatenate(drop, axis=1)


def global_batch(local: np.ndarray, mesh: Mesh, spec: P) -> jax.Array:
    """A global array from this process's columns of a batch (sharded over ``data``)."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local)


def predict_rows(
    predict: Callable[[PyTree, PyTree, jax.Array], jax.Array],
    params: PyTree,
    data: PyTree,
    rows: np.ndarray,
    *,
    mesh: Mesh,
    layout: ShardLayout,
    batch_size: int,
    width: int,
) -> np.ndarray:
    """``predict`` of every pair ``rows`` ``[len(rows), width]``, on every process.

    Each process scores the rows of its shards, in batches of ``batch_size`` (rounded to a
    multiple of the mesh) sharded over the mesh, and the processes exchange their results.
    """
    batch_size = -(-batch_size // mesh.size) * mesh.size  # one compile per head config
    rows = np.asarray(rows)
    owned = layout.owned(rows)
    mine = rows[owned]
    procs = distributed.process_count()
    local_batch = batch_size // procs
    n_batches = -(-len(mine) // local_batch)
    if procs > 1:  # every process calls the collective as often as the busiest one
        n_batches = int(distributed.allgather_rows(np.array([n_batches], np.int64)).max())
    spec, out = P("data"), []
    for k in range(n_batches):
        chunk = mine[k * local_batch : (k + 1) * local_batch]
        padded = np.zeros(local_batch, np.int32)
        padded[: len(chunk)] = chunk
        result = predict(params, data, global_batch(padded, mesh, spec))
        local = np.concatenate([np.asarray(s.data) for s in _local_shards(result)])
        out.append(local[: len(chunk)])
    values = np.concatenate(out) if out else np.zeros((0, width), np.float32)
    if procs == 1:
        return values
    positions = np.flatnonzero(owned)  # where this process's rows sit in `rows`
    every = distributed.allgather_rows(positions.astype(np.int64))
    result = np.empty((len(rows), width), values.dtype)
    result[every] = distributed.allgather_rows(values)
    return result


def _local_shards(array: jax.Array) -> list:
    """This process's shards of a batch-sharded array, in batch order."""
    shards = [s for s in array.addressable_shards]
    return sorted(shards, key=lambda s: s.index[0].start or 0)
