"""Warm-up in two stages: what first traffic needs before ready, the rest in the background.

The scorer pads every batch to a batch bucket and every token array to a length bucket, and
each (function, shape) is an XLA compile (and about 10 MiB of resident memory: the grid is
coarse, service/scorer.py); a MiniLM model has 4 batch x 3 length buckets in use: compiling
and running all of them before ready is slow (docs/PROFILING.md, "Start-up", has the
figures). Instead:

1. **first** (before ready): one shape per function. The backbone at the smallest batch
   bucket that holds one request's texts and the longest length bucket in use; the head at
   one row, or, for factored views, each side function and the pair function (the
   first-layer decomposition, ``model.decomposed``) at one row.
   A shape is compiled ahead of time (``jit(...).lower(...).compile()``): nothing runs, and
   the executable lands in JAX's in-memory caches (and the persistent compilation cache), so
   the artifact's own jitted call at that shape finds it.
2. **background** (after ready, one thread): first the smallest compiled backbone shape is
   run once on padding (its weights, mapped from the artifact, are read in and its executable
   set up: no request pays for them); then every other shape is compiled as above, counted
   down by ``levi_warmup_pending_shapes``: the head's, then one request's batch at every
   length, then larger batches; then the OOD score's small function. Nothing compiles after
   that, so the compiler's code pages are unmapped (service/code_pages.py).

Meanwhile :class:`CompiledShapes` (the artifact as the scorer sees it) serves a call at a
shape not compiled yet from compiled ones: padded to a larger compiled batch, or split into
chunks of the largest; tokens padded to a longer compiled length (masked, so the pooled
activations are the same up to float rounding, ~1e-6). No request waits for a compile.
Only a shape longer than every compiled length (a cold-start text past the lengths in use)
is compiled in the call, as before, with a warning.

With the persistent compilation cache (on by default, service/settings.py) a compile is a
cache read after the first start (docs/BENCHMARKS.md, "Start-up").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from model.batching import pad_cols, pad_rows
from model.tokenizer import bucket_length
from service.code_pages import release_compiler_code

if TYPE_CHECKING:
    from model.artifact import Artifact
    from service.metrics import Metrics
    from service.scorer import Scorer

log = logging.getLogger(__name__)


class WarmupStopped(RuntimeError):
    """The background stage was asked to stop (shutdown, or another model swapped in)."""


# The head's functions: rows only. The side and pair functions are row-wise (each row's
# answer depends on that row alone), so padding rows or splitting a call changes nothing.
ROW_FUNCTIONS = ("head", "user_side", "item_side", "pair")


@dataclass(frozen=True, order=True)
class Shape:
    """One compiled specialization: ``function`` ("backbone", "head", "user_side",
    "item_side" or "pair") at ``rows`` x ``length`` tokens (``length`` 0 but the backbone)."""

    function: str
    rows: int
    length: int = 0


PAIR_SAMPLE = 512  # pair views: entity pairs tokenized to find the length buckets in use


def length_plan(scorer: Scorer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(length buckets of the tables' texts, the next one for longer cold starts (none
    when the tables reach the last bucket))``."""
    users = scorer.tables["user"].head(PAIR_SAMPLE * 4) or [{"user_id": "0"}]
    items = scorer.tables["item"].head(PAIR_SAMPLE * 4) or [{"item_id": "0"}]
    views = scorer.views
    if any(v.entity == "pair" for v in views.views):
        rng = np.random.default_rng(0)
        ui = rng.integers(0, len(users), PAIR_SAMPLE)
        ii = rng.integers(0, len(items), PAIR_SAMPLE)
        texts = [t for a, b in zip(ui, ii, strict=True) for t in views.render(users[a], items[b])]
    else:
        n = max(len(users), len(items))
        texts = [
            t for k in range(n) for t in views.render(users[k % len(users)], items[k % len(items)])
        ]
    longest = max(len(x) for x in scorer.tokenizer.encode(list(dict.fromkeys(texts))))
    buckets = scorer.length_buckets
    top = buckets.index(bucket_length(longest, buckets))
    return buckets[: top + 1], buckets[top + 1 : top + 2]


