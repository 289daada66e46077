"""Online corrections at training time: fit their shrinkage, evaluate them by progressive
validation (``model/corrections.py`` holds the arithmetic; the service applies the same).

* **Fit**: ID validation replayed in time order, each rating predicted with the corrections
  of the validation ratings before it; the ``(k_item, k_user)`` of the grid with the lowest
  RMSE, then ``k_item_oov`` from the same replay with the items' ids hidden (the OOV slot, as
  a cold-start item is served), are stored in the artifact's manifest (``corrections``).
* **Evaluate**: the ID test set and the OOD set, each replayed in time order from an empty
  state (as after a model is installed): RMSE of the model alone and with the corrections,
  overall and per OOD group. The paper-protocol tables are not touched: this is a separate
  section of the report.

Ratings with equal timestamps keep their order in the split (stable sort); a spec without a
timestamp column replays in file order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from model.corrections import Shrinkage, fit_oov_item, fit_shrinkage, replay
from training.evaluate import rmse

if TYPE_CHECKING:
    from training.prepare import Prepared

Predict = Callable[[np.ndarray], np.ndarray]


def time_ordered(prep: Prepared, rows: np.ndarray) -> np.ndarray:
    """``rows`` sorted by timestamp (stable)."""
    stamps = prep.pairs.timestamp[rows]
    return rows[np.argsort(stamps, kind="stable")]


def item_oov(prep: Prepared, rows: np.ndarray) -> np.ndarray:
    """bool ``[len(rows)]``: the pair's item id is out of the model's vocabulary."""
    column = prep.features.id_column("item")
    if column < 0:  # the id is no input: no item is OOV by id
        return np.zeros(len(rows), bool)
    known = prep.features.categorical[column].known
    ids = prep.items["item_id"].astype(str)
    unknown = np.fromiter((not known(i) for i in ids), bool, len(ids))  # per item, once
    return unknown[prep.pairs.item[rows]]


def corrected(
    prep: Prepared, rows: np.ndarray, model_rating: np.ndarray, shrinkage: Shrinkage
) -> np.ndarray:
    """Progressive corrected predictions ``[len(rows)]`` of time-ordered ``rows``."""
    pairs = prep.pairs
    result = replay(
        model_rating,
        pairs.rating[rows].astype(np.float64),
        pairs.user[rows],  # entity rows key the replay's state as the ids would
        pairs.item[rows],
        shrinkage,
        item_oov=item_oov(prep, rows),
    )
    lo, hi = prep.spec.rating_scale.bounds
    return np.clip(np.asarray(model_rating, np.float64) + result.correction, lo, hi)


def fit_and_evaluate(
    prep: Prepared, predict: Predict, predict_oov: Predict | None
) -> tuple[Shrinkage, dict[str, Any]]:
    """Fit the shrinkage on ID validation and evaluate on ID test and OOD.

    Args:
        prep: the prepared data (``pairs`` with timestamps, ``rows``, ``ood_groups``).
        predict: ``rows [n] -> model ratings [n]`` of the exported model's parameters.
        predict_oov: the same with every item's id hidden (OOV), as a cold-start item is
            served; None when the item id is no model input (no ``k_item_oov``).

    Returns:
        ``(shrinkage, report section)``; the section holds ``k_item``, ``k_user``, the
        validation RMSEs of the grid's best, and per evaluated part ``n``, ``model`` and
        ``corrected`` RMSE (``ood_groups`` likewise).
    """
    lo, hi = prep.spec.rating_scale.bounds
    ratings = prep.pairs.rating
    val = time_ordered(prep, prep.rows["val"])
    val_pred, y_val = predict(val), ratings[val].astype(np.float64)
    users, items = prep.pairs.user[val], prep.pairs.item[val]
    shrinkage, grid = fit_shrinkage(val_pred, y_val, users, items, (lo, hi))
    fitted_on: dict[str, Any] = {
        "part": "ID validation, in time order",
        "n": int(len(val)),
        "model": rmse(val_pred, y_val),
        "corrected": min(grid.values()),
    }
    if predict_oov is not None:
        oov_pred = predict_oov(val)
        shrinkage, oov_grid = fit_oov_item(oov_pred, y_val, users, items, shrinkage, (lo, hi))
        fitted_on["model_item_ids_hidden"] = rmse(oov_pred, y_val)
        fitted_on["corrected_item_ids_hidden"] = min(oov_grid.values())
    section: dict[str, Any] = {**shrinkage.to_json(), "fitted_on": fitted_on}
    for part in ("test", "ood"):
        rows = time_ordered(prep, prep.rows[part])
        if not len(rows):
            continue
        model = predict(rows)
        fixed = corrected(prep, rows, model, shrinkage)
        y = ratings[rows].astype(np.float64)
        section[part] = {
            "n": int(len(rows)),
            "model": rmse(model, y),
            "corrected": rmse(fixed, y),
        }
        if part == "ood":
            section["ood_groups"] = {
                group: _group_scores(members, rows, model, fixed, y)
                for group, members in prep.ood_groups.items()
            }
    return shrinkage, section


def _group_scores(
    members: np.ndarray, rows: np.ndarray, model: np.ndarray, fixed: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """Scores of a group's pair rows ``members``; ``model``, ``fixed`` and ``y`` are aligned
    with ``rows`` (a permutation of the part's rows)."""
    order = np.argsort(rows, kind="stable")
    at = order[np.searchsorted(rows, members, sorter=order)]  # members' positions in rows
    return {
        "n": int(len(at)),
        "model": rmse(model[at], y[at]),
        "corrected": rmse(fixed[at], y[at]),
    }
