"""Online corrections: shrunk per-entity offsets learned from feedback after training.

A served model does not move between retrainings, but the first ratings of a new item say
more about its quality than its title. For every user and item the residuals of the
feedback received since the model was installed are accumulated as ``(count n, sum s)``;
an answer adds the shrunk means

    item offset  c_i = s_i / (n_i + k_item)      on ``rating - model_rating``
    user offset  c_u = s_u / (n_u + k_user)      on what is left, ``rating - model_rating - c_i``

(James-Stein style shrinkage towards 0: with few ratings the model's answer dominates; ``k``
is the number of ratings at which an offset gets half its weight). Items whose id is out of
the model's vocabulary (OOV: cold-start items, served through the OOV slot and their text)
have their own ``k_item_oov``: the model knows far less about them, so their first ratings
deserve more weight. ``k_item``/``k_user`` are fitted at training time by progressive
validation on ID validation (:func:`fit_shrinkage`), ``k_item_oov`` on the same ratings
predicted with the item ids hidden, as a cold-start item is served (:func:`fit_oov_item`);
all three are stored in the artifact's manifest (``corrections``).

Progressive validation (:func:`replay`): events in time order, each predicted with the state
*before* its own feedback, then applied, so every prediction only uses earlier ratings. The
service applies exactly this update to its shared state (``service/corrections.py``), so a
replay here equals the service's answers for the same events (the tests check it).

Pure numpy: no I/O, used by the trainer, the service and the tests.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# k values searched by fit_shrinkage (ratings): from nearly "trust the first rating" to
# nearly "ignore feedback" (k = 1e4 needs thousands of ratings to move an offset).
K_GRID: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 35.0, 60.0, 100.0, 1e4)


@dataclass(frozen=True)
class Shrinkage:
    """Shrinkage strengths of the offsets (pseudo-counts, ratings).

    Attributes:
        k_item: items in the model's vocabulary.
        k_user: users.
        k_item_oov: items out of the vocabulary (cold start); None = ``k_item``.
    """

    k_item: float
    k_user: float
    k_item_oov: float | None = None

    def __post_init__(self) -> None:
        for name in ("k_item", "k_user", "k_item_oov"):
            value = getattr(self, name)
            if value is None and name == "k_item_oov":
                continue
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"corrections.{name} must be a positive number, got {value!r}")

    def item_k(self, item_oov: np.ndarray | None) -> np.ndarray | float:
        """Per event: ``k_item_oov`` where the item is OOV, else ``k_item``."""
        if item_oov is None or self.k_item_oov is None:
            return self.k_item
        return np.where(np.asarray(item_oov, bool), self.k_item_oov, self.k_item)

    def to_json(self) -> dict[str, float]:
        out = {"k_item": float(self.k_item), "k_user": float(self.k_user)}
        if self.k_item_oov is not None:
            out["k_item_oov"] = float(self.k_item_oov)
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> Shrinkage:
        """From the manifest's ``corrections`` object.

        Raises:
            ValueError: a missing or non-positive ``k_item`` / ``k_user`` / ``k_item_oov``.
        """
        try:
            oov = doc.get("k_item_oov")
            return cls(
                float(doc["k_item"]),  # type: ignore[arg-type]
                float(doc["k_user"]),  # type: ignore[arg-type]
                None if oov is None else float(oov),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"manifest corrections needs k_item and k_user ({e})") from None


# Used when an artifact predates fitted values: moderate trust (half weight after 10 ratings).
DEFAULT_SHRINKAGE = Shrinkage(k_item=10.0, k_user=10.0)


def offset(count: np.ndarray, total: np.ndarray, k: float | np.ndarray) -> np.ndarray:
    """Shrunk mean residual ``total / (count + k)`` (0 where ``count`` is 0), float64 ``[n]``;
    ``k`` a scalar or per entry ``[n]``."""
    count = np.asarray(count, np.float64)
    return np.asarray(total, np.float64) / (count + k)


@dataclass(frozen=True)
class Replay:
    """A batch of feedback events applied in order (all arrays ``[n]``, float64).

    Attributes:
        item_offset, user_offset: each event's offsets *before* its own feedback (what a
            prediction of that pair answered at that moment).
        item_residual: ``rating - model_rating``: what the event adds to its item's sum.
        user_residual: ``rating - model_rating - item_offset``: what it adds to its user's sum.
    """

    item_offset: np.ndarray
    user_offset: np.ndarray
    item_residual: np.ndarray
    user_residual: np.ndarray

    @property
    def correction(self) -> np.ndarray:
        return self.item_offset + self.user_offset


def _before(keys: Sequence, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per event: how many earlier events share its key, and the sum of their ``values``
    (float64 ``[n]`` each).

    pandas' groupby (``cumcount``, ``cumsum`` less the event's own value) where the process
    has pandas loaded (the trainer, whose shrinkage fit replays a split about 240 times: 2-4x
    faster there), :func:`_before_numpy` otherwise (the service, which does not import pandas:
    docs/PROFILING.md, "Third pass"); the two agree within 1e-10 (tests/model/test_corrections.py).
    """
    pd = sys.modules.get("pandas")
    if pd is None:
        return _before_numpy(keys, values)
    groups = pd.Series(values).groupby(pd.Index(keys), sort=False)
    count = groups.cumcount().to_numpy(np.float64)
    total = groups.cumsum().to_numpy(np.float64) - values
    return count, total


