"""What the first-layer decomposition (``model.decomposed``) splits by: the two sides, which
inputs belong to which (:class:`Layout`), and the per-entity part shapes.

Plain data, without Flax or JAX: the service reads it to size its projection caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model.head_config import HeadConfig

SIDES = ("user", "item")


@dataclass(frozen=True)
class Layout:
    """Which inputs belong to which side.

    Attributes:
        n_user_ids: the first ``n_user_ids`` columns of ``ids`` are the user's.
        n_user_multi_hot: the first ``n_user_multi_hot`` multi-hot columns are the user's.
        view_sides: per text view, the side it renders (``"user"`` or ``"item"``).
    """

    n_user_ids: int
    n_user_multi_hot: int
    view_sides: tuple[str, ...]

    def to_json(self) -> dict:
        return {
            "n_user_ids": self.n_user_ids,
            "n_user_multi_hot": self.n_user_multi_hot,
            "view_sides": list(self.view_sides),
        }

    @classmethod
    def from_json(cls, data: dict) -> Layout:
        return cls(
            int(data["n_user_ids"]), int(data["n_user_multi_hot"]), tuple(data["view_sides"])
        )


def decomposable(view_entities: Sequence[str]) -> bool:
    """Whether views of these entities split by side (no ``pair`` view)."""
    return all(e in SIDES for e in view_entities)


def part_widths(cfg: HeadConfig) -> dict[str, tuple[int, ...]]:
    """Per-row shapes of each part (what one entity's projections hold)."""
    return {
        "mlp": (cfg.mlp_dims[0] if cfg.use_task_vector else 0,),
        "adapters": (cfg.n_adapters, cfg.adapter_hidden or 1),
        "bias": (),
        "factors": (cfg.factor_dim if cfg.uses_collab else 0,),
    }
