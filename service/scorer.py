"""The scoring engine: requests in, ratings + per-adapter ratings + OOD score out.

One :meth:`Scorer.score` call handles a whole micro-batch:

resolve entity records (artifact tables; request fields override; unknown ids go through the
OOV slot and their text) → render text views → activation cache (texts deduplicated within
the batch) → cache misses encoded in one backbone call → head on the batch → ensemble,
adapter ratings, OOD score → metrics and drift windows.

Every array handed to the exported functions is padded to a batch bucket (powers of two) and
the token arrays to a length bucket, so after :meth:`Scorer.warm_up` nothing compiles while
serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from model.tokenizer import LENGTH_BUCKETS, bucket_length
from service.cache import ActivationCache
from service.drift import DriftMonitor
from service.entity_fields import request_models
from service.metrics import Metrics

if TYPE_CHECKING:
    import pandas as pd

    from model.artifact import Artifact

log = logging.getLogger(__name__)

PAIR_SAMPLE = 512  # pair views: entity pairs tokenized to find the length buckets in use


@dataclass(frozen=True)
class ScoreInput:
    """One pair to rate; ``user`` / ``item`` hold only the fields the request set."""

    user_id: str
    item_id: str
    user: Mapping[str, Any] = field(default_factory=dict)
    item: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreResult:
    """The answer for one pair.

    Attributes:
        rating: adapters' mean clipped to the rating range.
        adapters: ``((layer 1-based, rating), ...)`` in head order.
    """

    rating: float
    adapters: tuple[tuple[int, float], ...]
    ood_score: float
    model_version: str
    cold_user: bool
    cold_item: bool
    warnings: tuple[str, ...] = ()


def batch_buckets(largest: int) -> tuple[int, ...]:
    """Powers of two from 1 up to the first one that holds ``largest``."""
    sizes = [1]
    while sizes[-1] < largest:
        sizes.append(sizes[-1] * 2)
    return tuple(sizes)


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return buckets[-1]


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with zero rows appended up to ``rows``."""
    if array.shape[0] == rows:
        return array
    pad = np.zeros((rows - array.shape[0], *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, pad], axis=0)


def _records(table: pd.DataFrame, key: str) -> dict[str, dict[str, Any]]:
    """``{id: record}`` of an artifact entity table (a pandas DataFrame)."""
    out = {}
    for rec in table.to_dict("records"):
        rec = {k: (tuple(v) if isinstance(v, (list, np.ndarray)) else v) for k, v in rec.items()}
        rec[key] = str(rec[key])
        out[rec[key]] = rec
    return out


