"""The scoring engine: pairs in, ratings + per-adapter ratings + OOD scores out, as arrays.

One vectorised path serves single pairs, batches, ``/rank`` and the batch CLI
(:meth:`Scorer.score` -> :class:`service.results.ScoreBatch`).

Factored views (the default) use the head's first-layer decomposition (``model.decomposed``):
per side, the pairs' distinct entities (id + request fields) are looked up in the in-process
projection cache (``service.entity_store``); the missing ones are resolved (artifact table,
request fields override, unknown ids are cold starts), rendered, encoded through the
activation cache (LRU, then Redis, then the backbone in one call) and projected by the
exported side function; then the pair function runs once over the batch. Ranking 1,000
candidates for one user computes the user's side once (request-level user broadcast).

``pair`` views (one text per user-item pair) cannot be split: they run the whole exported head
per pair, through the same interface.

Arrays handed to the exported functions are padded to batch buckets (powers of 4; of 8 for the
pair function) and token arrays to length buckets (every other one of the manifest's), so
after the warm-up (service/warmup.py) nothing compiles while serving. The grid is coarse
because every compiled shape holds about 10 MiB of resident memory (docs/PROFILING.md).

The pairs asked are :class:`service.score_inputs.ScoreInput`; how much text a call will
encode, and a large job's encoding in bounded steps, is service/cold_tokens.py.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np

from model.batching import encode_texts, pad_rows
from model.decomposed_layout import SIDES, part_widths
from model.native_heap import release_free_heap
from model.tokenizer import LENGTH_BUCKETS, bucket_length
from service.cache import ActivationCache
from service.cold_tokens import estimate_cold_tokens, prepare_step
from service.corrections import OnlineCorrections
from service.drift import DriftMonitor
from service.entity_fields import request_models
from service.entity_store import EntityResolver, EntityTable, ProjectionCache
from service.metrics import Metrics, observe_many
from service.results import NO_WARNINGS, SOURCE_CODE, SOURCES, ScoreBatch
from service.score_inputs import NO_FIELDS as NO_FIELDS  # re-exported: imported from here
from service.score_inputs import ScoreInput, entity_keys, sources

if TYPE_CHECKING:
    from model.artifact import Artifact

log = logging.getLogger(__name__)

MIN_PAIR_CHUNK = 1024  # the pair function runs on up to this many pairs per call
TRIM_AFTER_TOKENS = 16 * 48  # padded tokens of backbone calls after which free heap is returned


COLD_WITH_FIELDS = {
    side: f"unknown {side}: answered from the request's {side} fields (cold start)"
    for side in SIDES
}


def _with_cold_notes(batch: ScoreBatch) -> ScoreBatch:
    """``batch`` with a warning on each side the model does not know that the request's
    fields answered. Said per answer, not stored with the entity's projections: the same
    fields registered in the catalog (``service/catalog.py``) share those projections, and a
    registered entity's answer says ``source: catalog`` instead."""
    request = SOURCE_CODE["request"]
    need = {
        "user": batch.cold_user & (batch.user_source == request),
        "item": batch.cold_item & (batch.item_source == request),
    }
    rows = np.flatnonzero(need["user"] | need["item"])
    if not len(rows):
        return batch
    warnings = list(batch.warnings)
    for j in rows.tolist():
        notes = tuple(COLD_WITH_FIELDS[side] for side in SIDES if need[side][j])
        warnings[j] = notes + warnings[j]
    return dataclasses.replace(batch, warnings=tuple(warnings))


ROW_STEP = 4  # batch buckets grow x4: each compiled shape costs memory (docs/PROFILING.md)
PAIR_STEP = 8  # the pair function's buckets grow x8: a padded row costs about 7 us
MAX_BACKBONE_ROWS = 16  # texts per backbone call (larger calls are chunked)


def coarse_lengths(buckets: Sequence[int]) -> tuple[int, ...]:
    """Every other length bucket (the 2nd, 4th, ...) and the last one (texts cut at the
    token limit): a text is padded by at most two of the manifest's steps, and half as many
    backbone shapes are compiled."""
    kept = list(buckets[1::2])
    if not kept or kept[-1] != buckets[-1]:
        kept.append(buckets[-1])
    return tuple(kept)