def full_plan(scorer: Scorer) -> tuple[Shape, ...]:
    """Every shape the scorer calls: backbone batch x length buckets in use (the next, longer
    length for cold starts only at the batch of one request's texts: such texts come one
    request at a time), then the head buckets, or the side buckets and pair buckets of the
    first-layer decomposition. The one list of compiled shapes: both stages and
    :func:`warm_all` compile from it."""
    in_use, longer = length_plan(scorer)
    rows = scorer.backbone_buckets
    one_request = next((r for r in rows if r >= scorer.views.n_views), rows[-1])
    backbone = [Shape("backbone", r, n) for r in rows for n in in_use]
    backbone += [Shape("backbone", r, n) for r in rows if r <= one_request for n in longer]
    if not scorer.decomposed:
        return (*backbone, *(Shape("head", r) for r in scorer.head_buckets))
    sides = [Shape(f"{s}_side", r) for s in ("user", "item") for r in scorer.side_buckets]
    return (*backbone, *sides, *(Shape("pair", r) for r in scorer.pair_buckets))


def first_plan(plan: Iterable[Shape], texts_per_request: int) -> tuple[Shape, ...]:
    """Stage 1 (module docstring): every call can be served from these two shapes."""
    plan = tuple(plan)
    out = []
    for fn, need in (("backbone", texts_per_request), *((f, 1) for f in ROW_FUNCTIONS)):
        shapes = [s for s in plan if s.function == fn]
        if shapes:
            rows = sorted({s.rows for s in shapes})
            smallest = next((r for r in rows if r >= need), rows[-1])
            out.append(Shape(fn, smallest, max(s.length for s in shapes)))
    return tuple(sorted(out))


def background_order(plan: Iterable[Shape], first: Iterable[Shape]) -> tuple[Shape, ...]:
    """The shapes left after ``first``: the head's (cheap), then the first backbone batch at
    every length (lone requests), then by batch size, so the batches of a growing load are
    compiled before the largest ones."""
    done = set(first)
    first_rows = {s.rows for s in done if s.function == "backbone"}
    return tuple(
        sorted(
            (s for s in plan if s not in done),
            key=lambda s: (s.function == "backbone", s.rows not in first_rows, s.rows, s.length),
        )
    )


