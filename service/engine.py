"""The serving engine: the current model, its warm-up, hot reload and the micro-batcher.

A model is loaded and warmed on a background thread, then swapped in with one assignment;
the micro-batcher reads the current scorer for every batch, so in-flight batches finish on
the old model and the next batch uses the new one. A failed load leaves the old one serving.

The first model of a start is ready once the shapes first traffic needs are compiled; the
rest compile in the background while it serves (service/warmup.py). A reload warms every
shape before the swap, since the old model serves meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service import logs
from service.batcher import MicroBatcher
from service.cache import ActivationCache, LocalLRU, RedisTier
from service.corrections import OnlineCorrections, item_vocabulary, shrinkage_of
from service.feedback_log import FeedbackLog
from service.metrics import Metrics
from service.results import ScoreBatch
from service.scorer import ScoreInput, Scorer
from service.settings import Settings
from service.warmup import CompiledShapes, start_background, warm_first, warm_rest
from service.workers import WorkerGroup, WorkerState

if TYPE_CHECKING:
    from model.artifact import Artifact

log = logging.getLogger(__name__)


class ModelNotReadyError(RuntimeError):
    """No model is loaded yet (503)."""


class ReloadConflictError(RuntimeError):
    """A reload is already running (409)."""


class ReloadError(RuntimeError):
    """The new artifact could not be loaded or warmed; the old model keeps serving (409)."""


def activation_layout(artifact: Artifact) -> tuple[tuple[int, int], np.dtype]:
    """``((n_layers, d), storage dtype)`` of one text's cached activations (from the manifest)."""
    backbone = artifact.manifest["backbone"]
    shape = (int(backbone["n_layers"]), int(backbone["hidden_size"]))
    return shape, np.dtype(artifact.manifest.get("activation_dtype", "float32"))


def build_scorer(
    artifact: Artifact,
    settings: Settings,
    metrics: Metrics,
    *,
    redis: RedisTier | None,
    warm: bool = True,
    corrections: bool = False,
) -> Scorer:
    """A scorer over ``artifact`` with its activation cache (LRU + the shared Redis tier).

    Args:
        corrections: add the online corrections of this model version (shared through
            ``redis`` when given; ``service/corrections.py``) to its answers.
    """
    shape, dtype = activation_layout(artifact)
    cache = ActivationCache(
        artifact.manifest["backbone"]["fingerprint"],
        shape,
        dtype,
        metrics,
        local=LocalLRU(settings.local_cache_size),
        remote=redis,
        key_prefix=settings.cache_key_prefix,
    )
    scorer = Scorer(
        artifact,
        cache,
        metrics,
        max_batch=settings.max_batch,
        projection_cache_size=settings.projection_cache_size,
    )
    if corrections:
        scorer.corrections = OnlineCorrections(
            scorer.model_version,
            shrinkage_of(artifact.manifest),
            scorer.rating_range,
            metrics,
            redis_tier=redis,
            ttl_s=settings.corrections_ttl_s,
            max_backlog=settings.corrections_backlog,
            key_prefix=settings.corrections_key_prefix,
            item_known=item_vocabulary(artifact.features),
            mirror_size=settings.corrections_mirror_size,
            dedup_s=settings.feedback_dedup_s,
        )
    if warm:
        scorer.warm_up()
    return scorer


def enable_compilation_cache(directory: Path) -> bool:
    """Keep compiled XLA executables on disk, so a restart or new replica warms up fast.

    Returns:
        False (with a warning: the service compiles as without a cache) when the directory
        cannot be created or written, e.g. on a read-only filesystem.
    """
    import jax

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        log.warning(
            "compilation cache off: %s is not writable (%s); set LEVI_COMPILATION_CACHE_DIR "
            "to a writable directory, or LEVI_COMPILATION_CACHE=0 to silence this",
            directory,
            e,
        )
        return False
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return True


def make_redis_tier(settings: Settings, metrics: Metrics) -> RedisTier | None:
    """The Redis tier of ``settings.redis_url`` (None without one)."""
    if not settings.redis_url:
        return None
    return RedisTier(
        settings.redis_url,
        metrics,
        ttl_s=settings.cache_ttl_s,
        timeout_s=settings.redis_timeout_s,
        backoff_s=settings.redis_backoff_s,
        backoff_max_s=settings.redis_backoff_max_s,
    )