class Scorer:
    """Scores micro-batches with one loaded artifact.

    Args:
        artifact: a loaded :class:`model.artifact.Artifact`.
        cache: the activation cache keyed by this artifact's backbone fingerprint.
        max_batch: the largest batch :meth:`score` is called with (larger calls are chunked).
    """

    def __init__(
        self, artifact: Artifact, cache: ActivationCache, metrics: Metrics, *, max_batch: int
    ):
        self.artifact = artifact
        self.cache = cache
        self.metrics = metrics
        self.max_batch = max_batch
        self.model_version = str(artifact.model_version)
        self.views = artifact.views
        self.features = artifact.features
        self.tokenizer = artifact.tokenizer
        self.head_config = artifact.head_config
        n_adapters = self.head_config.n_adapters
        layers = tuple(self.head_config.layers) or tuple(range(n_adapters))
        self.layers = tuple(int(lay) + 1 for lay in layers)  # 1-based, as answered
        backbone = artifact.manifest["backbone"]
        buckets = tuple(backbone.get("length_buckets") or LENGTH_BUCKETS)
        max_len = int(backbone.get("max_length", self.tokenizer.max_length))
        self.length_buckets = tuple(b for b in buckets if b < max_len) + (
            bucket_length(max_len, buckets),
        )
        self.head_buckets = batch_buckets(max_batch)
        self.backbone_buckets = batch_buckets(max_batch * self.views.n_views)
        self.users = _records(artifact.users, "user_id")
        self.items = _records(artifact.items, "item_id")
        self.request_models = request_models(self.features)
        self._columns = {
            e: {c.name: c for c in self.features.fields_of(e)} for e in ("user", "item")
        }
        # The fields the text views read, per entity: what a cold start should send.
        used = {f for v in self.views.views for f in v.fields}
        self._text_fields = {
            e: [c.name for c in self.features.fields_of(e) if c.name in used]
            for e in ("user", "item")
        }
        ref = artifact.reference
        self.drift = DriftMonitor(
            ref.prediction_edges, ref.prediction_hist, ref.activation_mean, ref.activation_var
        )
        self.warmed: tuple[tuple[int, int], ...] = ()
        self._adapter_hist = [metrics.adapter_rating.labels(layer=str(lay)) for lay in self.layers]
        self._drift_gauges = [
            metrics.activation_drift.labels(layer=str(i + 1)) for i in range(self.drift.n_layers)
        ]
        self._unknown = {k: metrics.unknown_entities.labels(kind=k) for k in ("user", "item")}

    # -- entities and texts ---------------------------------------------------------------

    def resolve(self, req: ScoreInput) -> tuple[dict, dict, list[str]]:
        """User and item records of a request, and its cold-start and field warnings.

        Known entities start from the artifact's tables; the request's fields (already
        checked against the model's spec) override them; unknown ids get a record with only
        their id and the request's fields (cold start: OOV slots and their text views).
        """
        warnings: list[str] = []
        records = []
        for entity, entity_id, given, table in (
            ("user", req.user_id, req.user, self.users),
            ("item", req.item_id, req.item, self.items),
        ):
            known = table.get(entity_id)
            record = dict(known) if known else {f"{entity}_id": entity_id}
            record.update({k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
            records.append(record)
            if known is None:
                warnings.append(self._cold_warning(entity, bool(given)))
            for name, value in given.items():
                col = self._columns[entity].get(name)
                if col is not None and col.mlp and col.kind != "numeric" and not col.known(value):
                    warnings.append(
                        f"{entity}.{name}: value(s) not in the model's vocabulary were read as "
                        "out-of-vocabulary (the text view still reads them)"
                    )
        return records[0], records[1], warnings

    def _cold_warning(self, entity: str, has_fields: bool) -> str:
        if has_fields:
            return f"unknown {entity}: answered from the request's {entity} fields (cold start)"
        fields = self._text_fields[entity] or [c.name for c in self.features.fields_of(entity)]
        hint = f"; send {', '.join(f'{entity}.{f}' for f in fields)} for a better answer"
        return f"unknown {entity} without fields: answered from the out-of-vocabulary slot" + (
            hint if fields else ""
        )

    # -- model calls ----------------------------------------------------------------------

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        """Backbone activations ``[n, n_layers, d]`` of texts, in padded bucket-sized calls."""
        chunk = self.backbone_buckets[-1]
        outs = []
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            input_ids, mask = self.tokenizer.pad(self.tokenizer.encode(part), self.length_buckets)
            rows = _bucket(len(part), self.backbone_buckets)
            t0 = time.perf_counter()
            acts = self.artifact.encode(_pad_rows(input_ids, rows), _pad_rows(mask, rows))
            self.metrics.backbone_seconds.observe(time.perf_counter() - t0)
            outs.append(np.asarray(acts, dtype=np.float32)[: len(part)])
        return np.concatenate(outs, axis=0)

    def _head(
        self, ids: np.ndarray, multi_hot: np.ndarray, acts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = ids.shape[0]
        rows = _bucket(n, self.head_buckets)
        t0 = time.perf_counter()
        adapters, rating = self.artifact.score(
            _pad_rows(ids, rows), _pad_rows(multi_hot, rows), _pad_rows(acts, rows)
        )
        adapters = np.asarray(adapters, dtype=np.float32)[:n]  # [n, n_adapters]
        ood = np.asarray(self.artifact.ood_score(adapters), dtype=np.float32)
        self.metrics.head_seconds.observe(time.perf_counter() - t0)
        return adapters, np.asarray(rating, dtype=np.float32)[:n], ood

    def activations(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``{text: [n_layers, d]}`` from the cache, encoding and caching the misses."""
        keys = {t: self.cache.key(t) for t in dict.fromkeys(texts)}
        found = self.cache.get_many(list(keys.values()))
        missing = [t for t, k in keys.items() if k not in found]
        if missing:
            fresh = self._encode(missing)
            stored = self.cache.put_many({keys[t]: fresh[i] for i, t in enumerate(missing)})
            found.update(stored)
        return {t: found[k] for t, k in keys.items()}

    # -- scoring --------------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreInput]) -> list[ScoreResult]:
        """Answers for requests, in order (chunked by ``max_batch``)."""
        results: list[ScoreResult] = []
        for start in range(0, len(requests), self.max_batch):
            results.extend(self._score_batch(requests[start : start + self.max_batch]))
        return results

    def _score_batch(self, requests: Sequence[ScoreInput]) -> list[ScoreResult]:
        resolved = [self.resolve(r) for r in requests]
        users = [u for u, _, _ in resolved]
        items = [i for _, i, _ in resolved]
        texts = [self.views.render(u, i) for u, i, _ in resolved]  # [b][n_views]
        for req, row, (_, _, warnings) in zip(requests, texts, resolved, strict=True):
            if (req.user or req.item) and any(self.tokenizer.truncates(t) for t in row):
                warnings.append(
                    f"a text view is longer than the backbone's {self.tokenizer.max_length} "
                    "tokens: it was truncated"
                )
        table = self.activations([t for row in texts for t in row])
        acts = np.stack([np.stack([table[t] for t in row]) for row in texts])
        encoded = self.features.encode(users, items)
        adapters, rating, ood = self._head(encoded["ids"], encoded["multi_hot"], acts)
        self._observe(requests, resolved, acts, adapters, rating, ood)
        out = []
        for i, (req, (_, _, warnings)) in enumerate(zip(requests, resolved, strict=True)):
            out.append(
                ScoreResult(
                    rating=float(rating[i]),
                    adapters=tuple(
                        (lay, float(adapters[i, j])) for j, lay in enumerate(self.layers)
                    ),
                    ood_score=float(ood[i]),
                    model_version=self.model_version,
                    cold_user=req.user_id not in self.users,
                    cold_item=req.item_id not in self.items,
                    warnings=tuple(warnings),
                )
            )
        return out

    def _observe(self, requests, resolved, acts, adapters, rating, ood) -> None:
        m = self.metrics
        m.predictions.inc(len(requests))
        for r in rating:
            m.prediction_rating.observe(float(r))
        for j, hist in enumerate(self._adapter_hist):
            for v in adapters[:, j]:
                hist.observe(float(v))
        for s in np.std(adapters, axis=1):
            m.adapter_disagreement.observe(float(s))
        for s in ood:
            m.ood_score.observe(float(s))
        cold_users = sum(r.user_id not in self.users for r in requests)
        cold_items = sum(r.item_id not in self.items for r in requests)
        if cold_users:
            self._unknown["user"].inc(cold_users)
        if cold_items:
            self._unknown["item"].inc(cold_items)
        psi, drift = self.drift.update(rating, acts)
        m.prediction_psi.set(psi)
        for gauge, value in zip(self._drift_gauges, drift, strict=True):
            gauge.set(float(value))

    # -- warm-up --------------------------------------------------------------------------

    def length_buckets_in_use(self) -> tuple[int, ...]:
        """Length buckets of the tables' texts, plus the next one for longer cold starts."""
        users = list(self.users.values()) or [{"user_id": "0"}]
        items = list(self.items.values()) or [{"item_id": "0"}]
        if any(v.entity == "pair" for v in self.views.views):
            rng = np.random.default_rng(0)
            ui = rng.integers(0, len(users), PAIR_SAMPLE)
            ii = rng.integers(0, len(items), PAIR_SAMPLE)
            texts = [t for a, b in zip(ui, ii, strict=True) for t in self.views.render(
                users[a], items[b])]  # fmt: skip
        else:
            n = max(len(users), len(items))
            texts = [
                t
                for k in range(n)
                for t in self.views.render(users[k % len(users)], items[k % len(items)])
            ]
        longest = max(len(x) for x in self.tokenizer.encode(list(dict.fromkeys(texts))))
        top = self.length_buckets.index(bucket_length(longest, self.length_buckets))
        return self.length_buckets[: min(top + 2, len(self.length_buckets))]

    def warm_up(self) -> float:
        """Call both functions once per batch bucket × length bucket in use; seconds taken."""
        t0 = time.perf_counter()
        lengths = self.length_buckets_in_use()
        for rows in self.backbone_buckets:
            for length in lengths:
                ids = np.full((rows, length), self.tokenizer.pad_id, dtype=np.int32)
                mask = np.ones((rows, length), dtype=np.int32)
                acts = np.asarray(self.artifact.encode(ids, mask))
        n_layers, d = acts.shape[1:]
        n_feats = len(self.features.categorical)
        for rows in self.head_buckets:
            self.artifact.score(
                np.zeros((rows, n_feats), np.int32),
                np.zeros((rows, self.features.n_multi_hot), np.float32),
                np.zeros((rows, self.views.n_views, n_layers, d), np.float32),
            )
        self.artifact.ood_score(np.zeros((1, self.head_config.n_adapters), np.float32))
        self.warmed = tuple((r, n) for r in self.backbone_buckets for n in lengths)
        seconds = time.perf_counter() - t0
        log.info(
            "warmed model %s: batch buckets %s x length buckets %s in %.1fs",
            self.model_version, self.backbone_buckets, lengths, seconds,
        )  # fmt: skip
        return seconds
