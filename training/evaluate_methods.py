"""Stage 4 of a run: every method of the report scored on ID test and OOD (per seed, per
OOD group; LEVI per adapter layer and its disagreement as an OOD detector)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from training import baselines, evaluate
from training.config import TrainConfig
from training.fit import DeviceData, run_adapters
from training.prepare import Prepared
from training.train import (
    RunResult,
    predict_ratings,
)


@dataclass(frozen=True)
class _HeldOut:
    """The rows every method is scored on: ID test and OOD, their ratings, the OOD groups."""

    test: np.ndarray  # int32 [n_test] rows of prep.pairs
    ood: np.ndarray  # int32 [n_ood]
    y_test: np.ndarray  # float32 [n_test]
    y_ood: np.ndarray  # float32 [n_ood]
    groups: dict[str, np.ndarray]  # OOD group -> positions in `ood`

    @classmethod
    def of(cls, prep: Prepared) -> _HeldOut:
        y = prep.tables.rating
        test, ood = prep.rows["test"], prep.rows["ood"]
        groups = {g: r - ood[0] for g, r in prep.ood_groups.items()} if len(ood) else {}
        return cls(test, ood, y[test], y[ood], groups)

    def score(self, pred_test: np.ndarray, pred_ood: np.ndarray) -> dict:
        """:func:`evaluate.score_method` of ratings ``[n_test]`` and ``[n_ood]``."""
        return evaluate.score_method(pred_test, self.y_test, pred_ood, self.y_ood, self.groups)


@dataclass(frozen=True)
class TrainedScores:
    """The trained heads on ID test and OOD (:func:`evaluate_trained`).

    Attributes:
        per_seed: method -> one :func:`evaluate.score_method` dict per run (seed), in the
            order of ``runs``; ``levi``'s also hold ``per_layer``
            (:func:`evaluate.score_layers`).
        predictions: method -> per run, ratings ``(test [n_test], ood [n_ood])``.
        auroc: mean/std over seeds of the AUROC of LEVI's adapter disagreement separating
            OOD from ID test; None without LEVI runs.
    """

    per_seed: dict[str, list[dict]]
    predictions: dict[str, list[tuple[np.ndarray, np.ndarray]]]
    auroc: dict[str, float] | None


def evaluate_baselines(prep: Prepared, cfg: TrainConfig) -> dict[str, list[dict]]:
    """Scores of the untrained baselines in ``cfg.methods``: ``global_mean`` (the ID train
    mean) and ``biases`` (user + item biases, regularisation tuned on ID validation).

    Returns:
        method -> a list of one :func:`evaluate.score_method` dict: the baselines are
        deterministic, one value for every seed (std 0 once aggregated).
    """
    held = _HeldOut.of(prep)
    t = prep.tables
    per_seed: dict[str, list[dict]] = {}
    if "global_mean" in cfg.methods:
        mu = baselines.global_mean(t.rating[prep.rows["train"]])
        per_seed["global_mean"] = [
            held.score(np.full(len(held.test), mu), np.full(len(held.ood), mu))
        ]
    if "biases" in cfg.methods:
        part = lambda rows: (t.pair_user[rows], t.pair_item[rows], t.rating[rows])
        model = baselines.tune_biases(
            part(prep.rows["train"]),
            part(prep.rows["val"]),
            n_users=len(t.user_ids),
            n_items=len(t.item_ids),
            regs=cfg.bias_regs,
            rating_range=prep.spec.rating_scale.bounds,
        )
        p_test = model.predict(t.pair_user[held.test], t.pair_item[held.test])
        p_ood = model.predict(t.pair_user[held.ood], t.pair_item[held.ood])
        per_seed["biases"] = [held.score(p_test, p_ood)]
    return per_seed


def evaluate_trained(
    prep: Prepared, cfg: TrainConfig, runs: dict[str, list[RunResult]], device: DeviceData
) -> TrainedScores:
    """Every trained run's predictions on ID test and OOD and their scores; for LEVI also
    each adapter's (per layer) and the AUROC of its adapter disagreement as an OOD detector.

    Args:
        runs: method -> one :class:`RunResult` per seed (:func:`train_all`).
    """
    held = _HeldOut.of(prep)
    per_seed: dict[str, list[dict]] = {}
    predictions: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    levi_adapters: list[tuple[np.ndarray, np.ndarray]] = []  # [n_test, A], [n_ood, A]
    for method, results in runs.items():
        for r in results:
            a_test, a_ood = (run_adapters(r, device, cfg, rows) for rows in (held.test, held.ood))
            p_test, p_ood = predict_ratings(r.head, a_test), predict_ratings(r.head, a_ood)
            predictions.setdefault(method, []).append((p_test, p_ood))
            scores = held.score(p_test, p_ood)
            if method == "levi":
                levi_adapters.append((a_test, a_ood))
                scores["per_layer"] = evaluate.score_layers(
                    a_test,
                    held.y_test,
                    a_ood,
                    held.y_ood,
                    r.head.layers,
                    (r.head.rating_min, r.head.rating_max),
                )
            per_seed.setdefault(method, []).append(scores)
    auroc = None
    if levi_adapters:
        auroc = evaluate.mean_std(
            [
                evaluate.auroc(evaluate.disagreement(a), evaluate.disagreement(b))
                for a, b in levi_adapters
            ]
        )
    return TrainedScores(per_seed, predictions, auroc)


def evaluate_ensembles(
    prep: Prepared, cfg: TrainConfig, predictions: dict[str, list[tuple[np.ndarray, np.ndarray]]]
) -> dict[str, list[dict]]:
    """Scores of the ensembles in ``cfg.methods``: ``mlp_lp_ensemble``, per seed the mean of
    the ``mlp`` and ``linear_probe`` ratings, clipped to the rating scale.

    Args:
        predictions: :attr:`TrainedScores.predictions` (``mlp`` and ``linear_probe`` needed,
            one entry per seed each).

    Raises:
        KeyError: an ensemble is asked for but a member was not trained.
        ValueError: the members have different numbers of seeds.
    """
    held = _HeldOut.of(prep)
    per_seed: dict[str, list[dict]] = {}
    if "mlp_lp_ensemble" in cfg.methods:
        lo, hi = prep.spec.rating_scale.bounds
        per_seed["mlp_lp_ensemble"] = [
            held.score(np.clip((m[0] + lp[0]) / 2, lo, hi), np.clip((m[1] + lp[1]) / 2, lo, hi))
            for m, lp in zip(predictions["mlp"], predictions["linear_probe"], strict=True)
        ]
    return per_seed


def evaluate_all(
    prep: Prepared, cfg: TrainConfig, runs: dict[str, list[RunResult]], device: DeviceData
) -> tuple[dict, dict]:
    """Scores of every method: :func:`evaluate_baselines`, :func:`evaluate_trained` and
    :func:`evaluate_ensembles` together.

    Returns:
        ``(methods, extras)``: ``methods`` maps each of ``cfg.methods`` that was scored to
        its mean/std over seeds (:func:`evaluate.aggregate`), for report.json; ``extras``
        holds ``per_seed`` (method -> score dicts per seed, LEVI's with ``per_layer``) and,
        with LEVI runs, ``auroc`` (mean/std of the disagreement AUROC).
    """
    per_seed = evaluate_baselines(prep, cfg)
    trained = evaluate_trained(prep, cfg, runs, device)
    per_seed |= trained.per_seed
    per_seed |= evaluate_ensembles(prep, cfg, trained.predictions)
    extras: dict[str, Any] = {"per_seed": per_seed}
    if trained.auroc is not None:
        extras["auroc"] = trained.auroc
    methods = {m: evaluate.aggregate(per_seed[m]) for m in cfg.methods if m in per_seed}
    return methods, extras