class CompiledShapes:
    """The artifact as the scorer sees it: calls at shapes that are not compiled yet are
    served from compiled ones (module docstring). Every other attribute is the artifact's.

    Args:
        artifact: the loaded artifact.
        metrics: ``levi_warmup_pending_shapes`` is kept here.
        backbone_from: the compiled shapes of another version whose artifact lent this one
            its backbone (``load_artifact(..., backbone_of=...)``): its compiled backbone
            shapes count as compiled here, and are compiled once for both.
    """

    def __init__(
        self,
        artifact: Artifact,
        metrics: Metrics | None = None,
        *,
        backbone_from: CompiledShapes | None = None,
    ):
        import jax

        self._artifact = artifact
        self._metrics = metrics
        shared = (
            backbone_from is not None
            and backbone_from.exported_backbone is artifact.exported_backbone
        )
        self._jit = {
            "backbone": backbone_from._jit["backbone"]
            if shared
            else (
                jax.jit(artifact.exported_backbone.call),
                artifact.backbone_params,
                artifact.exported_backbone,
            ),
            "head": (
                jax.jit(artifact.exported_head.call),
                artifact.head_params,
                artifact.exported_head,
            ),
        }
        self._row_inputs = _decomposed_inputs(artifact)  # function -> per-row input shapes
        self.compiled: set[Shape] = set()
        if shared:
            with backbone_from._lock:
                self.compiled = {s for s in backbone_from.compiled if s.function == "backbone"}
        self.pending: set[Shape] = set()
        # The projection tables the pair function reads (Scorer.pair_tables), set by the
        # warm-up stages: the pair function compiles against their shapes.
        self.pair_tables: dict[str, dict[str, np.ndarray]] = {}
        self.complete = False  # everything compiled: calls go straight to the artifact
        self.stopping = threading.Event()  # the background stage ends after its current shape
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._artifact, name)

    # -- compiling -----------------------------------------------------------------------

    def compile(self, shape: Shape) -> float:
        """Compile ``shape`` ahead of time (nothing runs; the side and pair functions, a few
        milliseconds of work, are run once on zeros); seconds taken."""
        import jax

        t0 = time.perf_counter()
        if shape.function in self._row_inputs:
            self._run_zeros(shape)
            self._record(shape)
            return time.perf_counter() - t0
        jitted, params, exported = self._jit[shape.function]
        n_data = 2 if shape.function == "backbone" else 3
        args = [
            jax.ShapeDtypeStruct(_concrete(a.shape, shape), a.dtype)
            for a in exported.in_avals[-n_data:]
        ]
        jitted.lower(params, *args).compile()
        self._record(shape)
        return time.perf_counter() - t0

    def run_backbone_once(self) -> float:
        """Run the smallest compiled backbone shape once, on padding; seconds taken.

        A backbone's first call reads its weights from the artifact's mapped file (pages
        come in as read: model/safetensors_file.py) and sets its executable up; done here,
        no request pays for them (about 0.5 s for MiniLM)."""
        t0 = time.perf_counter()
        with self._lock:  # the scorer thread records shapes it serves (_target)
            compiled = sorted(s for s in self.compiled if s.function == "backbone")
        if compiled:
            rows, length = compiled[0].rows, compiled[0].length
            ids = np.full((rows, length), self._artifact.tokenizer.pad_id, np.int32)
            self._artifact.encode(ids, np.ones_like(ids))
        return time.perf_counter() - t0

    def compile_all(self, shapes: Iterable[Shape]) -> float:
        """Compile ``shapes`` in order (those not compiled yet); seconds taken."""
        t0 = time.perf_counter()
        for s in shapes:
            if self.stopping.is_set():
                raise WarmupStopped("stopped before every shape was compiled")
            if s not in self.compiled:
                self.compile(s)
        return time.perf_counter() - t0

    def _record(self, shape: Shape) -> None:
        with self._lock:
            self.compiled.add(shape)
            self.pending.discard(shape)
            if self._metrics is not None:
                self._metrics.warmup_pending.set(len(self.pending))

    def set_pending(self, shapes: Iterable[Shape]) -> None:
        with self._lock:
            self.pending = set(shapes) - self.compiled
            if self._metrics is not None:
                self._metrics.warmup_pending.set(len(self.pending))

    # -- the functions the scorer calls --------------------------------------------------

    def encode(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The artifact's ``encode``, from compiled shapes only (module docstring)."""
        input_ids, mask = np.asarray(input_ids), np.asarray(mask)
        rows, length = input_ids.shape
        shape = Shape("backbone", rows, length)
        target = self._target(shape)
        if target is None:
            return self._artifact.encode(input_ids, mask)
        pad_id = self._artifact.tokenizer.pad_id
        input_ids = pad_cols(input_ids, target.length, pad_id)
        mask = pad_cols(mask, target.length, 0)
        outs = [
            self._artifact.encode(pad_rows(i, target.rows), pad_rows(m, target.rows))[: len(i)]
            for i, m in _chunks(target.rows, input_ids, mask)
        ]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def score(
        self, ids: np.ndarray, multi_hot: np.ndarray, activations: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The artifact's ``score``, from compiled shapes only (module docstring)."""
        shape = Shape("head", int(np.shape(ids)[0]))
        target = self._target(shape)
        if target is None:
            return self._artifact.score(ids, multi_hot, activations)
        parts = [
            [a[: len(c[0])] for a in self._artifact.score(*(pad_rows(x, target.rows) for x in c))]
            for c in _chunks(
                target.rows, np.asarray(ids), np.asarray(multi_hot), np.asarray(activations)
            )
        ]
        if len(parts) == 1:
            return parts[0][0], parts[0][1]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def side(
        self, side: str, ids: np.ndarray, multi_hot: np.ndarray, views: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The artifact's ``side``, from compiled shapes only (module docstring)."""
        shape = Shape(f"{side}_side", int(np.shape(ids)[0]))
        target = self._target(shape)
        if target is None:
            return self._artifact.side(side, ids, multi_hot, views)
        parts = [
            {
                k: v[: len(c[0])]
                for k, v in self._artifact.side(
                    side, *(pad_rows(x, target.rows) for x in c)
                ).items()
            }
            for c in _chunks(target.rows, np.asarray(ids), np.asarray(multi_hot), np.asarray(views))
        ]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def pair(
        self, user: dict[str, np.ndarray], item: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The artifact's ``pair``, from compiled shapes only (module docstring)."""
        keys = sorted(user)
        shape = Shape("pair", int(user[keys[0]].shape[0]))
        target = self._target(shape)
        if target is None:
            return self._artifact.pair(user, item)
        outs = []
        for c in _chunks(target.rows, *(user[k] for k in keys), *(item[k] for k in keys)):
            n = len(c[0])
            u = {k: pad_rows(c[j], target.rows) for j, k in enumerate(keys)}
            i = {k: pad_rows(c[len(keys) + j], target.rows) for j, k in enumerate(keys)}
            adapters, rating = self._artifact.pair(u, i)
            outs.append((adapters[:n], rating[:n]))
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def pair_rows(
        self,
        user_table: dict[str, np.ndarray],
        user_rows: np.ndarray,
        item_table: dict[str, np.ndarray],
        item_rows: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The artifact's ``pair_rows``, from compiled shapes only (module docstring)."""
        shape = Shape("pair", len(user_rows))
        target = self._target(shape)
        if target is None:
            return self._artifact.pair_rows(user_table, user_rows, item_table, item_rows)
        outs = []
        for u, i in _chunks(target.rows, np.asarray(user_rows), np.asarray(item_rows)):
            adapters, rating = self._artifact.pair_rows(
                user_table, pad_rows(u, target.rows), item_table, pad_rows(i, target.rows)
            )
            outs.append((adapters[: len(u)], rating[: len(u)]))
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def _run_zeros(self, shape: Shape) -> None:
        """Call a side or the pair function once on zeros of ``shape`` (compiles it)."""
        _run_row_zeros(self._artifact, self._row_inputs[shape.function], shape, self.pair_tables)

    def _target(self, shape: Shape) -> Shape | None:
        """The compiled shape to serve ``shape`` from, or None to call the artifact as is."""
        if self.complete or shape in self.compiled:
            return None
        with self._lock:  # the background thread adds shapes meanwhile
            compiled = [
                s
                for s in self.compiled
                if s.function == shape.function and s.length >= shape.length
            ]
        if not compiled:
            log.warning(
                "compiling the %s for %d rows x %d tokens while serving: no compiled shape is "
                "that long (levi_warmup_pending_shapes shows what is left to compile)",
                shape.function,
                shape.rows,
                shape.length,
            )
            self._record(shape)  # the artifact's own jit keeps it from now on
            return None
        length = min(s.length for s in compiled)
        same = [s for s in compiled if s.length == length]
        larger = [s for s in same if s.rows >= shape.rows]
        return min(larger) if larger else max(same)


def _decomposed_inputs(artifact: Artifact) -> dict[str, Any]:
    """Per-row input shapes of the side and pair functions (none for pair views)."""
    if not getattr(artifact, "decomposed", False):
        return {}
    from model.decomposed_layout import part_widths

    layout, cfg = artifact.layout, artifact.head_config
    _, n_layers, d = artifact.reference.activation_mean.shape
    sizes = {
        "user": (layout.n_user_ids, layout.n_user_multi_hot),
        "item": (
            len(cfg.vocab_sizes) - layout.n_user_ids,
            cfg.n_multi_hot - layout.n_user_multi_hot,
        ),
    }
    out: dict[str, Any] = {"pair": part_widths(cfg)}
    for side, (f, g) in sizes.items():
        views = layout.view_sides.count(side)
        out[f"{side}_side"] = [
            ((f,), np.int32),
            ((g,), np.float32),
            ((views, n_layers, d), np.float32),
        ]
    return out


def _run_row_zeros(
    artifact: Artifact, inputs: Any, shape: Shape, tables: dict[str, dict[str, np.ndarray]]
) -> None:
    """Call a side or the pair function of ``artifact`` once on zeros of ``shape``; the pair
    function as the scorer calls it: rows of the projection ``tables``
    (``Scorer.pair_tables``), or on zero parts when there are none."""
    if shape.function == "pair":
        if tables:
            rows = np.zeros(shape.rows, np.int32)
            artifact.pair_rows(tables["user"], rows, tables["item"], rows)
            return
        zeros = {k: np.zeros((shape.rows, *w), np.float32) for k, w in inputs.items()}
        artifact.pair(zeros, zeros)
    else:
        side = shape.function.removesuffix("_side")
        artifact.side(side, *(np.zeros((shape.rows, *w), t) for w, t in inputs))


def _concrete(dims: tuple, shape: Shape) -> tuple[int, ...]:
    """An exported function's symbolic dimensions filled in: batch, then tokens."""
    out = []
    for d in dims:
        if isinstance(d, int):
            out.append(d)
        else:
            out.append(shape.rows if not out else shape.length)
    return tuple(out)


def _chunks(rows: int, *arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    n = arrays[0].shape[0]
    return [tuple(a[k * rows : (k + 1) * rows] for a in arrays) for k in range(math.ceil(n / rows))]


# -- the two stages ----------------------------------------------------------------------


def warm_first(scorer: Scorer, shapes: CompiledShapes) -> float:
    """Stage 1 (blocking): compile what first traffic needs; seconds taken.

    The rest of the plan is marked pending (``levi_warmup_pending_shapes``).
    """
    t0 = time.perf_counter()
    shapes.pair_tables = scorer.pair_tables()
    plan = full_plan(scorer)
    first = first_plan(plan, scorer.views.n_views)
    shapes.set_pending(plan)
    shapes.compile_all(first)
    return time.perf_counter() - t0


def warm_rest(scorer: Scorer, shapes: CompiledShapes) -> float:
    """Stage 2 (blocking; on its own thread while serving): every other shape, then the OOD
    score's function; seconds taken. Calls go straight to the artifact afterwards."""
    t0 = time.perf_counter()
    shapes.pair_tables = scorer.pair_tables()
    shapes.run_backbone_once()
    shapes.compile_all(background_order(full_plan(scorer), shapes.compiled))
    if shapes.stopping.is_set():
        raise WarmupStopped("stopped before the OOD score's function")
    shapes.ood_score(np.zeros((1, scorer.head_config.n_adapters), np.float32))
    shapes.complete = True
    shapes.set_pending(())
    released = release_compiler_code()  # nothing compiles from here on (service/code_pages.py)
    log.info(
        "model %s: every shape compiled; %.0f MiB of the compiler's code unmapped",
        scorer.model_version,
        released / 1024,
    )
    return time.perf_counter() - t0


def warm_all(scorer: Scorer) -> float:
    """Everything at once, by running (not only compiling) the artifact's own functions on
    zeros of every shape of :func:`full_plan`, so their jit caches hold each executable and
    nothing compiles afterwards (the batch scorer, which has no background stage); seconds.
    """
    t0 = time.perf_counter()
    artifact = scorer.artifact
    row_inputs = _decomposed_inputs(artifact)
    tables = scorer.pair_tables()
    plan = full_plan(scorer)
    for shape in plan:
        if shape.function in row_inputs:
            _run_row_zeros(artifact, row_inputs[shape.function], shape, tables)
        elif shape.function == "backbone":
            ids = np.full((shape.rows, shape.length), artifact.tokenizer.pad_id, np.int32)
            artifact.encode(ids, np.ones_like(ids))
        else:
            exported = artifact.exported_head
            artifact.score(
                *(np.zeros(_concrete(a.shape, shape), a.dtype) for a in exported.in_avals[-3:])
            )
    artifact.ood_score(np.zeros((1, scorer.head_config.n_adapters), np.float32))
    seconds = time.perf_counter() - t0
    log.info(
        "warmed model %s: %d shapes (batch buckets %s x length buckets %s) in %.1fs",
        scorer.model_version,
        len(plan),
        scorer.backbone_buckets,
        sorted({s.length for s in plan if s.function == "backbone"}),
        seconds,
    )
    return seconds


def start_background(
    scorer: Scorer, shapes: CompiledShapes, done: Callable[[float], None] | None = None
) -> threading.Thread:
    """Run :func:`warm_rest` on a thread; ``done(seconds)`` when it has finished.

    Stop it with ``shapes.stopping.set()`` and join the thread before the process exits: a
    thread inside an XLA compile at interpreter exit crashes the process.
    """

    def run() -> None:
        try:
            seconds = warm_rest(scorer, shapes)
        except WarmupStopped:
            return
        except Exception:  # serving goes on from the shapes compiled so far
            log.exception("background warm-up of model %s failed", scorer.model_version)
            return
        if done is not None:
            done(seconds)

    thread = threading.Thread(target=run, name="levi-warmup")
    thread.start()
    return thread