def _before_numpy(keys: Sequence, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_before` in numpy: a group's sum is a difference of running sums over the events
    in key order."""
    values = np.asarray(values, np.float64)
    n = len(values)
    if isinstance(keys, np.ndarray) and keys.ndim == 1 and keys.dtype.kind in "biu":
        codes = np.unique(keys, return_inverse=True)[1].reshape(-1)  # integer codes: vectorized
    else:  # ids as strings (a dict is faster than sorting them) or other hashable keys
        first: dict = {}
        codes = np.fromiter((first.setdefault(k, len(first)) for k in keys), np.int64, n)
    order = np.argsort(codes, kind="stable")  # by key, time order kept within a key
    v = values[order]
    position = np.arange(n)
    starts = np.ones(n, bool)
    starts[1:] = codes[order][1:] != codes[order][:-1]
    start = np.maximum.accumulate(np.where(starts, position, 0))  # each event's group start
    running = np.cumsum(v) - v  # sum of everything before, in key order
    count, total = np.empty(n), np.empty(n)
    count[order] = position - start
    total[order] = running - running[start]
    return count, total


def replay(
    model_rating: np.ndarray,
    rating: np.ndarray,
    users: Sequence[str],
    items: Sequence[str],
    shrinkage: Shrinkage,
    *,
    user_state: tuple[np.ndarray, np.ndarray] | None = None,
    item_state: tuple[np.ndarray, np.ndarray] | None = None,
    item_oov: np.ndarray | None = None,
) -> Replay:
    """Apply feedback events in order, vectorised (one pass per side).

    Args:
        model_rating: float ``[n]``: the model's own rating of each pair (no correction).
        rating: float ``[n]``: the rating the user gave.
        users, items: ``[n]`` entity ids.
        shrinkage: ``k_item``, ``k_user``.
        user_state, item_state: ``(count [n], sum [n])`` each event's entity had before the
            batch (the service's stored state); default: none (a replay from scratch).
        item_oov: bool ``[n]``: the item's id is out of the model's vocabulary (its offset
            uses ``k_item_oov``).

    Returns:
        the offsets each event was predicted with and the residuals it adds.
    """
    model_rating = np.asarray(model_rating, np.float64)
    residual = np.asarray(rating, np.float64) - model_rating
    n = len(residual)
    zero = (np.zeros(n), np.zeros(n))
    base_n, base_s = item_state if item_state is not None else zero
    count, total = _before(items, residual)
    item_offset = offset(base_n + count, base_s + total, shrinkage.item_k(item_oov))
    user_residual = residual - item_offset
    base_n, base_s = user_state if user_state is not None else zero
    count, total = _before(users, user_residual)
    user_offset = offset(base_n + count, base_s + total, shrinkage.k_user)
    return Replay(item_offset, user_offset, residual, user_residual)


def progressive_rmse(
    model_rating: np.ndarray,
    rating: np.ndarray,
    users: Sequence[str],
    items: Sequence[str],
    shrinkage: Shrinkage,
    rating_range: tuple[float, float],
    item_oov: np.ndarray | None = None,
) -> float:
    """RMSE of the corrected predictions of a time-ordered replay (clipped to the range)."""
    result = replay(model_rating, rating, users, items, shrinkage, item_oov=item_oov)
    corrected = np.clip(np.asarray(model_rating, np.float64) + result.correction, *rating_range)
    return float(np.sqrt(np.mean((corrected - np.asarray(rating, np.float64)) ** 2)))


def fit_shrinkage(
    model_rating: np.ndarray,
    rating: np.ndarray,
    users: Sequence[str],
    items: Sequence[str],
    rating_range: tuple[float, float],
    grid: Sequence[float] = K_GRID,
) -> tuple[Shrinkage, dict[str, float]]:
    """The ``(k_item, k_user)`` of ``grid`` x ``grid`` with the lowest progressive RMSE.

    Args:
        model_rating, rating, users, items: ``[n]`` events in time order (ID validation).

    Returns:
        ``(best shrinkage, {"k_item=..,k_user=..": rmse, ...})``.

    Raises:
        ValueError: no events.
    """
    if len(rating) == 0:
        raise ValueError("fit_shrinkage needs at least one event")
    scores = {}
    for k_item in grid:
        for k_user in grid:
            s = Shrinkage(k_item, k_user)
            scores[(k_item, k_user)] = progressive_rmse(
                model_rating, rating, users, items, s, rating_range
            )
    best = min(scores, key=scores.get)
    return Shrinkage(*best), {f"k_item={a:g},k_user={b:g}": v for (a, b), v in scores.items()}


def fit_oov_item(
    model_rating: np.ndarray,
    rating: np.ndarray,
    users: Sequence[str],
    items: Sequence[str],
    base: Shrinkage,
    rating_range: tuple[float, float],
    grid: Sequence[float] = K_GRID,
) -> tuple[Shrinkage, dict[str, float]]:
    """``base`` with the ``k_item_oov`` of ``grid`` that replays best when every item is OOV.

    Args:
        model_rating: ``[n]`` ratings of the events predicted with the item ids hidden (the
            OOV slot, as a cold-start item is served); ``rating``, ``users``, ``items``: the
            events in time order.

    Returns:
        ``(shrinkage, {"k_item_oov=..": rmse, ...})``.
    """
    oov = np.ones(len(rating), bool)
    scores = {
        k: progressive_rmse(
            model_rating,
            rating,
            users,
            items,
            Shrinkage(base.k_item, base.k_user, k),
            rating_range,
            item_oov=oov,
        )
        for k in grid
    }
    best = min(scores, key=scores.get)
    table = {f"k_item_oov={k:g}": v for k, v in scores.items()}
    return Shrinkage(base.k_item, base.k_user, best), table
