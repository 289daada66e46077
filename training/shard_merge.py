"""Every process's shard of the ratings as one data set, the same on every process.

Each process reads its own shards (``training.data.shards``); the split and the vocabularies
need every rating, so the processes exchange their shards in compact form (entity rows,
rating, timestamp, shard, file row: 30 bytes a rating, no strings) and each builds the same
table, in the order one process reading the whole file gives (the reader's order: user id,
item id, timestamp, each id zero-padded to the longest rated one, then the file's order). The
entity tables are read whole by every process; a rated id without a row, which the reader
adds per shard, is added for every shard's ids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training import distributed
from training.data.dataset import RatingsDataset
from training.data.shards import ROW_COLUMN, SHARD_COLUMN
from training.data.tables import add_entities
from training.spec import DatasetSpec


def _zfill_rank(ids: pd.Series, width: int) -> np.ndarray:
    """int64 ``[n]``: the rank of each id in the reader's order (zero-padded to ``width``)."""
    order = ids.astype(str).str.zfill(width).to_numpy(dtype=object).argsort(kind="stable")
    rank = np.empty(len(ids), np.int64)
    rank[order] = np.arange(len(ids))
    return rank


def _widest(values: pd.Series) -> int:
    """The longest id of every process's ``values`` (characters)."""
    local = int(values.str.len().max()) if len(values) else 0
    return int(distributed.allgather_rows(np.array([local], np.int64)).max())


def merge_shards(ds: RatingsDataset, spec: DatasetSpec) -> RatingsDataset:
    """The whole data set from this process's shard ``ds`` (every process calls it).

    Args:
        ds: this process's ratings (with ``shard`` and ``file_row``) and the entity tables.

    Returns:
        Every process's ratings (with their ``shard`` and ``file_row``) and entity tables
        holding every rated id, identical on every process.
    """
    users = add_entities(
        ds.users, spec, "users", distributed.allgather_strings(ds.users["user_id"])
    )
    items = add_entities(
        ds.items, spec, "items", distributed.allgather_strings(ds.items["item_id"])
    )
    local = ds.ratings
    user = pd.Index(users["user_id"]).get_indexer(local["user_id"]).astype(np.int32)
    item = pd.Index(items["item_id"]).get_indexer(local["item_id"]).astype(np.int32)
    gather = distributed.allgather_rows
    user, item = gather(user), gather(item)
    rating = gather(local["rating"].to_numpy(np.float32))
    stamp = gather(local["timestamp"].to_numpy(np.int64))
    shard = gather(local[SHARD_COLUMN].to_numpy(np.int16))
    row = gather(local[ROW_COLUMN].to_numpy(np.int64))
    user_rank = _zfill_rank(users["user_id"], _widest(local["user_id"]))
    item_rank = _zfill_rank(items["item_id"], _widest(local["item_id"]))
    order = np.lexsort((row, stamp, item_rank[item], user_rank[user]))  # last key first
    ratings = pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy()[user[order]],
            "item_id": items["item_id"].to_numpy()[item[order]],
            "rating": rating[order],
            "timestamp": stamp[order],
            SHARD_COLUMN: shard[order],
            ROW_COLUMN: row[order],
        }
    )
    ratings = ratings.astype({"user_id": ds.ratings["user_id"].dtype})
    ratings = ratings.astype({"item_id": ds.ratings["item_id"].dtype})
    return RatingsDataset(ds.name, ratings, users, items).validate()
