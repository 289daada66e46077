"""Loading an artifact (the serving side): every file checked (checksums, format, platform,
shapes), then fast numpy-in / numpy-out calls of the exported functions.

The loader imports nothing from ``training``; the layout is :mod:`model.artifact_layout`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pyarrow as pa
from jax import export

from model.artifact_layout import (
    BACKBONE_EXPORT,
    BACKBONE_PARAMS,
    FEATURES,
    HEAD_EXPORT,
    HEAD_PARAMS,
    ITEMS,
    LATEST,
    MANIFEST,
    PAIR_EXPORT,
    REFERENCE,
    SIDE_EXPORTS,
    SUPPORTED_FORMAT_VERSIONS,
    USERS,
    ArtifactError,
    flatten_tree,
    sha256_file,
    unflatten_params,
)
from model.decomposed_layout import Layout
from model.features import FeatureSpec
from model.head_config import HeadConfig
from model.reference import ReferenceStats
from model.safetensors_file import map_tensors
from model.templates import ViewSet
from model.tokenizer import TextTokenizer

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
    users: pa.Table = field(repr=False)  # the known users' id and field columns
    items: pa.Table = field(repr=False)
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
    _pair_rows_fn: Callable | None = field(default=None, repr=False)

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

    def pair_rows(
        self,
        user_table: dict[str, np.ndarray],
        user_rows: np.ndarray,
        item_table: dict[str, np.ndarray],
        item_rows: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`pair` of pairs given as rows of per-entity tables: the gather runs inside the
        compiled call (one XLA call per batch: indices in, ratings out).

        Args:
            user_table, item_table: the parts of every entity of a side, ``{part: [C, ...]}``
                (``service.entity_store.ProjectionCache.arrays``). On CPU, arrays whose data is
                64-byte aligned are read in place for the call's duration (no copy): keep them
                unchanged until it returns.
            user_rows, item_rows: int32 ``[b]`` rows of each pair's user and item (in range:
                they are not checked).

        Returns:
            ``(adapters float32 [b, A], rating float32 [b])``, equal to :meth:`pair` of the
            gathered rows.
        """
        if self._pair_rows_fn is None:
            raise ArtifactError(f"{self.path}: no decomposed functions (pair views)")
        adapters, rating = self._pair_rows_fn(
            self.head_params,
            user_table,
            np.asarray(user_rows, np.int32),
            item_table,
            np.asarray(item_rows, np.int32),
        )
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
    layout, side_fns, pair_fn, pair_rows_fn = None, {}, None, None
    if manifest.get("decomposed"):
        try:
            layout = Layout.from_json(manifest["decomposed"]["layout"])
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(
                f"{root / MANIFEST}: 'decomposed' is malformed ({e}); re-export the artifact"
            ) from e
        side_fns = {s: jax.jit(_deserialize(root / f).call) for s, f in SIDE_EXPORTS.items()}
        pair_exported = _deserialize(root / PAIR_EXPORT)
        pair_fn = jax.jit(pair_exported.call)
        pair_rows_fn = jax.jit(_gathered(pair_exported.call))
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
        _pair_rows_fn=pair_rows_fn,
    )


def _gathered(pair_call: Callable) -> Callable:
    """``(params, user table, user rows, item table, item rows) -> pair_call(params, user
    rows' parts, item rows' parts)``: the rows gathered in the same XLA computation."""

    def fn(params, user_table, user_rows, item_table, item_rows):
        def take(table, rows):
            return {k: v.at[rows].get(mode="promise_in_bounds") for k, v in table.items()}

        return pair_call(params, take(user_table, user_rows), take(item_table, item_rows))

    return fn


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
        actual = sha256_file(file)
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
    """Parameters of ``file``, checked against the exported function's first argument.

    Read-only views on a memory map of the file (``model.safetensors_file.map_tensors``): put
    on the device in place when aligned, so the weights are shared page cache, resident only
    where read."""
    try:
        # in place on CPU; an accelerator copies the weights whole, so readahead then
        flat = map_tensors(file, random_reads=jax.default_backend() == "cpu")
    except ValueError as e:  # names the file
        raise ArtifactError(str(e)) from e
    except OSError as e:
        raise ArtifactError(f"{file} could not be read or mapped ({e})") from e
    args, _ = jax.tree_util.tree_unflatten(exported.in_tree, exported.in_avals)
    want = flatten_tree(args[0], lambda a: (tuple(a.shape), np.dtype(a.dtype)))
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


def _read_table(file: Path) -> pa.Table:
    """An entity table as Arrow (no pandas in the serving process: its import alone is about
    34 MiB of every replica's memory; docs/PROFILING.md, "Third pass")."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(file).read()  # read_table (the dataset API) imports pandas
    index = [c for c in table.column_names if c.startswith("__index_level_")]
    return table.drop_columns(index) if index else table


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
