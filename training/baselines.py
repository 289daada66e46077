"""Closed-form baselines: the global mean and regularised user + item biases."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.evaluate import rmse


@dataclass(frozen=True)
class Biases:
    """``r(u, i) = mu + b_u + b_i``; unknown users or items (OOD movies) get a zero bias.

    Attributes:
        mu: global mean of the training ratings.
        user: float64 ``[n_users]``; item: float64 ``[n_items]`` (indexed by entity row).
        reg: the L2 strength (chosen on ID validation).
    """

    mu: float
    user: np.ndarray
    item: np.ndarray
    reg: float
    rating_range: tuple[float, float]

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.clip(self.mu + self.user[users] + self.item[items], *self.rating_range)


def global_mean(ratings: np.ndarray) -> float:
    return float(np.mean(ratings))


def fit_biases(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    *,
    n_users: int,
    n_items: int,
    reg: float,
    rating_range: tuple[float, float],
    iters: int = 20,
) -> Biases:
    """Alternating closed-form ridge updates of user and item biases.

    Args:
        users, items: int ``[n]`` entity rows of the training ratings; ratings ``[n]``.
        reg: L2 penalty on every bias (a damping count: ``b = sum(resid) / (count + reg)``).
        rating_range: predictions are clipped to it (the spec's rating scale).
    """
    mu = float(np.mean(ratings))
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    cu = np.bincount(users, minlength=n_users)
    ci = np.bincount(items, minlength=n_items)
    for _ in range(iters):
        bu = np.bincount(users, ratings - mu - bi[items], minlength=n_users) / (cu + reg)
        bi = np.bincount(items, ratings - mu - bu[users], minlength=n_items) / (ci + reg)
    return Biases(mu, bu, bi, reg, (float(rating_range[0]), float(rating_range[1])))


def tune_biases(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    n_users: int,
    n_items: int,
    regs: tuple[float, ...],
    rating_range: tuple[float, float],
) -> Biases:
    """The bias model whose L2 strength from ``regs`` has the lowest validation RMSE.

    Args:
        train, val: ``(users, items, ratings)`` arrays.
    """
    best, best_rmse = None, np.inf
    for reg in regs:
        model = fit_biases(
            *train, n_users=n_users, n_items=n_items, reg=reg, rating_range=rating_range
        )
        err = rmse(model.predict(val[0], val[1]), val[2])
        if err < best_rmse:
            best, best_rmse = model, err
    assert best is not None, "regs must not be empty"
    return best
