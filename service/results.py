"""Scored pairs as arrays (:class:`ScoreBatch`) and their JSON, without per-pair objects on
the scoring path: the scorer fills arrays, the micro-batcher slices them per request, and the
routes serialize them with orjson."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

NO_WARNINGS: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScoreBatch:
    """The answers for ``n`` pairs, in request order.

    Attributes:
        rating: float32 ``[n]``: adapters' mean clipped to the rating range.
        adapters: float32 ``[n, A]`` per-adapter ratings, in ``layers`` order.
        ood_score: float32 ``[n]``.
        cold_user, cold_item: bool ``[n]``: the id is not in the model's tables.
        warnings: per pair, a tuple of messages (mostly the shared empty tuple).
        layers: 1-based encoder layer of each adapter.
        model_version: the model that scored them.
    """

    rating: np.ndarray
    adapters: np.ndarray
    ood_score: np.ndarray
    cold_user: np.ndarray
    cold_item: np.ndarray
    warnings: tuple[tuple[str, ...], ...]
    layers: tuple[int, ...]
    model_version: str

    def __len__(self) -> int:
        return int(self.rating.shape[0])

    def slice(self, start: int, stop: int) -> ScoreBatch:
        return ScoreBatch(
            self.rating[start:stop], self.adapters[start:stop], self.ood_score[start:stop],
            self.cold_user[start:stop], self.cold_item[start:stop], self.warnings[start:stop],
            self.layers, self.model_version,
        )  # fmt: skip

    def take(self, order: np.ndarray) -> ScoreBatch:
        """The pairs at positions ``order`` (e.g. sorted by rating)."""
        return ScoreBatch(
            self.rating[order], self.adapters[order], self.ood_score[order],
            self.cold_user[order], self.cold_item[order],
            tuple(self.warnings[i] for i in order), self.layers, self.model_version,
        )  # fmt: skip

    @staticmethod
    def concat(parts: Sequence[ScoreBatch]) -> ScoreBatch:
        first = parts[0]
        if len(parts) == 1:
            return first
        return ScoreBatch(
            np.concatenate([p.rating for p in parts]),
            np.concatenate([p.adapters for p in parts]),
            np.concatenate([p.ood_score for p in parts]),
            np.concatenate([p.cold_user for p in parts]),
            np.concatenate([p.cold_item for p in parts]),
            tuple(w for p in parts for w in p.warnings),
            first.layers,
            first.model_version,
        )

    def predictions(self) -> list[dict]:
        """``PredictResponse``-shaped dicts (plain Python values, for orjson)."""
        adapters = self.adapters.tolist()
        cold_user, cold_item = self.cold_user.tolist(), self.cold_item.tolist()
        return [
            {
                "rating": r,
                "adapters": [
                    {"layer": lay, "rating": a} for lay, a in zip(self.layers, ad, strict=True)
                ],
                "ood_score": o,
                "model_version": self.model_version,
                "cold_start": {"user": cu, "item": ci},
                "warnings": list(w),
            }
            for r, ad, o, cu, ci, w in zip(
                self.rating.tolist(),
                adapters,
                self.ood_score.tolist(),
                cold_user,
                cold_item,
                self.warnings,
                strict=True,
            )  # fmt: skip
        ]


def adapter_list(layers: Sequence[int], ratings: Sequence[float]) -> list[dict]:
    """``[{"layer", "rating"}, ...]`` of one pair (the ``AdapterRating`` shape)."""
    return [{"layer": lay, "rating": r} for lay, r in zip(layers, ratings, strict=True)]


def dumps(content: object) -> bytes:
    """JSON bytes (numpy scalars and arrays allowed)."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
