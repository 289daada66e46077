"""The ratings as indices: one row per rating, entity rows in place of id strings.

A run keeps its ratings in this form from the split on (20 bytes a rating); the id strings
live once per entity in the users and items tables. Everything per rating downstream (the
head's batches, evaluation, the drift reference, the progressive replay, the export's figures)
indexes these arrays and the per-entity and per-text tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value to compare by
class PairTable:
    """Ratings as entity rows.

    Attributes:
        user: int32 ``[n]`` row of the rating's user in the users table.
        item: int32 ``[n]`` row of its item in the items table.
        rating: float32 ``[n]``.
        timestamp: int64 ``[n]`` seconds (0 when the spec declares none).
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray

    def __len__(self) -> int:
        return len(self.rating)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, users: pd.Index, items: pd.Index) -> PairTable:
        """``user_id, item_id, rating, timestamp`` rows as entity rows.

        Args:
            users, items: the entity tables' ids (as strings), in table order.

        Raises:
            ValueError: a rating names an id absent from its table.
        """
        user = users.get_indexer(frame["user_id"].astype(str))
        item = items.get_indexer(frame["item_id"].astype(str))
        for name, rows, ids in (("user", user, frame["user_id"]), ("item", item, frame["item_id"])):
            if (rows < 0).any():
                missing = ids[rows < 0].iloc[:3].tolist()
                raise ValueError(
                    f"{int((rows < 0).sum())} rating(s) name a {name} absent from the {name}s "
                    f"table, e.g. {missing}"
                )
        return cls(
            user.astype(np.int32),
            item.astype(np.int32),
            frame["rating"].to_numpy(np.float32),
            frame["timestamp"].to_numpy(np.int64),
        )

    @classmethod
    def concat(cls, parts: Sequence[PairTable]) -> PairTable:
        return cls(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("user", "item", "rating", "timestamp")
            )
        )

    def take(self, rows: np.ndarray) -> PairTable:
        """The pairs at ``rows``."""
        return PairTable(self.user[rows], self.item[rows], self.rating[rows], self.timestamp[rows])
