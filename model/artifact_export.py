"""Writing an artifact (the training side): the exported functions, parameters, tables,
tokenizer and manifest, checked and renamed into place (layout: :mod:`model.artifact_layout`).

A version directory is written under a temporary name and renamed into place, and
``latest`` is replaced atomically, so a reader never sees a half-written artifact. The
version directory is 0755 and every file gets the mode an ordinary file gets under the
process umask (the safetensors files too, see ``model.safetensors_file``), so a service
running as another user can read a mounted artifact.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import export

from model.decomposed_layout import Layout, decomposable, part_widths
from model.features import FeatureSpec
from model.head_config import HeadConfig
from model.levi import LeviModel
from model.reference import ReferenceStats
from model.safetensors_file import save_tensors
from model.templates import ViewSet
from model.tokenizer import LENGTH_BUCKETS, buckets_up_to

if TYPE_CHECKING:
    from model.backbone import Backbone

from model.artifact_layout import (
    ACTIVATION_DTYPE,
    BACKBONE_EXPORT,
    BACKBONE_PARAMS,
    FEATURES,
    FORMAT_VERSION,
    HEAD_EXPORT,
    HEAD_PARAMS,
    ITEMS,
    LATEST,
    MANIFEST,
    PAIR_EXPORT,
    PLOTS_DIR,
    REFERENCE,
    REPORT_FILES,
    SIDE_EXPORTS,
    TOKENIZER_FILES,
    USERS,
    VERSION_RE,
    flatten_params,
    relative_files,
    sha256_file,
    unflatten_params,
)

# -- the exported functions -----------------------------------------------------------------


def _export_both(
    backbone_fn: Callable,
    backbone_args: tuple,
    head_fn: Callable,
    head_args: tuple,
    platforms: tuple[str, ...],
) -> tuple[export.Exported, export.Exported, tuple[str, ...], str | None]:
    """Export both functions for ``platforms``, falling back to cpu only if lowering fails."""

    def run(plats: tuple[str, ...]) -> tuple[export.Exported, export.Exported]:
        return (
            export.export(jax.jit(backbone_fn), platforms=plats)(*backbone_args),
            export.export(jax.jit(head_fn), platforms=plats)(*head_args),
        )

    try:
        return *run(platforms), platforms, None
    except Exception as e:  # lowering errors come as several exception types
        if "cpu" not in platforms or platforms == ("cpu",):
            raise
        note = f"lowering for {list(platforms)} failed ({type(e).__name__}: {e}); cpu only"
        warnings.warn(f"artifact export: {note}", stacklevel=3)
        return *run(("cpu",)), ("cpu",), note


def _export_decomposed(
    cfg: HeadConfig,
    layout: Layout,
    params: Any,
    acts: tuple[int, int],
    platforms: tuple[str, ...],
) -> list[tuple[str, export.Exported]]:
    """The side and pair functions of :mod:`model.decomposed`, symbolic in the batch."""
    (b,) = export.symbolic_shape("b")
    n_layers, d = acts
    n_ids, n_mh = len(cfg.vocab_sizes), cfg.n_multi_hot
    sizes = {
        "user": (layout.n_user_ids, layout.n_user_multi_hot),
        "item": (n_ids - layout.n_user_ids, n_mh - layout.n_user_multi_hot),
    }
    out = []
    for side, (f, g) in sizes.items():
        n_views = layout.view_sides.count(side)
        args = (
            params,
            jax.ShapeDtypeStruct((b, f), jnp.int32),
            jax.ShapeDtypeStruct((b, g), jnp.float32),
            jax.ShapeDtypeStruct((b, n_views, n_layers, d), jnp.float32),
        )
        fn = jax.jit(LeviModel(cfg).side_function(layout, side))
        out.append((SIDE_EXPORTS[side], export.export(fn, platforms=platforms)(*args)))
    parts = {
        k: jax.ShapeDtypeStruct((b, *shape), jnp.float32) for k, shape in part_widths(cfg).items()
    }
    pair = jax.jit(LeviModel(cfg).pair_function())
    out.append((PAIR_EXPORT, export.export(pair, platforms=platforms)(params, parts, parts)))
    return out


# -- export ---------------------------------------------------------------------------------


def export_artifact(
    out_root: str | Path,
    *,
    model_version: str,
    backbone: Backbone,
    head_config: HeadConfig,
    head_params: Mapping[str, Any],
    features: FeatureSpec,
    views: ViewSet,
    users: pd.DataFrame,
    items: pd.DataFrame,
    reference: ReferenceStats | Mapping[str, np.ndarray],
    dataset: Mapping[str, Any] | None = None,
    report_dir: str | Path | None = None,
    training_config: Mapping[str, Any] | Any | None = None,
    platforms: Sequence[str] = ("cpu", "cuda"),
    corrections: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_root/<model_version>/`` (layout in the module docstring), point ``latest`` at it.

    Args:
        out_root: the artifacts directory (created if needed).
        model_version: the version directory name (letters, digits, ``.``, ``_``, ``-``).
        backbone: the frozen text encoder (``model.backbone.Backbone``).
        head_config, head_params: the trained LEVI head (``LeviHead(head_config)`` variables).
        features, views: the feature spec and text views the head was trained with.
        users, items: the entity tables (canonical schema of ``training.data``).
        reference: training reference statistics, or their ``to_dict()`` form.
        dataset: the resolved dataset spec (``training.spec.DatasetSpec.summary``): name,
            rating scale, declared columns and types, split; recorded in the manifest.
        report_dir: a directory holding report.json, report.md and plots/ to copy along.
        training_config: a JSON-able dict (or dataclass) recorded in the manifest.
        platforms: jax.export lowering platforms; if lowering for all of them fails and cpu is
            among them, cpu alone is exported and the manifest says so (``platforms_note``).
        corrections: the online corrections' fitted shrinkage (``k_item``, ``k_user`` and how
            they were fitted; ``model.corrections``), recorded in the manifest.

    Returns:
        The new version directory.

    Raises:
        ValueError: a bad ``model_version`` or inconsistent inputs.
        FileExistsError: the version directory already exists.
    """
    if not VERSION_RE.fullmatch(model_version) or model_version == LATEST:
        raise ValueError(
            f"model_version {model_version!r} is not a valid directory name: use letters, "
            f"digits, '.', '_' and '-' (not starting with '.'), and not {LATEST!r}"
        )
    if not isinstance(reference, ReferenceStats):
        reference = ReferenceStats.from_dict(reference)
    expected = (views.n_views, backbone.n_layers, backbone.hidden_size)
    if reference.activation_mean.shape != expected:
        raise ValueError(
            f"reference activation_mean is {reference.activation_mean.shape}, expected "
            f"[n_views, n_layers, d] = {expected} for these views and backbone"
        )
    if tuple(features.vocab_sizes) != tuple(head_config.vocab_sizes):
        raise ValueError(
            f"features vocab sizes {features.vocab_sizes} differ from the head's "
            f"{head_config.vocab_sizes}; export the FeatureSpec the head was trained with"
        )
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / model_version
    if final.exists():
        raise FileExistsError(f"{final} already exists; choose a new model_version")

    tmp = Path(tempfile.mkdtemp(prefix=f".{model_version}.", suffix=".tmp", dir=out_root))
    try:
        manifest = _write_contents(
            tmp,
            model_version=model_version,
            backbone=backbone,
            head_config=head_config,
            head_params=head_params,
            features=features,
            views=views,
            users=users,
            items=items,
            reference=reference,
            dataset=dataset,
            report_dir=Path(report_dir) if report_dir is not None else None,
            training_config=training_config,
            platforms=tuple(platforms),
        )
        manifest["corrections"] = _jsonable(dict(corrections)) if corrections else None
        manifest["files"] = {
            rel: sha256_file(tmp / rel) for rel in sorted(relative_files(tmp)) if rel != MANIFEST
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a service user must be able to read it
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point_latest(out_root, model_version)
    return final


def attach_report(path: str | Path, report_dir: str | Path) -> None:
    """Copy report.json, report.md and plots/ into an exported artifact and re-seal it.

    The trainer scores the *exported* model through :func:`load_artifact` before it writes
    the report, so the report is attached after export: the copied files get their sha256 in
    the manifest, which is replaced atomically.
    """
    root = Path(path).resolve()
    manifest_path = root / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    _copy_report(Path(report_dir), root)
    files = dict(manifest["files"])
    for rel in relative_files(root):
        if rel in REPORT_FILES or rel.startswith(PLOTS_DIR + "/"):
            files[rel] = sha256_file(root / rel)
    manifest["files"] = dict(sorted(files.items()))
    tmp = root / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, manifest_path)


