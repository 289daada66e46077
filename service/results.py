"""Scored pairs as arrays (:class:`ScoreBatch`) and their JSON, without per-pair objects on
the scoring path: the scorer fills arrays, the micro-batcher slices them per request, and the
routes serialize them with orjson."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

NO_WARNINGS: tuple[str, ...] = ()
# Where an answer's entity fields came from, highest precedence first (service/catalog.py).
SOURCES = ("request", "catalog", "model", "unknown")
SOURCE_CODE = {name: code for code, name in enumerate(SOURCES)}
# The per-pair arrays of a ScoreBatch (sliced, reordered and concatenated together).
ARRAYS = (
    "rating",
    "adapters",
    "ood_score",
    "cold_user",
    "cold_item",
    "model_rating",
    "user_correction",
    "item_correction",
    "user_source",
    "item_source",
)


@dataclass(frozen=True)
class ScoreBatch:
    """The answers for ``n`` pairs, in request order.

    Attributes:
        rating: float32 ``[n]``: the answer: ``model_rating`` plus the online corrections
            (``service/corrections.py``), clipped to the rating range.
        adapters: float32 ``[n, A]`` per-adapter ratings, in ``layers`` order.
        ood_score: float32 ``[n]``.
        cold_user, cold_item: bool ``[n]``: the id is not in the model's tables.
        warnings: per pair, a tuple of messages (mostly the shared empty tuple).
        layers: 1-based encoder layer of each adapter.
        model_version: the model that scored them.
        model_rating: float32 ``[n]``: the model's own rating (adapters' mean, clipped).
        user_correction, item_correction: float32 ``[n]``: the online offsets added (0 with
            corrections off or before any feedback).
        user_source, item_source: int8 ``[n]``: where each side's fields came from, a
            position in :data:`SOURCES` (request, catalog, model: the model's tables,
            unknown: a cold start without fields).
    """

    rating: np.ndarray
    adapters: np.ndarray
    ood_score: np.ndarray
    cold_user: np.ndarray
    cold_item: np.ndarray
    warnings: tuple[tuple[str, ...], ...]
    layers: tuple[int, ...]
    model_version: str
    model_rating: np.ndarray
    user_correction: np.ndarray
    item_correction: np.ndarray
    user_source: np.ndarray
    item_source: np.ndarray

    @staticmethod
    def of_model(
        rating: np.ndarray,
        adapters: np.ndarray,
        ood_score: np.ndarray,
        cold_user: np.ndarray,
        cold_item: np.ndarray,
        warnings: tuple[tuple[str, ...], ...],
        layers: tuple[int, ...],
        model_version: str,
    ) -> ScoreBatch:
        """The model's answers, before any online correction (sources from the cold flags
        alone until :meth:`with_sources`)."""
        zero = np.zeros_like(rating)
        return ScoreBatch(
            rating,
            adapters,
            ood_score,
            cold_user,
            cold_item,
            warnings,
            layers,
            model_version,
            rating,
            zero,
            zero,
            _table_source(cold_user),
            _table_source(cold_item),
        )

    def with_sources(self, user: np.ndarray, item: np.ndarray) -> ScoreBatch:
        """These answers with each side's source codes ``[n]`` (:data:`SOURCES`)."""
        return dataclasses.replace(
            self, user_source=np.asarray(user, np.int8), item_source=np.asarray(item, np.int8)
        )

    def corrected(
        self, user: np.ndarray, item: np.ndarray, rating_range: tuple[float, float]
    ) -> ScoreBatch:
        """These answers with the user and item offsets ``[n]`` added (clipped to the range)."""
        user = np.asarray(user, np.float32)
        item = np.asarray(item, np.float32)
        rating = np.clip(self.model_rating + user + item, *rating_range).astype(np.float32)
        return dataclasses.replace(self, rating=rating, user_correction=user, item_correction=item)

    def __len__(self) -> int:
        return int(self.rating.shape[0])

    def _select(self, pick, warnings: tuple[tuple[str, ...], ...]) -> ScoreBatch:
        # Built without dataclasses.replace (which re-runs the frozen __init__'s setattr per
        # field): the micro-batcher slices one batch per waiting request, on the event loop.
        # Valid while ScoreBatch has no __post_init__ and no slots.
        out = object.__new__(type(self))
        fields = out.__dict__
        fields.update(self.__dict__)
        for name in ARRAYS:
            fields[name] = pick(fields[name])
        fields["warnings"] = warnings
        return out

    def slice(self, start: int, stop: int) -> ScoreBatch:
        return self._select(lambda a: a[start:stop], self.warnings[start:stop])

    def take(self, order: np.ndarray) -> ScoreBatch:
        """The pairs at positions ``order`` (e.g. sorted by rating)."""
        picked = tuple(map(self.warnings.__getitem__, np.asarray(order).tolist()))
        return self._select(lambda a: a[order], picked)

    @staticmethod
    def concat(parts: Sequence[ScoreBatch]) -> ScoreBatch:
        first = parts[0]
        if len(parts) == 1:
            return first
        arrays = {name: np.concatenate([getattr(p, name) for p in parts]) for name in ARRAYS}
        warnings = tuple(w for p in parts for w in p.warnings)
        return dataclasses.replace(first, warnings=warnings, **arrays)

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
                "model_rating": m,
                "corrections": {"user": c_u, "item": c_i},
                "sources": {"user": SOURCES[s_u], "item": SOURCES[s_i]},
            }
            for r, ad, o, cu, ci, w, m, c_u, c_i, s_u, s_i in zip(
                self.rating.tolist(),
                adapters,
                self.ood_score.tolist(),
                cold_user,
                cold_item,
                self.warnings,
                self.model_rating.tolist(),
                self.user_correction.tolist(),
                self.item_correction.tolist(),
                self.user_source.tolist(),
                self.item_source.tolist(),
                strict=True,
            )
        ]


def _table_source(cold: np.ndarray) -> np.ndarray:
    """Source codes of sides without fields: the model's tables, or unknown."""
    cold = np.asarray(cold, bool)
    return np.where(cold, SOURCE_CODE["unknown"], SOURCE_CODE["model"]).astype(np.int8)


def adapter_list(layers: Sequence[int], ratings: Sequence[float]) -> list[dict]:
    """``[{"layer", "rating"}, ...]`` of one pair (the ``AdapterRating`` shape)."""
    return [{"layer": lay, "rating": r} for lay, r in zip(layers, ratings, strict=True)]


def dumps(content: object) -> bytes:
    """JSON bytes (numpy scalars and arrays allowed)."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