def freeze_long_lived() -> None:
    """Take every object alive now out of the cyclic garbage collector's scans.

    The model, its entity tables and the imported libraries live as long as the process; a
    full collection walks all of them while every in-flight request waits (profiled: p99 at 8
    connections 89 ms with the collector, 10 ms without). Frozen objects are still freed by
    reference counting; the previous model's cycles are collected first, by unfreezing. Run
    it on the scorer thread between batches (:meth:`Engine._freeze`).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Engine:
    """Owns the served model and everything that scores with it.

    Models are loaded only through :func:`model.artifact.load_artifact`, so every artifact
    served has passed its checksum, format-version and platform checks.
    """

    def __init__(self, settings: Settings, metrics: Metrics, group: WorkerGroup | None = None):
        self.settings = settings
        self.metrics = metrics
        self.group = group
        cache_dir = settings.compilation_cache_path()
        self.compilation_cache = (
            cache_dir if cache_dir is not None and enable_compilation_cache(cache_dir) else None
        )
        self.redis = make_redis_tier(settings, metrics)
        self.feedback_log = (
            FeedbackLog(
                settings.feedback_dir,
                rotate_bytes=settings.feedback_rotate_bytes,
                rotate_s=settings.feedback_rotate_s,
            )
            if settings.feedback_dir is not None
            else None
        )
        self.scorer: Scorer | None = None
        self.path: Path | None = None
        self.loaded_at: str | None = None
        self.load_error: str | None = None
        self.batcher = MicroBatcher(
            self.score,
            metrics,
            max_batch=settings.max_batch,
            max_delay_s=settings.max_delay_ms / 1000.0,
            queue_bound=settings.queue_bound,
        )
        self._reload_lock = asyncio.Lock()
        self._initial: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._background: tuple[CompiledShapes, threading.Thread] | None = None
        self.generation = 0  # the last reload of the worker group applied (several workers)

    @property
    def ready(self) -> bool:
        return self.scorer is not None

    def build(self, path: Path, *, staged: bool = False) -> tuple[Scorer, CompiledShapes]:
        """Load and warm the artifact at ``path`` (blocking; run off the event loop).

        Args:
            staged: warm only what first traffic needs (service/warmup.py, stage 1); the
                caller starts the rest with :func:`service.warmup.start_background`.
                Otherwise every shape is compiled before this returns.
        """
        from model.artifact import load_artifact

        t0 = time.perf_counter()
        shapes = CompiledShapes(load_artifact(Path(path)), self.metrics)
        scorer = build_scorer(
            shapes,
            self.settings,
            self.metrics,
            redis=self.redis,
            warm=False,
            corrections=self.settings.corrections,
        )
        loaded = time.perf_counter() - t0
        first = warm_first(scorer, shapes)
        rest = 0.0 if staged else warm_rest(scorer, shapes)
        stages = self.metrics.warmup_seconds
        stages.labels(stage="load").set(loaded)
        stages.labels(stage="first").set(first)
        if not staged:
            stages.labels(stage="background").set(rest)
        log.info(
            "model %s: artifact and entity tables read in %.1fs, first shapes compiled in %.1fs%s",
            scorer.model_version,
            loaded,
            first,
            "; the rest compile in the background" if staged else f", the rest in {rest:.1f}s",
        )
        return scorer, shapes

    def _warm_rest_in_background(self, scorer: Scorer, shapes: CompiledShapes) -> None:
        def done(seconds: float) -> None:
            self.metrics.warmup_seconds.labels(stage="background").set(seconds)
            log.info(
                "model %s: every shape compiled (%.1fs in the background)",
                scorer.model_version,
                seconds,
            )

        self._background = (shapes, start_background(scorer, shapes, done))

    async def _stop_background(self) -> None:
        """End the background warm-up after its current shape (a swap or shutdown)."""
        if self._background is not None:
            shapes, thread = self._background
            self._background = None
            shapes.stopping.set()
            await asyncio.to_thread(thread.join)

    def _install(self, scorer: Scorer, path: Path) -> None:
        previous = self.scorer
        self.scorer = scorer  # the swap: one reference assignment
        if previous is not None and previous.corrections is not None:
            previous.corrections.discard_backlog()  # the old version's: counted as dropped
        self.path = Path(path)
        self.loaded_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.load_error = None
        backbone = str(scorer.artifact.manifest.get("backbone", {}).get("name", "unknown"))
        self.metrics.set_model(scorer.model_version, backbone)
        logs.set_model_version(scorer.model_version)
        if self.group is not None:
            self.group.announce(
                WorkerState(os.getpid(), scorer.model_version, backbone, self.generation)
            )

    async def _freeze(self) -> None:
        # On the scorer thread, after the batch in flight: that batch may still hold the
        # previous model, which must be unreferenced before it is collected.
        await self.batcher.run_between_batches(freeze_long_lived)

    def score(self, requests: Sequence[ScoreInput]) -> ScoreBatch:
        scorer = self.scorer
        if scorer is None:
            raise ModelNotReadyError(self.not_ready_reason())
        return scorer.score(requests)

    def not_ready_reason(self) -> str:
        if self.load_error:
            return f"model not loaded: {self.load_error}"
        return "model is loading and warming up"

    async def start(self) -> None:
        """Start the batcher and load the configured model in the background."""
        await self.batcher.start()
        self._initial = asyncio.create_task(self._load_initial(), name="levi-initial-load")

    async def _load_initial(self) -> None:
        path = self.settings.model_dir
        applied = self.group.serving() if self.group is not None else None
        if applied is not None:  # a worker started after a reload serves what the others do
            path, self.generation = Path(applied.path), applied.generation
        t0 = time.perf_counter()
        try:
            staged = self.settings.warmup == "first"
            scorer, shapes = await asyncio.to_thread(self.build, path, staged=staged)
        except Exception as e:  # keep serving /healthz and /readyz with the reason
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("could not load the model from %s: %s", path, self.load_error)
            return
        self._install(scorer, path)
        await self._freeze()
        log.info(
            "serving model %s from %s (ready after %.1fs)",
            scorer.model_version,
            path,
            time.perf_counter() - t0,
        )
        if staged:
            self._warm_rest_in_background(scorer, shapes)
        if self.group is not None:
            self._watcher = asyncio.create_task(self._watch_reloads(), name="levi-reloads")

    async def _watch_reloads(self, interval_s: float = 0.25) -> None:
        """Several workers: apply every reload the group asks for (service/workers.py)."""
        assert self.group is not None
        while True:
            await asyncio.sleep(interval_s)
            request = self.group.reload_request()
            if request is None or request.generation <= self.generation:
                continue
            error = None
            try:
                await self.reload(Path(request.path), generation=request.generation)
            except ReloadConflictError:
                continue  # one is running here; the request is looked at again
            except ReloadError as e:
                error = str(e)
            except Exception as e:  # keep watching: the old model serves on
                log.exception("reload from %s failed", request.path)
                error = f"{type(e).__name__}: {e}"
            if error is not None:
                self.generation = request.generation
                scorer = self.scorer
                backbone = scorer.artifact.manifest.get("backbone", {}) if scorer else {}
                self.group.announce(
                    WorkerState(
                        os.getpid(),
                        scorer.model_version if scorer else "none",
                        str(backbone.get("name", "unknown")),
                        self.generation,
                        error,
                    )
                )

    async def wait_ready(self) -> None:
        if self._initial is not None:
            await self._initial

    async def reload(
        self, path: Path | None, *, generation: int | None = None
    ) -> tuple[str, str, float]:
        """Load, warm and swap in a new model.

        Args:
            generation: the worker group's reload this is (several workers), announced with
                the new model.

        Returns:
            ``(previous version, new version, seconds)``.

        Raises:
            ReloadConflictError: another reload is running.
            ReloadError: the artifact was refused; the old model keeps serving.
        """
        if self._reload_lock.locked():
            raise ReloadConflictError("a reload is already running; retry when it has finished")
        async with self._reload_lock:
            target = Path(path) if path is not None else self.settings.model_dir
            previous = self.scorer.model_version if self.scorer else "none"
            t0 = time.perf_counter()
            try:
                scorer, _ = await asyncio.to_thread(self.build, target)
            except Exception as e:
                self.metrics.model_reloads.labels(result="failure").inc()
                log.warning("reload from %s refused: %s: %s", target, type(e).__name__, e)
                raise ReloadError(
                    f"artifact {target} refused ({type(e).__name__}: {e}); "
                    f"still serving model {previous}"
                ) from e
            await self._stop_background()  # the old model's: the new one is all compiled
            if generation is not None and self.group is not None:
                self.generation = generation
                self.group.record_serving(target, generation)
            self._install(scorer, target)
            await self._freeze()
            self.metrics.model_reloads.labels(result="success").inc()
            seconds = time.perf_counter() - t0
            log.info("reloaded: %s -> %s in %.1fs", previous, scorer.model_version, seconds)
            return previous, scorer.model_version, seconds

    async def stop(self) -> None:
        for task in (self._initial, self._watcher):
            if task is not None and not task.done():
                task.cancel()
        await self._stop_background()
        await self.batcher.stop()
        if self.feedback_log is not None:
            self.feedback_log.close()
        if self.redis is not None:
            self.redis.close()