def _write_contents(
    tmp: Path,
    *,
    model_version: str,
    backbone: Backbone,
    head_config: HeadConfig,
    head_params: Mapping[str, Any],
    features: FeatureSpec,
    views: ViewSet,
    users: pd.DataFrame,
    items: pd.DataFrame,
    reference: ReferenceStats,
    dataset: Mapping[str, Any] | None,
    report_dir: Path | None,
    training_config: Any,
    platforms: tuple[str, ...],
) -> dict[str, Any]:
    """Write every file but the manifest into ``tmp``; return the manifest without ``files``."""
    # Plain nested dicts, so the exported in_tree is exactly what the loader rebuilds.
    bb_params = unflatten_params(flatten_params(backbone.params))
    hd_params = unflatten_params(flatten_params(head_params))
    b, length = export.symbolic_shape("b, l")
    tokens = jax.ShapeDtypeStruct((b, length), jnp.int32)
    n_views, n_layers, d = views.n_views, backbone.n_layers, backbone.hidden_size
    head_args = (
        hd_params,
        jax.ShapeDtypeStruct((b, len(head_config.vocab_sizes)), jnp.int32),
        jax.ShapeDtypeStruct((b, head_config.n_multi_hot), jnp.float32),
        jax.ShapeDtypeStruct((b, n_views, n_layers, d), jnp.float32),
    )
    bb_exp, hd_exp, done, note = _export_both(
        backbone.pooled_fn,
        (bb_params, tokens, tokens),
        LeviModel(head_config).predict_batch,
        head_args,
        platforms,
    )
    (tmp / BACKBONE_EXPORT).write_bytes(bb_exp.serialize())
    (tmp / HEAD_EXPORT).write_bytes(hd_exp.serialize())
    decomposed = None
    if decomposable([v.entity for v in views.views]):
        layout = Layout(
            n_user_ids=sum(c.entity == "user" for c in features.categorical),
            n_user_multi_hot=sum(
                c.size for c in features.columns if c.entity == "user" and c.is_multi_hot_input
            ),
            view_sides=tuple(v.entity for v in views.views),
        )
        for name, exp in _export_decomposed(head_config, layout, hd_params, (n_layers, d), done):
            (tmp / name).write_bytes(exp.serialize())
        decomposed = {"layout": layout.to_json()}
    _save_params(flatten_params(bb_params), tmp / BACKBONE_PARAMS)
    _save_params(flatten_params(hd_params), tmp / HEAD_PARAMS)

    tok_src = Path(backbone.tokenizer.path)
    tok_name = TOKENIZER_FILES[0] if tok_src.suffix == ".json" else TOKENIZER_FILES[1]
    shutil.copyfile(tok_src, tmp / tok_name)
    (tmp / FEATURES).write_text(json.dumps(features.to_json(), indent=1) + "\n")
    _table_for_parquet(users).to_parquet(tmp / USERS, index=False)
    _table_for_parquet(items).to_parquet(tmp / ITEMS, index=False)
    reference.save(tmp / REFERENCE)
    if report_dir is not None:
        _copy_report(report_dir, tmp)

    max_length = int(backbone.max_length)
    buckets = getattr(backbone, "buckets", LENGTH_BUCKETS)
    return {
        "format_version": FORMAT_VERSION,
        "model_version": model_version,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backbone": {
            "name": backbone.name,
            "family": backbone.family,
            "fingerprint": backbone.fingerprint,
            "n_layers": n_layers,
            "hidden_size": d,
            "max_length": max_length,
            "length_buckets": list(buckets_up_to(max_length, buckets)),
        },
        "tokenizer": tok_name,
        "views": views.to_json(),
        "head": head_config.to_json(),
        "decomposed": decomposed,
        "features": FEATURES,
        "activation_dtype": ACTIVATION_DTYPE,
        "rating_range": [float(head_config.rating_min), float(head_config.rating_max)],
        "dataset": _jsonable(dict(dataset)) if dataset is not None else None,
        "platforms": list(done),
        "platforms_requested": list(platforms),
        "platforms_note": note,
        "libraries": _library_versions(),
        "ood_score": {
            "definition": "std over adapter ratings / training median of that std",
            "training_median": 1.0,
            "disagreement_median": reference.disagreement_median,
        },
        "training_config": _jsonable(training_config),
    }


