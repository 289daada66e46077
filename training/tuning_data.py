"""What the tuning stage trains on: every view's distinct texts, the frozen bottom layers'
output of each computed once, and the per-step samples of texts and pairs.

Texts are grouped by view and token-length bucket (a user text is 16-20 MiniLM tokens, a
movie's 8-35): each group is padded to its own length, so a step pads little. A step samples
``text_fraction`` of every group's training texts and trains on the ID train pairs whose texts
are all sampled; each sampled text runs through the tuned layers once, however many of the
step's pairs read it (a user's text serves all of that user's sampled ratings).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from model.tokenizer import bucket_length

GROUP_BUCKETS: tuple[int, ...] = (8, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclass(frozen=True)
class TextGroup:
    """The texts of one view that pad to one length.

    Attributes:
        view: the view's position.
        texts: int ``[n]`` rows in the view's distinct texts.
        input_ids, mask: int32 ``[n, length]``.
        train: int ``[k]`` positions in ``texts`` of those some ID train pair reads.
    """

    view: int
    texts: np.ndarray
    input_ids: np.ndarray
    mask: np.ndarray
    train: np.ndarray

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


def text_groups(
    tokenizer, texts: Sequence[Sequence[str]], index: np.ndarray, train_rows: np.ndarray
) -> list[TextGroup]:
    """Every view's texts, tokenized and grouped by length bucket.

    Args:
        texts: per view its distinct texts; index: int ``[n_pairs, n_views]`` rows in them
            (``training.precompute.render_views``).
        train_rows: the ID train pairs (rows of ``index``).
    """
    buckets = tuple(b for b in GROUP_BUCKETS if b < tokenizer.max_length) + (tokenizer.max_length,)
    groups = []
    for v, view_texts in enumerate(texts):
        ids = tokenizer.encode(list(view_texts))
        length = np.array([bucket_length(len(x), buckets) for x in ids])
        trained = np.zeros(len(view_texts), bool)
        trained[index[train_rows, v]] = True
        for b in np.unique(length):
            rows = np.flatnonzero(length == b)
            input_ids, mask = tokenizer.pad([ids[r] for r in rows], (int(b),))
            groups.append(TextGroup(v, rows, input_ids, mask, np.flatnonzero(trained[rows])))
    return groups


def bottom_outputs(
    groups: Sequence[TextGroup],
    fn: Callable[[np.ndarray, np.ndarray], jax.Array],
    chunk: int = 256,
) -> list[np.ndarray]:
    """``fn(input_ids, mask)`` of every group's texts in chunks (rows padded to ``chunk``, so
    one compile per length): the frozen bottom's output of each text, once."""
    out = []
    for g in groups:
        parts = []
        for start in range(0, len(g.texts), chunk):
            ids, mask = g.input_ids[start : start + chunk], g.mask[start : start + chunk]
            n = len(ids)
            pad = chunk - n if len(g.texts) > chunk else 0
            if pad:
                ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
                mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), mask.dtype)])
            parts.append(np.asarray(fn(ids, mask))[:n])
        out.append(np.concatenate(parts))
    return out


@dataclass(frozen=True)
class StepSample:
    """One step's inputs (host arrays; fixed shapes, so one compile serves every step).

    Attributes:
        selected: per group, int32 ``[n_sel_g]`` positions in the group's texts.
        positions: int32 ``[P, n_views]``: each pair's text among its view's selected texts
            (groups of a view concatenated in order).
        ratings: float32 ``[P]``; weights: float32 ``[P]`` (0 for padding).
    """

    selected: list[np.ndarray]
    positions: np.ndarray
    ratings: np.ndarray
    weights: np.ndarray


class StepSampler:
    """Draws :class:`StepSample` s: ``fraction`` of every group's training texts, and the ID
    train pairs whose texts are all among them (at most ``capacity`` of them, a uniform
    subset when more; the capacity is fixed from trial draws so it rarely binds).

    Args:
        unit: sizes are multiples of it (the mesh's devices).
    """

    def __init__(
        self,
        groups: Sequence[TextGroup],
        index: np.ndarray,
        ratings: np.ndarray,
        train_rows: np.ndarray,
        n_texts: Sequence[int],
        fraction: float,
        seed: int,
        unit: int = 1,
    ):
        self.groups, self.index, self.ratings = list(groups), index, ratings
        self.train_rows = np.asarray(train_rows)
        self.n_texts = list(n_texts)
        self.rng = np.random.default_rng(seed)
        # texts per group and step: a multiple of the devices, 0 for a group no pair trains
        self.sizes = [
            _round_up(max(1, math.ceil(fraction * len(g.train))), unit) if len(g.train) else 0
            for g in self.groups
        ]
        trial = max(len(self._pairs(self._select())[0]) for _ in range(8))
        self.capacity = _round_up(max(unit, math.ceil(trial * 1.2)), unit)

    def _select(self) -> list[np.ndarray]:
        out = []
        for g, n in zip(self.groups, self.sizes, strict=True):
            if n == 0:
                out.append(np.zeros(0, np.int32))
                continue
            pool = g.train
            pick = self.rng.choice(pool, n, replace=n > len(pool))
            out.append(pick.astype(np.int32))
        return out

    def _pairs(self, selected: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        n_views = self.index.shape[1]
        position = [np.full(n, -1, np.int32) for n in self.n_texts]
        offset = [0] * n_views
        for g, sel in zip(self.groups, selected, strict=True):
            position[g.view][g.texts[sel]] = offset[g.view] + np.arange(len(sel), dtype=np.int32)
            offset[g.view] += len(sel)
        pos = np.stack(
            [position[v][self.index[self.train_rows, v]] for v in range(n_views)], axis=1
        )  # [n_train, n_views]
        keep = np.all(pos >= 0, axis=1)
        return self.train_rows[keep], pos[keep]

    def draw(self) -> StepSample:
        selected = self._select()
        rows, pos = self._pairs(selected)
        if len(rows) > self.capacity:
            pick = self.rng.choice(len(rows), self.capacity, replace=False)
            rows, pos = rows[pick], pos[pick]
        n, cap = len(rows), self.capacity
        positions = np.zeros((cap, pos.shape[1]), np.int32)
        positions[:n] = pos
        ratings = np.zeros(cap, np.float32)
        ratings[:n] = self.ratings[rows]
        weights = np.zeros(cap, np.float32)
        weights[:n] = 1.0
        return StepSample(selected, positions, ratings, weights)


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit
