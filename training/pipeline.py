"""The whole offline run: data -> split -> features -> encode -> train -> evaluate -> export.

``run_pipeline(TrainConfig.default(), output_dir="artifacts")`` is what ``make train`` does.
Each stage is a function of the previous stages' outputs. Everything dataset-specific comes
from the dataset spec (``cfg.dataset``: a preset or a spec file); the spec, the dataset and
the backbone can be passed in (tests use small generated data and a tiny random backbone).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from model.batching import encode_texts
from model.features import FeatureSpec, fit_feature_spec
from model.head import HeadConfig
from model.templates import ViewSet
from training import baselines, evaluate, progressive, report
from training.config import TRAINED_METHODS, TrainConfig
from training.precompute import ViewActivations, precompute
from training.spec import DatasetSpec, SpecError, load_spec
from training.train import (
    RunResult,
    TrainTables,
    device_tables,
    head_config,
    make_mesh,
    predict_adapters,
    predict_ratings,
    train_method,
)

PARTS = ("train", "val", "test", "ood")
QUANTILES = (0.5, 0.9, 0.99)
HIST_BINS = 40


@dataclass(frozen=True)
class Prepared:
    """Data, features and activations, aligned on one table of pairs.

    Attributes:
        pairs: ``user_id, item_id, rating, timestamp`` of train, val, test and OOD,
            concatenated (timestamp 0 when the spec declares none).
        rows: part name -> int32 row positions in ``pairs``.
        ood_groups: OOD group (a value of the split column, a month, ...) -> row positions
            in ``pairs`` (OOD rows of that group).
    """

    spec: DatasetSpec
    dataset: Any
    pairs: pd.DataFrame
    rows: dict[str, np.ndarray]
    ood_groups: dict[str, np.ndarray]
    features: FeatureSpec
    views: ViewSet
    tables: TrainTables | None = None
    activations: ViewActivations | None = None


@dataclass(frozen=True)
class DeviceData:
    """The head's tables on the devices (``training.train.device_tables``) and their mesh."""

    tables: dict[str, Any]
    mesh: Any  # jax.sharding.Mesh


@dataclass(frozen=True)
class PipelineResult:
    report: dict
    report_dir: Path
    artifact: Path | None
    timings: dict[str, float]
    runs: dict[str, list[RunResult]]


def prepare_data(
    cfg: TrainConfig,
    dataset=None,
    spec: DatasetSpec | None = None,
    log: Callable[[str], None] = print,
) -> Prepared:
    """Read the spec and the data (unless given), add the registered users and items
    (``cfg.catalog``) and the logged feedback (``cfg.feedback``), split, and fit the features
    on ID train."""
    spec = spec or load_spec(cfg.dataset)
    if dataset is None:
        from training.data import load_spec_dataset

        dataset = load_spec_dataset(spec, cfg.data_path, cfg.reader)
    split_spec = spec.split
    if cfg.catalog:  # first: a registered entity's record wins over its feedback's fields
        from training.data.catalog import add_catalog

        dataset, catalog_summary = add_catalog(dataset, spec, Path(cfg.catalog))
        log(str(catalog_summary))
    if cfg.feedback:
        from training.data.feedback import add_feedback

        dataset, summary = add_feedback(dataset, spec, Path(cfg.feedback))
        log(str(summary))
        if split_spec.expect and summary.added:  # the data set's own counts no longer hold
            log("split.expect not checked: the feedback events changed the counts")
            split_spec = split_spec.model_copy(update={"expect": None})
    from training.split import make_split

    try:
        split = make_split(dataset, split_spec, cfg.split_seed)
    except ValueError as e:  # the data do not fit the spec's [split]: name the file
        raise SpecError(f"{spec.source or spec.name}: [split]: {e}") from None
    parts = [getattr(split, p) for p in PARTS]
    pairs = pd.concat(parts, ignore_index=True)[["user_id", "item_id", "rating", "timestamp"]]
    pairs = pairs.astype({"user_id": str, "item_id": str})
    offsets = np.cumsum([0] + [len(p) for p in parts])
    rows = {p: np.arange(offsets[k], offsets[k + 1], dtype=np.int32) for k, p in enumerate(PARTS)}
    ood_groups = {
        g: (offsets[3] + np.asarray(r, dtype=np.int64)).astype(np.int32)
        for g, r in split.ood_groups.items()
    }
    train = split.train
    users = dataset.users[dataset.users["user_id"].astype(str).isin(set(train["user_id"]))]
    items = dataset.items[dataset.items["item_id"].astype(str).isin(set(train["item_id"]))]
    features = fit_feature_spec(
        spec.column_decls(), users.to_dict("records"), items.to_dict("records")
    )
    return Prepared(spec, dataset, pairs, rows, ood_groups, features, spec.views())