def _save_params(flat: dict[str, np.ndarray], path: Path) -> None:
    # Not safetensors' save_file directly: it writes 0600 files, which a service running as
    # another user cannot read.
    save_tensors(flat, path)


def _table_for_parquet(frame: pd.DataFrame) -> pd.DataFrame:
    # Tuple cells (genres) are stored as parquet lists; the loader turns them back into tuples.
    out = frame.reset_index(drop=True).copy()
    for col in out.columns:
        if out[col].dtype == object and any(isinstance(v, tuple) for v in out[col]):
            out[col] = [list(v) if isinstance(v, tuple) else v for v in out[col]]
    return out


def _copy_report(report_dir: Path, dest: Path) -> None:
    if not report_dir.is_dir():
        raise FileNotFoundError(f"report_dir {report_dir} is not a directory")
    for name in REPORT_FILES:
        if (report_dir / name).is_file():
            shutil.copyfile(report_dir / name, dest / name)
    plots = report_dir / PLOTS_DIR
    if plots.is_dir():
        for src in sorted(plots.rglob("*")):
            if src.is_file():
                target = dest / PLOTS_DIR / src.relative_to(plots)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)


def _point_latest(out_root: Path, model_version: str) -> None:
    link = out_root / LATEST
    if link.exists() and not link.is_symlink():
        raise FileExistsError(
            f"{link} exists and is not a symlink; remove it so it can point at the newest version"
        )
    tmp_link = out_root / f".{LATEST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    os.symlink(model_version, tmp_link)  # relative: the artifacts directory can be moved
    os.replace(tmp_link, link)


def _library_versions() -> dict[str, str]:
    import flax
    import jaxlib

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
    }


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, set, frozenset)):
        return str(value) if isinstance(value, Path) else sorted(value)
    raise TypeError(f"training_config value {value!r} ({type(value).__name__}) is not JSON-able")
