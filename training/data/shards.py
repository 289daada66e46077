"""Which ratings a process reads: the run's data shards.

A run's ratings are cut into ``count`` shards, by default one per training process. A
Parquet ratings file with at least ``count`` row groups is cut by row group (group ``g`` is
in shard ``g % count``: a process reads only its groups' bytes); any other file, or a Parquet
file with fewer groups, by a hash of the user id (CRC-32 of its UTF-8 text, so every process
and every Python computes the same; a user's ratings stay together). Every rating keeps its
shard (the column ``shard``) and its row in the file (``file_row``): the shard decides which
process feeds it to the training mesh, the file row orders ties exactly as one process that
read the whole file would (``training.gather``).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SHARD_COLUMN = "shard"
ROW_COLUMN = "file_row"
SHARD_COLUMNS = (SHARD_COLUMN, ROW_COLUMN)


@dataclass(frozen=True)
class ShardSpec:
    """The shards one process reads.

    Attributes:
        count: shards of the run (``TrainConfig.data_shards``, by default the processes).
        mine: the shards this process reads (:meth:`of_process`).
    """

    count: int = 1
    mine: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.count < 1 or not self.mine or not all(0 <= s < self.count for s in self.mine):
            raise ValueError(f"shards {self.mine} of {self.count}: expected 0 <= shard < count")

    @classmethod
    def of_process(cls, count: int, process: int, processes: int) -> ShardSpec:
        """The shards of ``process`` of ``processes``: the contiguous block
        ``[process * count / processes, (process + 1) * count / processes)``, whose pairs sit
        at that process's devices' positions of a batch (``training.feed``).

        Raises:
            ValueError: ``count`` is no multiple of ``processes``.
        """
        if count % processes:
            raise ValueError(
                f"data_shards {count} must be a multiple of the {processes} training processes"
            )
        per = count // processes
        return cls(count, tuple(range(process * per, (process + 1) * per)))

    @property
    def everything(self) -> bool:
        return len(self.mine) == self.count


def user_shards(user_ids: pd.Series | Sequence[str], count: int) -> np.ndarray:
    """int16 ``[n]``: the shard of each user id (CRC-32 of its text, modulo ``count``)."""
    if count == 1:
        return np.zeros(len(user_ids), np.int16)
    return np.fromiter(
        (zlib.crc32(str(u).encode("utf-8")) % count for u in user_ids), np.int16, len(user_ids)
    )


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value to compare by
class RowGroups:
    """The row groups of a Parquet file that a process reads.

    Attributes:
        groups: the row groups, in file order.
        file_rows: int64 ``[n]`` each read row's position in the file.
        shard: int16 ``[n]`` each read row's shard (its group modulo the shard count).
    """

    groups: list[int]
    file_rows: np.ndarray
    shard: np.ndarray


def parquet_row_groups(path: Path, shards: ShardSpec) -> RowGroups | None:
    """The row groups of ``shards`` when ``path`` is cut by row group; None when it is read
    whole and cut by user (not Parquet, or fewer row groups than shards)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception:  # not Parquet (the reader says what is wrong, if anything)
        return None
    if meta.num_row_groups < shards.count:
        return None
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    starts = np.cumsum([0, *sizes])
    groups = [g for g in range(meta.num_row_groups) if g % shards.count in shards.mine]
    rows = [np.arange(starts[g], starts[g + 1], dtype=np.int64) for g in groups]
    shard = [np.full(sizes[g], g % shards.count, np.int16) for g in groups]
    return RowGroups(
        groups,
        np.concatenate(rows) if rows else np.zeros(0, np.int64),
        np.concatenate(shard) if shard else np.zeros(0, np.int16),
    )


def keep_shards(ds, shards: ShardSpec):
    """``ds`` (a ``RatingsDataset``) with only the ratings of ``shards``; ratings without a
    shard yet (not cut by row group) get their user's, and a file row if they lack one."""
    if shards.count == 1:
        return ds
    ratings = ds.ratings
    if ROW_COLUMN not in ratings:
        ratings = ratings.assign(**{ROW_COLUMN: np.arange(len(ratings), dtype=np.int64)})
    if SHARD_COLUMN not in ratings:
        ratings = ratings.assign(**{SHARD_COLUMN: user_shards(ratings["user_id"], shards.count)})
    if not shards.everything:
        keep = np.isin(ratings[SHARD_COLUMN].to_numpy(), shards.mine)
        ratings = ratings[keep].reset_index(drop=True)
    return type(ds)(ds.name, ratings, ds.users, ds.items)
