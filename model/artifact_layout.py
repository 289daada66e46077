"""The artifact's files: names, format version, parameter naming, checksums.

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

Written by :mod:`model.artifact_export` (training side), read and checked by
:mod:`model.artifact` (serving side, importing nothing from ``training``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

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
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ArtifactError(RuntimeError):
    """An artifact is missing, corrupted or does not fit this process; the message says why."""


# -- parameters -----------------------------------------------------------------------------


def flatten_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Nested parameter dicts -> ``{"a/b/c": array}`` (host numpy arrays)."""
    return flatten_tree(params, lambda v: np.ascontiguousarray(jax.device_get(v)))


def flatten_tree(tree: Mapping[str, Any], leaf: Callable[[Any], Any], prefix: str = "") -> dict:
    """``{"a/b/c": leaf(value)}`` of a nested mapping (names must not contain ``/``)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"parameter name {prefix}{key!r} contains '/'; rename it")
        if isinstance(value, Mapping):
            out.update(flatten_tree(value, leaf, f"{prefix}{key}/"))
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


def relative_files(root: Path) -> list[str]:
    """Every file under ``root``, as POSIX paths relative to it."""
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, hex (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
