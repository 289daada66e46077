"""Training reference statistics: the baseline that drift and OOD signals are measured against.

Stored in the artifact as ``reference.safetensors`` (one tensor per field below).

``ood_score`` calibration: the score of a prediction is the standard deviation of its adapter
ratings (population std, ``ddof=0``) divided by the median of that standard deviation over the
training pairs (``disagreement_quantiles[0]``). So the training median of ``ood_score`` is
1.0 by construction; 2.0 means the adapters disagree twice as much as on a typical training
pair. With a single adapter the spread is always 0 and so is the score.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from model.safetensors_file import save_tensors

QUANTILE_LEVELS: tuple[float, ...] = (0.5, 0.9, 0.99)
# Below this training median the adapters agree everywhere; do not divide by ~0.
_MIN_MEDIAN = 1e-6


@dataclass(frozen=True, eq=False)
class ReferenceStats:
    """Statistics of the training pairs, all float32.

    Attributes:
        activation_mean: ``[n_views, n_layers, d]`` mean pooled activation per view and layer.
        activation_var: ``[n_views, n_layers, d]`` its variance.
        prediction_edges: ``[n_bins + 1]`` increasing bin edges of the prediction histogram.
        prediction_hist: ``[n_bins]`` fraction of training predictions per bin.
        disagreement_quantiles: ``[3]`` quantiles at ``QUANTILE_LEVELS`` (0.5, 0.9, 0.99) of
            the per-pair std over adapter ratings.
    """

    activation_mean: np.ndarray
    activation_var: np.ndarray
    prediction_edges: np.ndarray
    prediction_hist: np.ndarray
    disagreement_quantiles: np.ndarray

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, np.asarray(getattr(self, f.name), np.float32))
        mean, var = self.activation_mean, self.activation_var
        if mean.ndim != 3 or var.shape != mean.shape:
            raise ValueError(
                "activation_mean and activation_var must both be [n_views, n_layers, d]; got "
                f"{mean.shape} and {var.shape}"
            )
        edges, hist = self.prediction_edges, self.prediction_hist
        if edges.ndim != 1 or hist.shape != (edges.shape[0] - 1,) or hist.shape[0] < 1:
            raise ValueError(
                "prediction_edges must be [n_bins + 1] and prediction_hist [n_bins]; got "
                f"{edges.shape} and {hist.shape}"
            )
        if np.any(np.diff(edges) <= 0):
            raise ValueError(f"prediction_edges must increase strictly; got {edges.tolist()}")
        if self.disagreement_quantiles.shape != (len(QUANTILE_LEVELS),):
            raise ValueError(
                f"disagreement_quantiles must hold {len(QUANTILE_LEVELS)} values (at "
                f"{QUANTILE_LEVELS}); got shape {self.disagreement_quantiles.shape}"
            )

    @property
    def disagreement_median(self) -> float:
        """Training median of the adapter std: the unit of :meth:`ood_score`."""
        return float(self.disagreement_quantiles[0])

    def ood_score(self, adapters: np.ndarray) -> np.ndarray:
        """Adapter spread in units of its training median (see the module docstring).

        Args:
            adapters: ``[b, n_adapters]`` adapter ratings.

        Returns:
            float32 ``[b]``; the training median of this score is 1.0.
        """
        spread = np.std(np.asarray(adapters, np.float64), axis=-1)  # [b]
        return (spread / max(self.disagreement_median, _MIN_MEDIAN)).astype(np.float32)

    def to_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, np.ndarray]) -> ReferenceStats:
        """From ``{field: array}``; raises ValueError naming missing or unexpected fields."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        extra = sorted(set(data) - set(names))
        if missing or extra:
            raise ValueError(
                f"reference statistics need exactly {names}; missing {missing}, unexpected {extra}"
            )
        return cls(**{n: np.asarray(data[n]) for n in names})

    def save(self, path: str | Path) -> None:
        """Write the statistics as safetensors, with an ordinary file's mode (not 0600)."""
        save_tensors({k: np.ascontiguousarray(v) for k, v in self.to_dict().items()}, path)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStats:
        from safetensors.numpy import load_file

        return cls.from_dict(load_file(str(path)))
