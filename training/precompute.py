"""Activation precompute: every distinct text of every view encoded once, cached on disk.

The cache lives under ``<cache dir>/activations/<backbone fingerprint>/`` as chunk files
``<chunk>.values.npy`` (float16 ``[n, n_layers, d]``: half the disk and memory of float32;
MiniLM's pooled residual streams are well inside float16's range, relative error ~5e-4) and
``<chunk>.keys.npy`` (the sha256 hex digests of the texts, one per row). A keys file is
written last, so a chunk is either complete or ignored; an interrupted encode keeps every
finished chunk. A second run with the same backbone finds every text and never calls the
encoder; another backbone has another fingerprint and never reads stale activations.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from model.aligned_arrays import aligned_empty
from model.templates import ViewSet
from model.text_keys import text_digest
from training import distributed

CACHE_DTYPE = np.float16
ENCODE_CHUNK = 2048  # texts per cache chunk file


class Encoder(Protocol):
    """What precompute needs of a backbone (``model.backbone.Backbone`` has it)."""

    fingerprint: str
    n_layers: int
    hidden_size: int

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False): ...


@dataclass(frozen=True)
class ViewActivations:
    """Pooled activations of every view, deduplicated by text.

    Attributes:
        names: view names, in the head's concatenation order.
        matrices: per view, float16 ``[n_texts_v, n_layers, d]``.
        index: int32 ``[n_pairs, n_views]``: the text row of each pair in each view's matrix.
        n_encoded: texts the encoder was run on (0 on a warm cache).
    """

    names: tuple[str, ...]
    matrices: tuple[np.ndarray, ...]
    index: np.ndarray
    n_encoded: int


def activation_cache_root(fingerprint: str, cache: Path | None = None) -> Path:
    """``<cache>/activations/<fingerprint>`` (cache defaults to ``model.packaged.cache_dir()``)."""
    if cache is None:
        from model.packaged import cache_dir

        cache = cache_dir()
    return Path(cache) / "activations" / fingerprint


class ActivationStore:
    """The on-disk activation cache of one backbone (see the module docstring)."""

    def __init__(self, root: Path, n_layers: int, hidden_size: int):
        self.root = Path(root)
        self.shape = (n_layers, hidden_size)
        self._where: dict[str, tuple[Path, int]] = {}
        self._scan()

    def _scan(self) -> None:
        if not self.root.is_dir():
            return
        for keys_file in sorted(self.root.glob("*.keys.npy")):
            values_file = keys_file.with_name(keys_file.name.replace(".keys.", ".values."))
            if not values_file.is_file():
                continue
            keys = np.load(keys_file)
            for row, key in enumerate(keys):
                self._where[key.decode()] = (values_file, row)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """float16 ``[len(keys), n_layers, d]`` for keys that are all present."""
        out = aligned_empty((len(keys), *self.shape), CACHE_DTYPE)  # the mesh shares it
        by_file: dict[Path, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            path, row = self._where[key]
            by_file.setdefault(path, []).append((i, row))
        for path, pairs in by_file.items():
            values = np.load(path, mmap_mode="r")
            if values.shape[1:] != self.shape:
                raise ValueError(
                    f"activation cache file {path} holds {values.shape[1:]} activations but the "
                    f"backbone gives {self.shape}; delete {self.root} and run again"
                )
            dst, src = (np.array(x) for x in zip(*pairs, strict=True))
            out[dst] = values[src]
        return out

    def put(self, keys: Sequence[str], values: np.ndarray, *, by_content: bool = False) -> None:
        """Write one chunk; values ``[n, n_layers, d]`` are stored as float16.

        Args:
            by_content: name the chunk by its keys, so processes that write the same chunk
                to a shared cache write one file (each through its own temporary file).
        """
        if values.shape != (len(keys), *self.shape):
            raise ValueError(f"expected {(len(keys), *self.shape)} activations, got {values.shape}")
        self.root.mkdir(parents=True, exist_ok=True)
        stem = uuid.uuid4().hex
        if by_content:
            stem = hashlib.sha256("".join(keys).encode()).hexdigest()[:32]
        values_file = self.root / f"{stem}.values.npy"
        keys_file = self.root / f"{stem}.keys.npy"
        for path, array in (
            (values_file, values.astype(CACHE_DTYPE)),
            (keys_file, np.array([k.encode() for k in keys], dtype="S64")),
        ):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
            with open(tmp, "wb") as f:
                np.save(f, array)
            tmp.replace(path)  # keys last: a chunk without its keys file is ignored
        for row, key in enumerate(keys):
            self._where[key] = (values_file, row)


def encode_missing(
    encoder: Encoder,
    texts: Sequence[str],
    store: ActivationStore,
    *,
    batch_size: int = 128,
    progress: bool = True,
) -> tuple[np.ndarray, int]:
    """Activations of ``texts`` (distinct), encoding only those missing from the store.

    Returns:
        ``(float16 [len(texts), n_layers, d], number of texts encoded)``.
    """
    keys = [text_digest(t) for t in texts]
    if distributed.process_count() > 1:
        n_encoded = _encode_shared(encoder, texts, keys, store, batch_size, progress)
        return store.get(keys), n_encoded
    missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in store}.items())
    if missing:
        # Similar lengths in one chunk: less padding (the encode packs short texts into rows
        # only where that pads less than its length buckets).
        missing.sort(key=lambda kv: len(kv[1]))
        bar = tqdm(total=len(missing), desc="encode", unit="text", disable=not progress)
        for start in range(0, len(missing), ENCODE_CHUNK):
            chunk = missing[start : start + ENCODE_CHUNK]
            values = np.asarray(
                encoder.encode([t for _, t in chunk], batch_size=batch_size), dtype=np.float32
            )  # [n, n_layers, d]
            store.put([k for k, _ in chunk], values)
            bar.update(len(chunk))
        bar.close()
    return store.get(keys), len(missing)


def _encode_shared(
    encoder: Encoder,
    texts: Sequence[str],
    keys: list[str],
    store: ActivationStore,
    batch_size: int,
    progress: bool,
) -> int:
    """Several processes: the texts some process's store lacks, each encoded once by one
    process (every ``P``-th of them, in key order), exchanged, and written to every store
    that lacks them (one file per chunk on a shared cache). Returns the texts encoded."""
    lacking = np.array([k not in store for k in keys], bool)
    anyone = distributed.allgather_rows(lacking[None, :]).any(axis=0)  # [n]
    todo = sorted({keys[j]: texts[j] for j in np.flatnonzero(anyone)}.items())
    if not todo:
        return 0
    me, procs = distributed.process_index(), distributed.process_count()
    mine = todo[me::procs]
    mine.sort(key=lambda kv: len(kv[1]))  # similar lengths in one chunk: less padding
    values = np.zeros((len(mine), *store.shape), CACHE_DTYPE)
    bar = tqdm(total=len(mine), desc="encode", unit="text", disable=not progress)
    for start in range(0, len(mine), ENCODE_CHUNK):
        chunk = [t for _, t in mine[start : start + ENCODE_CHUNK]]
        values[start : start + len(chunk)] = encoder.encode(chunk, batch_size=batch_size)
        bar.update(len(chunk))
    bar.close()
    every = distributed.allgather_rows(values)  # every process's share, in process order
    keys_of = distributed.allgather_strings([k for k, _ in mine])
    own = set(np.asarray(keys)[lacking])
    for start in range(0, len(keys_of), ENCODE_CHUNK):
        chunk = keys_of[start : start + ENCODE_CHUNK]
        if any(k in own for k in chunk):
            store.put(chunk, every[start : start + len(chunk)], by_content=True)
    return len(todo)


def render_views(
    views: ViewSet,
    users: pd.DataFrame,
    items: pd.DataFrame,
    pair_user: np.ndarray,
    pair_item: np.ndarray,
) -> tuple[list[list[str]], np.ndarray]:
    """Distinct texts of every view and each pair's row in them.

    A user or item view renders one text per entity that some pair names (a pair view, one
    per pair); the pairs only index them.

    Args:
        users, items: entity tables (``user_id, age, ...``; ``item_id, title, genres``).
        pair_user, pair_item: int ``[n_pairs]`` rows in ``users`` and ``items`` of every
            rating that will be trained on or scored.

    Returns:
        ``(texts, index)``: per view its distinct texts (sorted), and int32
        ``[n_pairs, n_views]``.

    Raises:
        ValueError: a pair row outside its table.
    """
    pair_user, pair_item = np.asarray(pair_user), np.asarray(pair_item)
    for name, rows, table in (("user", pair_user, users), ("item", pair_item, items)):
        if len(rows) and (rows.min() < 0 or rows.max() >= len(table)):
            raise ValueError(
                f"pair {name} rows must lie in [0, {len(table)}) (the {name}s table), got "
                f"[{rows.min()}, {rows.max()}]"
            )
    records = {"user": users.to_dict("records"), "item": items.to_dict("records")}
    texts: list[list[str]] = []
    index = np.zeros((len(pair_user), views.n_views), dtype=np.int32)
    for v, view in enumerate(views.views):
        if view.entity in ("user", "item"):
            rows = pair_user if view.entity == "user" else pair_item
            present, inverse = np.unique(rows, return_inverse=True)  # entities some pair names
            recs = records[view.entity]
            per_key = [view.render(recs[k], recs[k]) for k in present]
        else:
            inverse = np.arange(len(pair_user))
            per_key = [
                view.render(records["user"][u], records["item"][i])
                for u, i in zip(pair_user, pair_item, strict=True)
            ]
        distinct, text_of_key = np.unique(np.array(per_key, dtype=object), return_inverse=True)
        texts.append([str(t) for t in distinct])
        index[:, v] = text_of_key[inverse]
    return texts, index


def precompute(
    encoder: Encoder,
    views: ViewSet,
    users: pd.DataFrame,
    items: pd.DataFrame,
    pair_user: np.ndarray,
    pair_item: np.ndarray,
    *,
    cache: Path | None = None,
    batch_size: int = 128,
    progress: bool = True,
) -> ViewActivations:
    """Render, deduplicate, encode (cache misses only) and index every view's texts.

    Args:
        pair_user, pair_item: rows in ``users`` and ``items`` of every pair
            (:func:`render_views`).
    """
    if any(v.entity == "pair" for v in views.views):
        warnings.warn(
            f"pair views render one text per rating ({len(pair_user):,} texts): the first encode "
            "is expensive (factored views encode one text per user and per item)",
            stacklevel=2,
        )
    texts, index = render_views(views, users, items, pair_user, pair_item)
    store = ActivationStore(
        activation_cache_root(encoder.fingerprint, cache), encoder.n_layers, encoder.hidden_size
    )
    matrices, n_encoded = [], 0
    for view_texts in texts:
        values, n = encode_missing(
            encoder, view_texts, store, batch_size=batch_size, progress=progress
        )
        matrices.append(values)
        n_encoded += n
    return ViewActivations(
        names=tuple(v.name for v in views.views),
        matrices=tuple(matrices),
        index=index,
        n_encoded=n_encoded,
    )