def batch_buckets(largest: int, step: int = ROW_STEP) -> tuple[int, ...]:
    """Powers of ``step`` from 1 below ``largest``, then ``largest`` itself.

    Every bucket is one compiled executable per function (2-12 MiB of resident memory each on
    CPU, whatever its size), so the grid is coarse: a call pads to at most ``step`` times
    its rows, which costs little at these sizes (the backbone's cost grows with rows x
    tokens, and a micro-batch rarely fills a bucket exactly anyway).
    """
    sizes = [1]
    while sizes[-1] * step < largest:
        sizes.append(sizes[-1] * step)
    if sizes[-1] < largest:
        sizes.append(largest)
    return tuple(sizes)


_ROW, _COLD, _WARNINGS = attrgetter("row"), attrgetter("cold"), attrgetter("warnings")


def _padded_index(index: np.ndarray, start: int, stop: int, rows: int) -> np.ndarray:
    """int32 ``index[start:stop]`` padded with zeros to ``rows`` entries."""
    out = np.zeros(rows, np.int32)
    out[: stop - start] = index[start:stop]
    return out


class Scorer:
    """Scores pairs with one loaded artifact.

    Args:
        artifact: a loaded :class:`model.artifact.Artifact`.
        cache: the activation cache keyed by this artifact's backbone fingerprint.
        max_batch: the micro-batch size; sets the smallest compiled shapes.
        projection_cache_size: entities per side whose projections are kept in process.
    """

    def __init__(
        self,
        artifact: Artifact,
        cache: ActivationCache,
        metrics: Metrics,
        *,
        max_batch: int,
        projection_cache_size: int,
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
        # Every bucket below is one compiled executable per function, about 10 MiB resident
        # each on CPU whatever its size (docs/PROFILING.md, issue 27), so the grid is coarse:
        # every other length bucket of the manifest (a text pads by at most two steps),
        # rows x4 (the backbone, the head), the side functions at one row or a micro-batch,
        # the pair function x8 up to 1,024 (rankings, batch jobs).
        self.length_buckets = coarse_lengths(
            tuple(b for b in buckets if b < max_len) + (bucket_length(max_len, buckets),)
        )
        self.decomposed = artifact.decomposed
        self.head_buckets = batch_buckets(max_batch)
        self.side_buckets = batch_buckets(max_batch, step=max(2, max_batch))
        large, size = [], max_batch * PAIR_STEP
        while size < MIN_PAIR_CHUNK:
            large.append(size)
            size *= PAIR_STEP
        if max_batch < MIN_PAIR_CHUNK:
            large.append(MIN_PAIR_CHUNK)
        self.pair_buckets = batch_buckets(max_batch, step=PAIR_STEP) + tuple(large)
        # Capped at 16 rows: a backbone row costs about the same from 16 rows up on CPU (2.3-2.9
        # ms a 16-token text at 8-32 rows, docs/BENCHMARKS.md "Scaling"), and a 64-row
        # shape's temporaries (75 MB at 48 tokens) and executable are memory for nothing.
        self.backbone_buckets = batch_buckets(
            min(max_batch * self.views.n_views, MAX_BACKBONE_ROWS)
        )
        self.tables = {
            "user": EntityTable(artifact.users, "user_id"),
            "item": EntityTable(artifact.items, "item_id"),
        }
        self.entities = EntityResolver(self.tables, self.features, self.views)
        self.request_models = request_models(self.features)
        self._entity_columns = {
            e: [j for j, c in enumerate(self.features.categorical) if c.entity == e] for e in SIDES
        }
        ref = artifact.reference
        self.drift = DriftMonitor(
            ref.prediction_edges, ref.prediction_hist, ref.activation_mean, ref.activation_var
        )
        self.projections: dict[str, ProjectionCache] = {}
        if self.decomposed:
            shapes = {**part_widths(self.head_config), "dist": (self.drift.n_layers,)}
            self.projections = {s: ProjectionCache(shapes, projection_cache_size) for s in SIDES}
            # What the pair function reads of each cache (service/warmup.py compiles it
            # against these tables' shapes).
            self._pair_tables = {
                s: {k: self.projections[s].arrays[k] for k in part_widths(self.head_config)}
                for s in SIDES
            }
            sides = artifact.layout.view_sides
            self._side_views = {
                s: np.array([v for v, x in enumerate(sides) if x == s]) for s in SIDES
            }
        # One call at a time: the scorer thread and the shadow thread (service/batcher.py)
        # may both score with this version (shadow of a canary answer).
        self._lock = threading.Lock()
        self.rating_range = (float(self.head_config.rating_min), float(self.head_config.rating_max))
        # Online corrections added to answers (set by service.scorer_setup.build_scorer).
        self.corrections: OnlineCorrections | None = None
        metrics.use_rating_scale(*self.rating_range)
        assert metrics.adapter_rating is not None and metrics.prediction_rating is not None
        self._rating_hist = metrics.prediction_rating
        self._adapter_hist = [metrics.adapter_rating.labels(layer=str(lay)) for lay in self.layers]
        self._drift_gauges = [
            metrics.activation_drift.labels(layer=str(i + 1)) for i in range(self.drift.n_layers)
        ]
        self._unknown = {k: metrics.unknown_entities.labels(kind=k) for k in SIDES}
        self._lookups = {
            k: [metrics.catalog_lookups.labels(kind=k, source=s) for s in SOURCES] for k in SIDES
        }

    def pair_tables(self) -> dict[str, dict[str, np.ndarray]]:
        """Per side, the projection cache's arrays the pair function reads (``{part: [C,
        ...]}``; empty for pair views)."""
        return dict(self._pair_tables) if self.decomposed else {}

    @property
    def n_users(self) -> int:
        return len(self.tables["user"])

    @property
    def n_items(self) -> int:
        return len(self.tables["item"])

    # -- entities -------------------------------------------------------------------------

    def resolve(
        self, side: str, keys: Sequence[tuple[str, tuple]]
    ) -> tuple[list[dict], list[bool], list[tuple[str, ...]]]:
        """:meth:`service.entity_store.EntityResolver.resolve` of this model's entities."""
        return self.entities.resolve(side, keys)

    def _truncation(self, texts: Sequence[str]) -> str | None:
        if any(self.tokenizer.truncates(t) for t in texts):
            return (
                f"a text view is longer than the backbone's {self.tokenizer.max_length} tokens: "
                "it was truncated"
            )
        return None

    # -- model calls ----------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Backbone activations ``[n, n_layers, d]`` of texts, in padded bucket-sized calls
        (``model.batching``: the loop the trainer scores the exported model with)."""

        tokens = 0

        def timed(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            nonlocal tokens
            t0 = time.perf_counter()
            acts = self.artifact.encode(input_ids, mask)
            self.metrics.backbone_seconds.observe(time.perf_counter() - t0)
            tokens += input_ids.size
            return acts

        n_layers, d = self.cache.shape
        out = encode_texts(
            texts,
            self.tokenizer,
            timed,
            length_buckets=self.length_buckets,
            row_buckets=self.backbone_buckets,
            out_shape=(n_layers, d),
        )
        if tokens >= TRIM_AFTER_TOKENS:
            # XLA's temporaries of a large call (75 MB at 64 x 48 tokens for MiniLM) stay in
            # the heap once freed; a trim takes milliseconds after a call of 100 ms or more.
            release_free_heap()
        return out

    def activations(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``{text: [n_layers, d]}`` from the cache, encoding and caching the misses."""
        keys = {t: self.cache.key(t) for t in dict.fromkeys(texts)}
        found = self.cache.get_many(list(keys.values()))
        missing = [t for t, k in keys.items() if k not in found]
        if missing:
            fresh = self.encode(missing)
            stored = self.cache.put_many({keys[t]: fresh[i] for i, t in enumerate(missing)})
            found.update(stored)
        return {t: found[k] for t, k in keys.items()}

    def _chunked(self, n: int, buckets: Sequence[int], call) -> list:
        """``call(start, stop, padded_rows)`` over ``n`` rows in bucket-sized chunks."""
        out = []
        for start in range(0, n, buckets[-1]):
            stop = min(n, start + buckets[-1])
            out.append(call(start, stop, bucket_length(stop - start, buckets)))
        return out

    # -- the decomposed path --------------------------------------------------------------

    def project(
        self, side: str, keys: Sequence[tuple[str, tuple]], *, store: bool = True
    ) -> dict[str, np.ndarray]:
        """Projections of new entities: ``model.decomposed`` parts + drift distances, stored
        in the side's projection cache unless ``store`` is False."""
        records, cold, warnings = self.resolve(side, keys)
        views = [self.views.views[v] for v in self._side_views[side]]
        texts = [
            [v.render(r, {}) if side == "user" else v.render({}, r) for v in views] for r in records
        ]  # [n][V_side]
        table = self.activations([t for row in texts for t in row])
        acts = np.stack([np.stack([table[t] for t in row]) for row in texts])  # [n, V, L, d]
        for j, (key, row) in enumerate(zip(keys, texts, strict=True)):
            if key[1] and (note := self._truncation(row)):
                warnings[j] = (*warnings[j], note)
        columns = self._entity_columns[side]
        ids = self.features.encode_entity(side, records)  # [n, F_side]
        multi_hot = self.features.encode_multi_hot(side, records)  # [n, G_side]
        assert ids.shape[1] == len(columns)

        def call(start: int, stop: int, rows: int) -> dict[str, np.ndarray]:
            parts = self.artifact.side(
                side,
                pad_rows(ids[start:stop], rows),
                pad_rows(multi_hot[start:stop], rows),
                pad_rows(acts[start:stop], rows),
            )
            return {k: v[: stop - start] for k, v in parts.items()}

        t0 = time.perf_counter()
        chunks = self._chunked(len(keys), self.side_buckets, call)
        self.metrics.head_seconds.observe(time.perf_counter() - t0)
        parts = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        parts["dist"] = self.drift.view_distances(acts, self._side_views[side]).sum(axis=1)
        if store:
            self.projections[side].put(keys, parts, cold, warnings)
        return {**parts, "_cold": np.asarray(cold), "_warnings": warnings}

    def _side(self, side: str, keys: list[tuple[str, tuple]]):
        """One side's projections for the pairs' keys, without copying cached rows.

        Returns:
            ``(arrays, rows, cold, warnings, index)``: part arrays (the cache's own), each
            pair's row in them ``[n]``, the distinct keys' cold flags and warnings, and each
            pair's distinct key ``[n]``.
        """
        distinct = list(dict.fromkeys(keys))
        if len(distinct) == len(keys):  # every pair its own entity (e.g. a /rank's items)
            index = np.arange(len(keys), dtype=np.int64)
        else:
            row_of = {k: j for j, k in enumerate(distinct)}
            index = np.fromiter(map(row_of.__getitem__, keys), np.int64, len(keys))
        cache = self.projections[side]
        slots = cache.slots(distinct)
        missing = [k for k, s in zip(distinct, slots, strict=True) if s is None]
        hits = len(distinct) - len(missing)
        self.metrics.projection_lookups.labels(side=side, result="hit").inc(hits)
        if missing:
            self.metrics.projection_lookups.labels(side=side, result="miss").inc(len(missing))
        if len(distinct) > cache.capacity:  # more than the cache holds: this batch's own rows
            new = self.project(side, distinct, store=False)
            arrays = {k: new[k] for k in cache.arrays}
            return arrays, index, new["_cold"], new["_warnings"], index
        if missing:
            # Stored in the cache's arrays; what they evict is older than every key here.
            self.project(side, missing)
            slots = cache.slots(distinct)
        slot_rows = np.fromiter(map(_ROW, slots), np.int64, len(slots))
        cold = np.fromiter(map(_COLD, slots), bool, len(slots))
        warnings = list(map(_WARNINGS, slots))
        return cache.arrays, slot_rows[index], cold, warnings, index

    def _score_decomposed(self, inputs: Sequence[ScoreInput], observe: bool = True) -> ScoreBatch:
        sides = {}
        for side in SIDES:
            keys = entity_keys(side, inputs)
            sides[side] = self._side(side, keys)
        u_parts, u_rows, u_cold, u_warn, u_index = sides["user"]
        i_parts, i_rows, i_cold, i_warn, i_index = sides["item"]
        model_parts = [k for k in u_parts if k != "dist"]
        n = len(inputs)
        # Both sides read from their caches (the normal case): the pair function gathers the
        # rows itself, one XLA call per chunk (indices in, ratings out), reading the cache
        # arrays in place. Otherwise (more distinct entities than a cache holds) the batch's
        # own parts are gathered here.
        cached = all(
            parts is self.projections[s].arrays
            for s, parts in (("user", u_parts), ("item", i_parts))
        )

        def call(start: int, stop: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
            # Padding rows read row 0; their answers are dropped.
            ui = _padded_index(u_rows, start, stop, rows)
            ii = _padded_index(i_rows, start, stop, rows)
            if cached:
                tables = self._pair_tables
                adapters, rating = self.artifact.pair_rows(tables["user"], ui, tables["item"], ii)
            else:
                u = {k: u_parts[k][ui] for k in model_parts}
                i = {k: i_parts[k][ii] for k in model_parts}
                adapters, rating = self.artifact.pair(u, i)
            return adapters[: stop - start], rating[: stop - start]

        t0 = time.perf_counter()
        chunks = self._chunked(n, self.pair_buckets, call)
        self.metrics.head_seconds.observe(time.perf_counter() - t0)
        adapters = np.concatenate([c[0] for c in chunks]).astype(np.float32)
        rating = np.concatenate([c[1] for c in chunks]).astype(np.float32)
        if any(u_warn) or any(i_warn):
            warnings = tuple(
                (u_warn[a] + i_warn[b]) if (u_warn[a] or i_warn[b]) else NO_WARNINGS
                for a, b in zip(u_index.tolist(), i_index.tolist(), strict=True)
            )
        else:  # no entity has a warning (the usual case)
            warnings = (NO_WARNINGS,) * n
        dist = (u_parts["dist"][u_rows] + i_parts["dist"][i_rows]) / self.views.n_views
        return self._finish(
            adapters, rating, u_cold[u_index], i_cold[i_index], warnings, dist, observe
        )

    # -- the whole-head path (pair views) --------------------------------------------------

    def _score_whole(self, inputs: Sequence[ScoreInput], observe: bool = True) -> ScoreBatch:
        recs, cold, warn = {}, {}, {}
        for side in SIDES:
            keys = entity_keys(side, inputs)
            distinct = list(dict.fromkeys(keys))
            records, c, w = self.resolve(side, distinct)
            row_of = {k: j for j, k in enumerate(distinct)}
            index = [row_of[k] for k in keys]
            recs[side] = [records[j] for j in index]
            cold[side] = np.asarray([c[j] for j in index], bool)
            warn[side] = [w[j] for j in index]
        texts = [self.views.render(u, i) for u, i in zip(recs["user"], recs["item"], strict=True)]
        warnings = []
        for r, row, wu, wi in zip(inputs, texts, warn["user"], warn["item"], strict=True):
            notes = wu + wi
            if (r.user or r.item) and (note := self._truncation(row)):
                notes = (*notes, note)
            warnings.append(notes or NO_WARNINGS)
        table = self.activations([t for row in texts for t in row])
        acts = np.stack([np.stack([table[t] for t in row]) for row in texts])
        encoded = self.features.encode(recs["user"], recs["item"])

        def call(start: int, stop: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
            adapters, rating = self.artifact.score(
                pad_rows(encoded["ids"][start:stop], rows),
                pad_rows(encoded["multi_hot"][start:stop], rows),
                pad_rows(acts[start:stop], rows),
            )
            return adapters[: stop - start], rating[: stop - start]

        t0 = time.perf_counter()
        chunks = self._chunked(len(inputs), self.head_buckets, call)
        self.metrics.head_seconds.observe(time.perf_counter() - t0)
        adapters = np.concatenate([c[0] for c in chunks]).astype(np.float32)
        rating = np.concatenate([c[1] for c in chunks]).astype(np.float32)
        dist = self.drift.view_distances(acts).mean(axis=1)
        return self._finish(
            adapters, rating, cold["user"], cold["item"], tuple(warnings), dist, observe
        )

    # -- large jobs in steps (service/batcher.py) ------------------------------------------

    def estimate_cold_tokens(self, inputs: Sequence[ScoreInput]) -> tuple[int, int]:
        """:func:`service.cold_tokens.estimate_cold_tokens` of this scorer."""
        return estimate_cold_tokens(self, inputs)

    def prepare(
        self, inputs: Sequence[ScoreInput], budget_tokens: int, state: dict | None = None
    ) -> tuple[bool, dict]:
        """One bounded step ahead of scoring a large job: project its entities that are not
        cached yet (encoding their texts), about ``budget_tokens`` tokens of text per step
        (at least one entity), so that no single call holds the scorer for long
        (:func:`service.cold_tokens.prepare_step`).

        Args:
            state: what the previous step returned (None at first).

        Returns:
            ``(done, state)``: done once nothing is left to encode (the job is then scored
            from cached projections, in slices).
        """
        with self._lock:
            return prepare_step(self, inputs, budget_tokens, state)

    # -- registered entities, ahead of requests (service/catalog_warmer.py) ---------------

    def warm(self, side: str, keys: Sequence[tuple[str, tuple]]) -> int:
        """Project the ``(id, frozen fields)`` keys of one side that are not cached yet, so
        that requests for them find their projections; returns how many were projected
        (none with pair views: their text depends on both sides)."""
        if not self.decomposed:
            return 0
        with self._lock:
            cache = self.projections[side]
            missing = cache.missing(dict.fromkeys(keys))
            if missing:
                self.project(side, missing)
        return len(missing)

    # -- scoring --------------------------------------------------------------------------

    def score(self, inputs: Sequence[ScoreInput], *, observe: bool = True) -> ScoreBatch:
        """Answers for ``inputs``, in order, with the online corrections when they are on.

        Args:
            observe: count the answers in the serving metrics and drift windows (False for
                shadow scoring, which nobody is answered with).
        """
        if not inputs:
            raise ValueError("score() needs at least one pair")
        score = self._score_decomposed if self.decomposed else self._score_whole
        with self._lock:  # the scorer thread and the shadow thread may share a version
            batch = score(inputs, observe)
        batch = _with_cold_notes(
            batch.with_sources(
                sources(inputs, "user", batch.cold_user), sources(inputs, "item", batch.cold_item)
            )
        )
        if observe:
            for side, codes in (("user", batch.user_source), ("item", batch.item_source)):
                for code, n in enumerate(np.bincount(codes, minlength=len(self._lookups[side]))):
                    if n:
                        self._lookups[side][code].inc(int(n))
        if self.corrections is None:
            return batch
        users = [r.user_id for r in inputs]
        return self.corrections.apply(batch, users, [r.item_id for r in inputs])

    def _finish(
        self, adapters, rating, cold_user, cold_item, warnings, dist, observe=True
    ) -> ScoreBatch:
        ood = np.asarray(self.artifact.ood_score(adapters), dtype=np.float32)
        batch = ScoreBatch.of_model(
            rating,
            adapters,
            ood,
            np.asarray(cold_user, bool),
            np.asarray(cold_item, bool),
            tuple(warnings),
            self.layers,
            self.model_version,
        )
        if observe:
            self._observe(batch, dist)
        return batch

    def _observe(self, batch: ScoreBatch, dist: np.ndarray) -> None:
        """Metrics and drift windows, once per batch (vectorised histogram updates)."""
        m = self.metrics
        m.predictions.inc(len(batch))
        observe_many(self._rating_hist, batch.rating)
        for j, hist in enumerate(self._adapter_hist):
            observe_many(hist, batch.adapters[:, j])
        observe_many(m.adapter_disagreement, np.std(batch.adapters, axis=1))
        observe_many(m.ood_score, batch.ood_score)
        for side, flags in (("user", batch.cold_user), ("item", batch.cold_item)):
            if (count := int(flags.sum())) > 0:
                self._unknown[side].inc(count)
        psi, drift = self.drift.update_distances(batch.rating, dist)
        m.prediction_psi.set(psi)
        for gauge, value in zip(self._drift_gauges, drift, strict=True):
            gauge.set(float(value))
