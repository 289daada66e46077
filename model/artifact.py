"""The model artifact: export (training side) and checked load (serving side).

Layout of ``artifacts/<model_version>/``::

    manifest.json            format_version, model_version, created_at, backbone {name, family,
                             fingerprint, n_layers, hidden_size, max_length, length_buckets},
                             tokenizer (file name), views (ViewSet.to_json), head
                             (HeadConfig.to_json), features (file name), activation_dtype,
                             rating_range, dataset (the resolved dataset spec),
                             platforms (+ platforms_requested, platforms_note),
                             libraries {jax, jaxlib, flax, numpy}, ood_score (calibration),
                             training_config, files {relative path: sha256 of every other file}
    backbone.jaxexport       jax.export: (params, input_ids[b,l] int32, mask[b,l] int32)
                             -> pooled [b, n_layers, d] float32; symbolic b and l; cpu + cuda
    backbone.safetensors     its parameters, flattened "a/b/c" keys
    head.jaxexport           jax.export: (params, ids[b,F] int32, multi_hot[b,G] float32,
                             activations[b, n_views, n_layers, d] float32)
                             -> (adapters[b, A] float32, rating[b] float32); symbolic b
    head.safetensors
    user_side.jaxexport, item_side.jaxexport, pair.jaxexport
                             the first-layer decomposition of the head (factored views only,
                             model.decomposed): (params, ids[b,F_side], multi_hot[b,G_side],
                             views[b,V_side,n_layers,d]) -> parts; (params, user parts, item
                             parts) -> (adapters[b, A], rating[b]); manifest "decomposed"
                             holds the layout
    tokenizer.json | spiece.model
    features.json            FeatureSpec.to_json (typed columns, vocabularies, bucket edges)
    users.parquet, items.parquet   entity tables (canonical schema of training.data)
    reference.safetensors    drift reference statistics (see model.reference.ReferenceStats)
    report.json, report.md, plots/*.png   (when a report directory is given)

``artifacts/latest`` is a symlink to the newest version directory. A version directory is
written under a temporary name and renamed into place, and ``latest`` is replaced atomically,
so a reader never sees a half-written artifact. The version directory is 0755 and every file
gets the mode an ordinary file gets under the process umask (the safetensors files too, see
``model.safetensors_file``), so a service running as another user can read a mounted artifact.

The loader imports nothing from ``training``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import export

from model.decomposed import Layout, decomposable, part_widths
from model.features import FeatureSpec
from model.head import HeadConfig
from model.levi import LeviModel
from model.reference import ReferenceStats
from model.safetensors_file import save_tensors
from model.templates import ViewSet
from model.tokenizer import LENGTH_BUCKETS, TextTokenizer, buckets_up_to

if TYPE_CHECKING:
    from model.backbone import Backbone

# 2: features.json holds the dataset spec's typed columns; the manifest has "dataset".
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (2,)
MANIFEST = "manifest.json"
BACKBONE_EXPORT, BACKBONE_PARAMS = "backbone.jaxexport", "backbone.safetensors"
BACKBONE_FILES = (BACKBONE_EXPORT, BACKBONE_PARAMS)
HEAD_EXPORT, HEAD_PARAMS = "head.jaxexport", "head.safetensors"
# The first-layer decomposition (model.decomposed), for views that split by side.
SIDE_EXPORTS = {"user": "user_side.jaxexport", "item": "item_side.jaxexport"}
PAIR_EXPORT = "pair.jaxexport"
FEATURES, USERS, ITEMS, REFERENCE = (
    "features.json",
    "users.parquet",
    "items.parquet",
    "reference.safetensors",
)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
REPORT_FILES = ("report.json", "report.md")
PLOTS_DIR = "plots"
LATEST = "latest"
ACTIVATION_DTYPE = "float32"
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ArtifactError(RuntimeError):
    """An artifact is missing, corrupted or does not fit this process; the message says why."""


# -- parameters -----------------------------------------------------------------------------


def flatten_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Nested parameter dicts -> ``{"a/b/c": array}`` (host numpy arrays)."""
    return _flat(params, lambda v: np.ascontiguousarray(jax.device_get(v)))