def encode_views(
    prep: Prepared, backbone, cfg: TrainConfig, *, cache: Path | None, progress: bool
) -> Prepared:
    """Activations of every view (cached) and the head's tables."""
    ds = prep.dataset
    acts = precompute(
        backbone,
        prep.views,
        ds.users,
        ds.items,
        prep.pairs[["user_id", "item_id"]],
        cache=cache,
        batch_size=cfg.encode_batch_size,
        progress=progress,
    )
    user_pos = pd.Index(ds.users["user_id"].astype(str))
    item_pos = pd.Index(ds.items["item_id"].astype(str))
    user_records, item_records = ds.users.to_dict("records"), ds.items.to_dict("records")
    tables = TrainTables(
        user_ids=prep.features.encode_entity("user", user_records),
        item_ids=prep.features.encode_entity("item", item_records),
        user_multi_hot=prep.features.encode_multi_hot("user", user_records),
        multi_hot=prep.features.encode_multi_hot("item", item_records),
        views=acts.matrices,
        pair_user=user_pos.get_indexer(prep.pairs["user_id"]).astype(np.int32),
        pair_item=item_pos.get_indexer(prep.pairs["item_id"]).astype(np.int32),
        pair_text=acts.index,
        rating=prep.pairs["rating"].to_numpy(np.float32),
    )
    return dataclasses.replace(prep, tables=tables, activations=acts)


def _head_for(method: str, cfg: TrainConfig, prep: Prepared, n_layers: int) -> HeadConfig:
    mu = float(prep.tables.rating[prep.rows["train"]].mean())
    id_features = (prep.features.id_column("user"), prep.features.id_column("item"))
    return head_config(
        method,
        cfg,
        vocab_sizes=prep.features.vocab_sizes,
        n_multi_hot=prep.features.n_multi_hot,
        n_layers=n_layers,
        rating_mean=mu,
        rating_range=rating_range(prep.spec),
        id_features=id_features,
    )


def rating_range(spec: DatasetSpec) -> tuple[float, float]:
    return float(spec.rating_scale.min), float(spec.rating_scale.max)


def methods_to_train(cfg: TrainConfig) -> list[str]:
    wanted = set(cfg.methods)
    if "mlp_lp_ensemble" in wanted:
        wanted |= {"mlp", "linear_probe"}
    return [m for m in TRAINED_METHODS if m in wanted]