def _flat(tree: Mapping[str, Any], leaf: Callable[[Any], Any], prefix: str = "") -> dict:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"parameter name {prefix}{key!r} contains '/'; rename it")
        if isinstance(value, Mapping):
            out.update(_flat(value, leaf, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = leaf(value)
    return out


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``{"a/b/c": array}`` -> nested plain dicts (the inverse of :func:`flatten_params`)."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


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
    if not _VERSION_RE.fullmatch(model_version) or model_version == LATEST:
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
            rel: _sha256(tmp / rel) for rel in sorted(_relative_files(tmp)) if rel != MANIFEST
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
    for rel in _relative_files(root):
        if rel in REPORT_FILES or rel.startswith(PLOTS_DIR + "/"):
            files[rel] = _sha256(root / rel)
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


def _relative_files(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- load -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Artifact:
    """A loaded, checked artifact with fast numpy-in / numpy-out model calls.

    Attributes:
        path: the resolved version directory.
        manifest: the parsed manifest.json.
        exported_backbone, exported_head: the deserialized ``jax.export.Exported`` functions.
        backbone_params, head_params: their parameters (nested dicts of device arrays).
    """

    path: Path
    manifest: dict[str, Any]
    tokenizer: TextTokenizer = field(repr=False)
    features: FeatureSpec = field(repr=False)
    views: ViewSet = field(repr=False)
    head_config: HeadConfig = field(repr=False)
    users: pd.DataFrame = field(repr=False)
    items: pd.DataFrame = field(repr=False)
    reference: ReferenceStats = field(repr=False)
    exported_backbone: export.Exported = field(repr=False)
    exported_head: export.Exported = field(repr=False)
    backbone_params: Any = field(repr=False)
    head_params: Any = field(repr=False)
    _encode_fn: Callable = field(repr=False)
    _score_fn: Callable = field(repr=False)
    layout: Layout | None = field(default=None, repr=False)
    _side_fns: dict[str, Callable] = field(default_factory=dict, repr=False)
    _pair_fn: Callable | None = field(default=None, repr=False)

    @property
    def decomposed(self) -> bool:
        """Whether the first-layer decomposition functions are exported (factored views)."""
        return self.layout is not None

    def side(
        self, side: str, ids: np.ndarray, multi_hot: np.ndarray, views: np.ndarray
    ) -> dict[str, np.ndarray]:
        """One side's partial products (``model.decomposed.side_parts``).

        Args:
            side: ``"user"`` or ``"item"``.
            ids: int32 ``[n, F_side]``; multi_hot: float32 ``[n, G_side]``; views: float32
                ``[n, V_side, n_layers, d]`` pooled activations of the side's views.

        Returns:
            ``mlp [n, M]``, ``adapters [n, A, H]``, ``bias [n]``, ``factors [n, k]``.
        """
        if self.layout is None:
            raise ArtifactError(f"{self.path}: no decomposed functions (pair views)")
        out = self._side_fns[side](
            self.head_params,
            np.asarray(ids, np.int32),
            np.asarray(multi_hot, np.float32),
            np.asarray(views, np.float32),
        )
        return {k: np.asarray(v) for k, v in out.items()}

    def pair(
        self, user: dict[str, np.ndarray], item: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Adapter ratings ``[b, A]`` and the ensembled rating ``[b]`` from aligned parts."""
        if self._pair_fn is None:
            raise ArtifactError(f"{self.path}: no decomposed functions (pair views)")
        adapters, rating = self._pair_fn(self.head_params, user, item)
        return np.asarray(adapters), np.asarray(rating)

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(self.manifest["platforms"])

    @property
    def dataset(self) -> dict[str, Any]:
        """The resolved dataset spec of the manifest (name, rating scale, columns, split)."""
        return dict(self.manifest.get("dataset") or {})

    def encode(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Pooled activations of every layer.

        Args:
            input_ids, mask: int32 ``[b, l]`` (any b and l up to the backbone's max_length).

        Returns:
            float32 ``[b, n_layers, d]``.
        """
        input_ids = _as(input_ids, np.int32, "input_ids", self.exported_backbone.in_avals[-2])
        mask = _as(mask, np.int32, "mask", self.exported_backbone.in_avals[-1])
        if input_ids.shape != mask.shape:
            raise ValueError(f"input_ids {input_ids.shape} and mask {mask.shape} must match")
        return np.asarray(self._encode_fn(self.backbone_params, input_ids, mask))

    def score(
        self, ids: np.ndarray, multi_hot: np.ndarray, activations: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Adapter ratings and the ensembled rating.

        Args:
            ids: int32 ``[b, F]`` feature ids; multi_hot: float32 ``[b, G]``;
            activations: float32 ``[b, n_views, n_layers, d]``.

        Returns:
            ``(adapters float32 [b, A], rating float32 [b])``.
        """
        avals = self.exported_head.in_avals[-3:]
        ids = _as(ids, np.int32, "ids", avals[0])
        multi_hot = _as(multi_hot, np.float32, "multi_hot", avals[1])
        activations = _as(activations, np.float32, "activations", avals[2])
        if not ids.shape[0] == multi_hot.shape[0] == activations.shape[0]:
            raise ValueError(
                f"batch sizes differ: ids {ids.shape}, multi_hot {multi_hot.shape}, "
                f"activations {activations.shape}"
            )
        adapters, rating = self._score_fn(self.head_params, ids, multi_hot, activations)
        return np.asarray(adapters), np.asarray(rating)

    def ood_score(self, adapters: np.ndarray) -> np.ndarray:
        """float32 ``[b]``: adapter spread over its training median (training median = 1.0)."""
        return self.reference.ood_score(adapters)


def _as(array: Any, dtype: type, name: str, aval: Any) -> np.ndarray:
    """``array`` as ``dtype``, checking its rank and fixed (non-batch) dimensions."""
    out = np.asarray(array, dtype=dtype)
    want = tuple(dim if isinstance(dim, int) else None for dim in aval.shape)
    fits = out.ndim == len(want) and all(
        w is None or w == g for w, g in zip(want, out.shape, strict=True)
    )
    if not fits:
        shown = ["b" if w is None else w for w in want]
        raise ValueError(f"{name} must have shape {shown}, got {out.shape}")
    return out


def shares_backbone(manifest: Mapping[str, Any], other: Artifact) -> bool:
    """Whether an artifact with ``manifest`` may have the backbone ``other`` has loaded: the
    same fingerprint and byte-identical parameters (their sha256). The exported functions
    are compared after that (:func:`same_function`): their bytes differ with source
    locations alone."""
    mine, theirs = manifest.get("files") or {}, other.manifest.get("files") or {}
    fingerprint = str((manifest.get("backbone") or {}).get("fingerprint", ""))
    return (
        fingerprint == str(other.manifest["backbone"].get("fingerprint", "?"))
        and mine.get(BACKBONE_PARAMS) is not None
        and mine.get(BACKBONE_PARAMS) == theirs.get(BACKBONE_PARAMS)
    )


_LOCATION = re.compile(r"^#loc\d* = loc\(.*\)$", re.MULTILINE)


def same_function(a: export.Exported, b: export.Exported) -> bool:
    """Whether two exported functions compute the same thing: the same input and output
    structure and shapes, and the same StableHLO once source locations are left out."""
    if a is b:
        return True
    if (a.in_tree, str(a.in_avals), str(a.out_avals)) != (
        b.in_tree,
        str(b.in_avals),
        str(b.out_avals),
    ):
        return False
    return _LOCATION.sub("", a.mlir_module()) == _LOCATION.sub("", b.mlir_module())


def load_artifact(path: str | Path, *, backbone_of: Artifact | None = None) -> Artifact:
    """Load and check an artifact.

    Args:
        path: a version directory or the ``latest`` symlink (resolved).
        backbone_of: a loaded artifact whose backbone to reuse when this one's is the same
            (:func:`shares_backbone`; the normal case for a retrain): its exported function,
            parameters and jitted call, so its compiled shapes serve both. Another backbone
            is loaded as usual.

    Returns:
        The checked :class:`Artifact`.

    Raises:
        ArtifactError: in this order, when the manifest is missing or not valid JSON, its
            format_version is not supported, a listed file is missing or its sha256 differs,
            a required file is not listed, this process's platform was not exported, an
            exported function does not deserialize, or parameters do not fit the exported
            functions (or the tables and reference do not fit the manifest).
    """
    given = Path(path)
    root = given.resolve()
    manifest = _read_manifest(given, root)
    _check_files(root, manifest)
    _check_platform(root, manifest)
    exported_backbone = _deserialize(root / BACKBONE_EXPORT)
    shared = None
    if (
        backbone_of is not None
        and shares_backbone(manifest, backbone_of)
        and same_function(exported_backbone, backbone_of.exported_backbone)
    ):
        shared = backbone_of
    if shared is not None:
        exported_backbone, backbone_params = shared.exported_backbone, shared.backbone_params
    else:
        backbone_params = jax.device_put(_load_params(root / BACKBONE_PARAMS, exported_backbone))
    exported_head = _deserialize(root / HEAD_EXPORT)
    head_params = _load_params(root / HEAD_PARAMS, exported_head)

    try:
        head_config = HeadConfig.from_json(manifest["head"], manifest.get("rating_range"))
        views = ViewSet.from_json(manifest["views"])
        features = FeatureSpec.from_json(json.loads((root / FEATURES).read_text()))
        tokenizer = TextTokenizer(
            root / manifest["tokenizer"], max_length=int(manifest["backbone"]["max_length"])
        )
        reference = ReferenceStats.load(root / REFERENCE)
        users = _read_table(root / USERS)
        items = _read_table(root / ITEMS)
    except (KeyError, TypeError, ValueError, OSError) as e:  # CheckpointError is a ValueError
        raise ArtifactError(
            f"{root}: could not read the artifact's contents ({type(e).__name__}: {e}); "
            "re-export it with model.artifact.export_artifact"
        ) from e
    _check_consistency(root, manifest, features, head_config, views, reference)
    layout, side_fns, pair_fn = None, {}, None
    if manifest.get("decomposed"):
        try:
            layout = Layout.from_json(manifest["decomposed"]["layout"])
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(
                f"{root / MANIFEST}: 'decomposed' is malformed ({e}); re-export the artifact"
            ) from e
        side_fns = {s: jax.jit(_deserialize(root / f).call) for s, f in SIDE_EXPORTS.items()}
        pair_fn = jax.jit(_deserialize(root / PAIR_EXPORT).call)
    return Artifact(
        path=root,
        manifest=manifest,
        tokenizer=tokenizer,
        features=features,
        views=views,
        head_config=head_config,
        users=users,
        items=items,
        reference=reference,
        exported_backbone=exported_backbone,
        exported_head=exported_head,
        backbone_params=backbone_params,
        head_params=jax.device_put(head_params),
        _encode_fn=shared._encode_fn if shared is not None else jax.jit(exported_backbone.call),
        _score_fn=jax.jit(exported_head.call),
        layout=layout,
        _side_fns=side_fns,
        _pair_fn=pair_fn,
    )


def _read_manifest(given: Path, root: Path) -> dict[str, Any]:
    file = root / MANIFEST
    if not file.is_file():
        hint = ""
        if (given / LATEST).exists():
            hint = f" (this looks like the artifacts root: pass {given / LATEST})"
        raise ArtifactError(
            f"{file} does not exist{hint}; pass an artifact version directory written by "
            "`make train` (model.artifact.export_artifact)"
        )
    try:
        manifest = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{file} is not valid JSON ({e}); re-export the artifact") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{file} must hold a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ArtifactError(
            f"{file}: format_version {version!r} is not supported (this loader reads "
            f"{list(SUPPORTED_FORMAT_VERSIONS)}); retrain it with this code version (`make "
            "train`, or `python -m training --config SPEC` for your own data) or serve it with "
            "the matching service version"
        )
    missing = [
        k
        for k in ("model_version", "backbone", "head", "views", "tokenizer", "platforms", "files")
        if k not in manifest
    ]
    if missing:
        raise ArtifactError(f"{file} lacks {missing}; re-export the artifact")
    return manifest


def _check_files(root: Path, manifest: dict[str, Any]) -> None:
    files = manifest["files"]
    if not isinstance(files, dict):
        raise ArtifactError(f"{root / MANIFEST}: 'files' must map file paths to sha256")
    for rel, digest in files.items():
        file = (root / rel).resolve()
        if root not in file.parents:
            raise ArtifactError(f"{root / MANIFEST} lists {rel!r}, outside the artifact")
        if not file.is_file():
            raise ArtifactError(
                f"{file} is missing but listed in the manifest; the artifact is incomplete: "
                "copy it again or re-export it"
            )
        actual = _sha256(file)
        if actual != digest:
            raise ArtifactError(
                f"{file}: sha256 {actual[:12]}... does not match the manifest's {digest[:12]}... "
                f"(changed or truncated; size now {file.stat().st_size} bytes); copy the "
                "artifact again or re-export it"
            )
    required = [
        BACKBONE_EXPORT,
        BACKBONE_PARAMS,
        HEAD_EXPORT,
        HEAD_PARAMS,
        FEATURES,
        USERS,
        ITEMS,
        REFERENCE,
        str(manifest["tokenizer"]),
    ]
    if manifest.get("decomposed"):
        required += [*SIDE_EXPORTS.values(), PAIR_EXPORT]
    unlisted = [r for r in required if r not in files]
    if unlisted:
        raise ArtifactError(
            f"{root / MANIFEST} does not list required file(s) {unlisted}; the artifact is "
            "incomplete: re-export it"
        )


def current_platform() -> str:
    """This process's jax.export platform name (``cpu``, ``cuda``, ``rocm``, ``tpu``)."""
    backend = jax.default_backend()
    return "cuda" if backend == "gpu" else backend


def _check_platform(root: Path, manifest: dict[str, Any]) -> None:
    here = current_platform()
    exported = [str(p) for p in manifest["platforms"]]
    if here not in exported:
        raise ArtifactError(
            f"{root / MANIFEST}: the artifact was exported for platforms {exported}, but this "
            f"process runs on {here!r}; re-export with platforms including {here!r} or serve it "
            f"on a {'/'.join(exported)} machine"
        )


def _deserialize(file: Path) -> export.Exported:
    try:
        return export.deserialize(bytearray(file.read_bytes()))
    except Exception as e:  # flatbuffers and jax raise assorted types on bad bytes
        raise ArtifactError(
            f"{file} does not deserialize as a jax.export function ({type(e).__name__}: {e}); "
            f"serve it with jax {jax.__version__}-compatible code or re-export it"
        ) from e


def _load_params(file: Path, exported: export.Exported) -> dict[str, Any]:
    """Parameters of ``file``, checked against the exported function's first argument."""
    from safetensors.numpy import load_file

    try:
        flat = load_file(str(file))
    except Exception as e:  # safetensors raises its own error type on bad headers
        raise ArtifactError(f"{file} is not a valid safetensors file ({e})") from e
    args, _ = jax.tree_util.tree_unflatten(exported.in_tree, exported.in_avals)
    want = _flat(args[0], lambda a: (tuple(a.shape), np.dtype(a.dtype)))
    missing = sorted(set(want) - set(flat))
    extra = sorted(set(flat) - set(want))
    if missing or extra:
        raise ArtifactError(
            f"{file} does not hold the parameters the exported function takes: missing "
            f"{missing[:5]}, unexpected {extra[:5]}; the artifact is inconsistent: re-export it"
        )
    for name, spec in want.items():
        got = flat[name]
        if tuple(got.shape) != spec[0] or np.dtype(got.dtype) != spec[1]:
            raise ArtifactError(
                f"{file}: parameter {name!r} has shape {tuple(got.shape)} {got.dtype}, the "
                f"exported function expects {spec[0]} {spec[1]}; re-export the artifact"
            )
    return unflatten_params(flat)


def _read_table(file: Path) -> pd.DataFrame:
    frame = pd.read_parquet(file)
    for col in frame.columns:
        if frame[col].dtype == object and any(isinstance(v, np.ndarray) for v in frame[col]):
            frame[col] = [tuple(v) if isinstance(v, np.ndarray) else v for v in frame[col]]
    return frame


def _check_consistency(
    root: Path,
    manifest: dict[str, Any],
    features: FeatureSpec,
    head_config: HeadConfig,
    views: ViewSet,
    reference: ReferenceStats,
) -> None:
    if tuple(features.vocab_sizes) != tuple(head_config.vocab_sizes):
        raise ArtifactError(
            f"{root / FEATURES}: vocab sizes {features.vocab_sizes} differ from the manifest's "
            f"head config {head_config.vocab_sizes}; re-export the artifact"
        )
    bb = manifest["backbone"]
    expected = (views.n_views, int(bb["n_layers"]), int(bb["hidden_size"]))
    if reference.activation_mean.shape != expected:
        raise ArtifactError(
            f"{root / REFERENCE}: activation_mean is {reference.activation_mean.shape}, the "
            f"manifest implies [n_views, n_layers, d] = {expected}; re-export the artifact"
        )