def train_all(
    prep: Prepared,
    cfg: TrainConfig,
    n_layers: int,
    *,
    checkpoint_root: Path | None,
    progress: bool,
    log: Callable[[str], None],
    mesh=None,
) -> tuple[dict[str, float], dict[str, list[RunResult]], Any]:
    """Every trained method over the seeds. Returns ``(chosen lrs, runs, device data)``."""
    mesh = mesh or make_mesh()
    n_train = len(prep.rows["train"])
    if n_train < cfg.batch_size:  # a small catalog: one batch is the whole training set
        smaller = max(mesh.size, n_train // mesh.size * mesh.size)
        log(f"{n_train} training pairs: batch size {cfg.batch_size} -> {smaller}")
        cfg = dataclasses.replace(cfg, batch_size=smaller)
    data = device_tables(prep.tables, mesh)
    signature = prep.tables.signature()
    lrs, runs = {}, {}
    for method in methods_to_train(cfg):
        log(f"training {method} ({len(cfg.lrs)} learning rates, seeds {list(cfg.seeds)})")
        lrs[method], runs[method] = train_method(
            method,
            _head_for(method, cfg, prep, n_layers),
            cfg,
            data,
            prep.rows["train"],
            prep.rows["val"],
            mesh=mesh,
            data_signature=signature,
            checkpoint_root=checkpoint_root,
            progress=progress,
            log=log,
        )
    return lrs, runs, DeviceData(data, mesh)


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
            rating_range=rating_range(prep.spec),
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
            a_test, a_ood = (_adapters(r, device, cfg, rows) for rows in (held.test, held.ood))
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
        lo, hi = rating_range(prep.spec)
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


def reference_stats(
    prep: Prepared, run: RunResult, device: DeviceData, cfg: TrainConfig
) -> dict[str, np.ndarray]:
    """Drift reference over the training pairs: activation moments, predictions, disagreement.

    Returns:
        ``activation_mean``, ``activation_var`` float32 ``[n_views, n_layers, d]``;
        ``prediction_hist`` (fractions, ``[HIST_BINS]``) over ``prediction_edges``
        ``[HIST_BINS + 1]``; ``disagreement_quantiles`` at ``QUANTILES``.
    """
    train = prep.rows["train"]
    acts = prep.activations
    means, variances = [], []
    for v, matrix in enumerate(acts.matrices):
        counts = np.bincount(acts.index[train, v], minlength=len(matrix)).astype(np.float64)
        total = counts.sum()
        s1 = np.zeros(matrix.shape[1:]), np.zeros(matrix.shape[1:])
        for start in range(0, len(matrix), 8192):  # chunks: pair views have one row per rating
            block = matrix[start : start + 8192].astype(np.float64)  # [chunk, n_layers, d]
            w = counts[start : start + 8192, None, None]
            s1[0][...] += (w * block).sum(0)
            s1[1][...] += (w * block**2).sum(0)
        mean = s1[0] / total
        means.append(mean)
        variances.append(np.maximum(s1[1] / total - mean**2, 0.0))
    adapters = _adapters(run, device, cfg, train)
    head = run.head
    edges = np.linspace(head.rating_min, head.rating_max, HIST_BINS + 1)
    hist, _ = np.histogram(predict_ratings(head, adapters), bins=edges)
    return {
        "activation_mean": np.stack(means).astype(np.float32),
        "activation_var": np.stack(variances).astype(np.float32),
        "prediction_hist": (hist / max(1, hist.sum())).astype(np.float32),
        "prediction_edges": edges.astype(np.float32),
        "disagreement_quantiles": np.quantile(evaluate.disagreement(adapters), QUANTILES).astype(
            np.float32
        ),
    }


def _adapters(run: RunResult, device: DeviceData, cfg: TrainConfig, rows: np.ndarray) -> np.ndarray:
    """Adapter ratings ``[len(rows), A]`` of one trained run on pair ``rows``."""
    tables, mesh = device.tables, device.mesh
    return predict_adapters(
        run.head, run.params, tables, rows, mesh=mesh, batch_size=cfg.eval_batch_size
    )


def _predict(run: RunResult, device: DeviceData, cfg: TrainConfig, rows: np.ndarray) -> np.ndarray:
    """Ratings ``[len(rows)]`` of one trained run on pair ``rows``."""
    return predict_ratings(run.head, _adapters(run, device, cfg, rows))


def _items_hidden(prep: Prepared, device: DeviceData) -> dict[str, Any] | None:
    """The device tables with every item's id OOV (0), as a cold-start item is served (its
    other fields kept; the trainer's item-OOV dropout hides the same column); None when the
    item id is no model input. The other tables are shared, not copied."""
    item_columns = [c.name for c in prep.features.categorical if c.entity == "item"]
    if "item_id" not in item_columns:
        return None
    hidden = prep.tables.item_ids.copy()
    hidden[:, item_columns.index("item_id")] = 0
    sharding = device.tables["item_ids"].sharding
    return {**device.tables, "item_ids": jax.device_put(hidden, sharding)}


def model_version(cfg: TrainConfig, fingerprint: str) -> str:
    digest = hashlib.sha256((cfg.digest() + fingerprint).encode()).hexdigest()[:8]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{digest}"


def run_pipeline(
    cfg: TrainConfig,
    *,
    output_dir: str | Path = "artifacts",
    dataset=None,
    spec: DatasetSpec | None = None,
    backbone=None,
    cache: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PipelineResult:
    """Run every stage, write the report and (``cfg.export``) the artifact.

    Args:
        dataset, spec: given instead of reading ``cfg.dataset`` (tests).
    """
    output_dir = Path(output_dir)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        timings[stage] = time.perf_counter() - clock
        log(f"[{stage}] {timings[stage]:.1f}s")
        clock = time.perf_counter()

    prep = prepare_data(cfg, dataset, spec, log=log)
    sizes = {p: len(r) for p, r in prep.rows.items()}
    log(f"data: {prep.dataset!r}; split {sizes}; {len(prep.ood_groups)} OOD groups")
    lap("data")

    if backbone is None:
        from model.backbone import load_backbone

        backbone = load_backbone(cfg.backbone, cfg.checkpoint, cfg.max_length)
    prep = encode_views(prep, backbone, cfg, cache=cache, progress=progress)
    log(f"encode: {prep.activations.n_encoded} texts encoded (the rest from the cache)")
    lap("encode")

    lrs, runs, device = train_all(
        prep,
        cfg,
        backbone.n_layers,
        checkpoint_root=output_dir / ".checkpoints",
        progress=progress,
        log=log,
    )
    lap("train")

    methods, extras = evaluate_all(prep, cfg, runs, device)
    exported_run = min(runs["levi"], key=lambda r: r.val_rmse) if "levi" in runs else None
    version = model_version(cfg, backbone.fingerprint)
    shrinkage, online = None, None
    if exported_run is not None and len(prep.rows["val"]):
        tables = _items_hidden(prep, device)
        hidden = None if tables is None else DeviceData(tables, device.mesh)
        shrinkage, online = progressive.fit_and_evaluate(
            prep,
            lambda rows: _predict(exported_run, device, cfg, rows),
            None if hidden is None else lambda rows: _predict(exported_run, hidden, cfg, rows),
        )
        log(
            f"online corrections: k_item {shrinkage.k_item:g}, k_user {shrinkage.k_user:g}, "
            f"k_item_oov {shrinkage.k_item_oov}; "
            + "; ".join(
                f"{p} progressive RMSE {online[p]['model']:.4f} -> {online[p]['corrected']:.4f}"
                for p in ("test", "ood")
                if p in online
            )
        )
    lap("evaluate")

    artifact, exported, exported_source = None, None, None
    if exported_run is not None:
        k = runs["levi"].index(exported_run)
        live = extras["per_seed"]["levi"][k]
        exported = {"id_test_rmse": live["id_rmse"], "ood_rmse": live["ood_rmse"]}
        exported_source = (
            f"LEVI seed {exported_run.seed}, the best on ID validation; scored with the live "
            "parameters (no artifact exported)"
        )
        if cfg.export:
            artifact = export(
                prep, cfg, exported_run, device, backbone, version, output_dir, lrs, online
            )
            exported = score_exported(artifact, prep, progress=progress)
            exported_source = (
                f"LEVI seed {exported_run.seed}, the best on ID validation, scored end to end "
                f"through the exported artifact ({artifact.name}: its backbone and head "
                f"functions, tokenizer and feature tables); live parameters gave ID "
                f"{live['id_rmse']:.4f}, OOD {live['ood_rmse']:.4f}"
            )
            lap("export")
    split_seed = prep.spec.split.seed if cfg.split_seed is None else cfg.split_seed
    doc = report.build_report(
        dataset=prep.spec.name,
        split={
            "name": prep.spec.split.kind,
            "column": prep.spec.split.column,
            "seed": split_seed,
            "sizes": sizes,
            "ood_groups": list(prep.ood_groups),
        },
        backbone={
            "name": backbone.name,
            "fingerprint": backbone.fingerprint,
            "n_layers": backbone.n_layers,
            "hidden_size": backbone.hidden_size,
        },
        seeds=list(cfg.seeds),
        methods=methods,
        exported=exported,
        online_corrections=online,
    )
    notes = {
        "lrs": lrs,
        "auroc": extras.get("auroc"),
        "timings": timings,
        "text": report.training_notes(cfg, lrs, split_seed),
        "exported_source": exported_source,
    }
    report_dir = report.write_report(doc, notes, output_dir / "reports" / version)
    if artifact is not None:
        from model.artifact import attach_report

        attach_report(artifact, report_dir)
    return PipelineResult(doc, report_dir, artifact, timings, runs)


def export(
    prep: Prepared,
    cfg: TrainConfig,
    run: RunResult,
    device: DeviceData,
    backbone,
    version: str,
    output_dir: Path,
    lrs: dict[str, float],
    corrections: dict | None = None,
) -> Path:
    """Write the artifact (the report is attached after it has been scored).

    Args:
        corrections: the online corrections' report section (its ``k_item``, ``k_user`` and
            ``fitted_on`` go to the manifest).
    """
    from model import artifact as artifact_mod

    reference = reference_stats(prep, run, device, cfg)
    ds = prep.dataset
    return artifact_mod.export_artifact(
        output_dir,
        model_version=version,
        backbone=backbone,
        head_config=run.head,
        head_params=jax.device_get(run.params),
        features=prep.features,
        views=prep.views,
        users=ds.users,
        items=ds.items,
        reference=reference,
        dataset=prep.spec.summary(),
        training_config={
            **cfg.to_json(),
            "chosen_lrs": lrs,
            "exported_seed": run.seed,
            "val_rmse": run.val_rmse,
        },
        corrections=(
            {k: v for k, v in corrections.items() if k.startswith("k_") or k == "fitted_on"}
            if corrections
            else None
        ),
    )


def score_exported(path: Path, prep: Prepared, *, progress: bool = False) -> dict[str, float]:
    """ID test and OOD RMSE of the exported model, end to end through ``load_artifact``.

    Texts are rendered with the artifact's views, tokenized with its tokenizer, encoded by its
    exported backbone and scored by its exported head, so the numbers are those of the exact
    model a service loads.
    """
    from model.artifact import load_artifact

    art = load_artifact(path)
    ds = prep.dataset
    users = ds.users.assign(user_id=ds.users["user_id"].astype(str)).set_index("user_id")
    items = ds.items.assign(item_id=ds.items["item_id"].astype(str)).set_index("item_id")
    out = {}
    for part, key in (("test", "id_test_rmse"), ("ood", "ood_rmse")):
        pairs = prep.pairs.iloc[prep.rows[part]]
        if not len(pairs):
            out[key] = float("nan")
            continue
        u = [{"user_id": i, **users.loc[i].to_dict()} for i in pairs["user_id"]]
        it = [{"item_id": i, **items.loc[i].to_dict()} for i in pairs["item_id"]]
        texts = [art.views.render(a, b) for a, b in zip(u, it, strict=True)]  # [n][n_views]
        unique = sorted({t for row in texts for t in row})
        position = {t: j for j, t in enumerate(unique)}
        pooled = _encode_with(art, unique, progress=progress)  # [n_unique, n_layers, d]
        acts = pooled[np.array([[position[t] for t in row] for row in texts])]
        inputs = art.features.encode(u, it)
        ratings = np.concatenate(
            [
                art.score(
                    inputs["ids"][s : s + 4096],
                    inputs["multi_hot"][s : s + 4096],
                    acts[s : s + 4096],
                )[1]
                for s in range(0, len(pairs), 4096)
            ]
        )
        out[key] = evaluate.rmse(ratings, pairs["rating"].to_numpy(np.float32))
    return out


def _encode_with(art, texts: list[str], *, progress: bool, batch_size: int = 64) -> np.ndarray:
    """Pooled activations of ``texts`` from the artifact's exported backbone, padded to the
    manifest's length buckets: the shapes the service compiles and calls."""
    return encode_texts(
        texts,
        art.tokenizer,
        art.encode,
        length_buckets=tuple(art.manifest["backbone"]["length_buckets"]),
        row_buckets=(batch_size,),
        out_shape=art.reference.activation_mean.shape[1:],
        progress=progress,
        desc="score exported",
    )
