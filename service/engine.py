"""The serving engine: the loaded versions, rollout changes and the micro-batcher.

What is served is a :class:`service.versions.Rollout`: a champion, optionally a challenger
(canary and shadow traffic) and the previous champion. Every change (a reload, a new or
retired challenger, a promotion, a rollback, the gate's decision) is a new
:class:`~service.versions.RolloutPlan`: versions it names that are not loaded yet are loaded
and warmed (service/version_loading.py) on a background thread at a lower CPU priority, then
the whole rollout is swapped in with one assignment. A request reads the rollout once and is
scored by the version it chose, so in-flight requests finish on the versions they started
with. A failed load leaves everything as it was. Versions with the same backbone share its
parameters, compiled shapes and activation cache, so a retrained challenger costs its head
and projections only.

The first model of a start is ready once the shapes first traffic needs are compiled; the
rest compile in the background while it serves (service/warmup.py). A reload warms every
shape before the swap, since the old model serves meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from model.compilation_cache import enable_compilation_cache
from model.native_heap import release_free_heap
from service import logs
from service.batcher import MicroBatcher
from service.catalog import Catalog
from service.catalog_warmer import CatalogWarmer
from service.errors import ModelNotReadyError, ReloadConflictError, ReloadError
from service.feedback_log import FeedbackLog
from service.gate import Gate
from service.group_changes import watch_changes
from service.metrics import Metrics
from service.online_eval import OnlineEvaluation
from service.prediction_log import PredictionLog
from service.results import ScoreBatch
from service.scorer import ScoreInput, Scorer
from service.scorer_setup import make_redis_tier
from service.settings import Settings
from service.version_loading import VersionLoader
from service.versions import Rollout, RolloutPlan, Version, configured_trial
from service.workers import WorkerGroup, WorkerState

log = logging.getLogger(__name__)


# The cyclic collector's thresholds while serving (CPython's default: 700, 10, 10). A warm
# prediction leaves about 18 container objects to the young generation (dicts, tuples,
# futures that reference counting frees later), so the default ran a young collection every
# ~40 predictions and a full one (about 25 ms over the caches' objects) every ~4,000, 7% of
# the event loop's time at 1,200 predictions/s; these thresholds cut that to about 2%
# (docs/PROFILING.md, "Third pass"). Garbage in cycles waits longer: a few MB at most.
COLLECTOR_THRESHOLDS = (10_000, 20, 20)


def tune_collector() -> None:
    """Set the serving process's collector thresholds (:data:`COLLECTOR_THRESHOLDS`)."""
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def freeze_long_lived() -> None:
    """Take every object alive now out of the cyclic garbage collector's scans.

    The model, its entity tables and the imported libraries live as long as the process; a
    full collection walks all of them while every in-flight request waits (docs/PROFILING.md,
    "the p99 tail was the garbage collector"). Frozen objects are still freed by
    reference counting; the previous model's cycles are collected first, by unfreezing. Run
    it on the scorer thread between batches (:meth:`Engine._freeze`).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    release_free_heap()  # what the load's compiles and the old model freed (model/native_heap.py)


def freeze_new() -> None:
    """:func:`freeze_long_lived` without the full collection, when nothing was unloaded: only
    what was added since is frozen (a full collection pauses every request for the whole
    heap's scan; docs/PROFILING.md, "Safe rollout")."""
    gc.freeze()
    release_free_heap()


class Engine:
    """Owns the served versions and everything that scores with them.

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
        self.predictions: PredictionLog | None = None
        self.online: OnlineEvaluation | None = None
        if settings.online_eval:
            self.predictions = PredictionLog(
                metrics,
                redis_tier=self.redis,
                ttl_s=settings.prediction_ttl_s,
                max_pairs=settings.prediction_log_size,
                queue_pairs=settings.prediction_queue,
                key_prefix=settings.online_key_prefix,
            )
            self.online = OnlineEvaluation(
                self.predictions,
                metrics,
                redis_tier=self.redis,
                ttl_s=settings.online_eval_ttl_s,
                key_prefix=settings.online_key_prefix,
            )
        self.catalog: Catalog | None = None
        if settings.catalog_dir is not None:
            self.catalog = Catalog(
                settings.catalog_dir,
                metrics,
                redis_tier=self.redis,
                key_prefix=settings.catalog_key_prefix,
                sync_s=settings.catalog_sync_s,
                rotate_bytes=settings.catalog_rotate_bytes,
                rotate_s=settings.catalog_rotate_s,
                warmer=CatalogWarmer(
                    self._served_scorers,
                    lambda: self.batcher.pending > 0,
                    metrics,
                    queue_bound=settings.catalog_warm_queue,
                    step_tokens=settings.catalog_warm_tokens,
                ),
            )
        self.rollout: Rollout | None = None
        self.load_error: str | None = None
        self.batcher = MicroBatcher(
            self.score,
            metrics,
            max_batch=settings.max_batch,
            max_delay_s=settings.max_delay_ms / 1000.0,
            queue_bound=settings.queue_bound,
            background_bound=settings.shadow_queue_bound,
            prepare=self.prepare,
            queue_tokens=settings.queue_tokens,
            slice_pairs=settings.slice_pairs,
        )
        self._change_lock = asyncio.Lock()
        self._initial: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self.gate = Gate(self)
        self.loader = VersionLoader(settings, metrics, self.redis)
        self.generation = 0  # the last change of the worker group applied (several workers)

    # -- what is served -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.rollout is not None

    @property
    def scorer(self) -> Scorer | None:
        """The champion's scorer (None before the first model is loaded)."""
        rollout = self.rollout
        return rollout.champion.scorer if rollout is not None else None

    @property
    def path(self) -> Path | None:
        rollout = self.rollout
        return rollout.champion.path if rollout is not None else None

    @property
    def loaded_at(self) -> str | None:
        rollout = self.rollout
        return rollout.champion.loaded_at if rollout is not None else None

    def _served_scorers(self) -> list[Scorer]:
        """The scorers of the versions that answer (champion, challenger)."""
        rollout = self.rollout
        return [v.scorer for v in rollout.served()] if rollout is not None else []

    async def _open_catalog(self, rollout: Rollout) -> None:
        """Hold the catalog of the data set ``rollout``'s champion was trained on (nothing
        to do when it is open already). A catalog that cannot be read is logged; scoring
        goes on without it."""
        if self.catalog is None:
            return
        dataset = str(rollout.champion.scorer.artifact.dataset.get("name") or "")
        try:
            await asyncio.to_thread(self.catalog.open, dataset)
        except Exception:
            log.exception("the catalog of %r could not be opened", dataset)

    def plan(self) -> RolloutPlan:
        """The plan being served (raises ModelNotReadyError before the first load)."""
        rollout = self.rollout
        if rollout is None:
            raise ModelNotReadyError(self.not_ready_reason())
        return rollout.plan()

    def not_ready_reason(self) -> str:
        if self.load_error:
            return f"model not loaded: {self.load_error}"
        return "model is loading and warming up"

    # -- loading --------------------------------------------------------------------------

    async def _load(self, plan: RolloutPlan, *, initial: bool) -> Rollout:
        """The rollout of ``plan``: loaded versions reused, the others loaded (in order)."""
        return await self.loader.load(plan, self.rollout, initial=initial)

    def _install(self, rollout: Rollout) -> set[int]:
        """Swap ``rollout`` in; the ids of the versions it keeps."""
        previous = self.rollout
        self.rollout = rollout  # the swap: one reference assignment
        kept = {id(v) for v, _ in rollout.versions()}
        if previous is not None:
            for v, _ in previous.versions():
                if id(v) not in kept and v.scorer.corrections is not None:
                    v.scorer.corrections.discard_backlog()  # counted as dropped
        self.load_error = None
        champion = rollout.champion
        backbone = str(champion.scorer.artifact.manifest.get("backbone", {}).get("name", "unknown"))
        self.metrics.set_model(champion.model_version, backbone)
        self.metrics.set_versions(
            {a: v.model_version for a, v in rollout.aliases().items()}, rollout.canary
        )
        logs.set_model_version(champion.model_version)
        if self.group is not None:
            self.group.announce(
                WorkerState(os.getpid(), champion.model_version, backbone, self.generation)
            )
        return kept

    async def _freeze(self, collect: bool = True) -> None:
        # On the scorer thread, after the batch in flight: that batch may still hold the
        # previous model, which must be unreferenced before it is collected.
        await self.batcher.run_between_batches(freeze_long_lived if collect else freeze_new)

    # -- scoring --------------------------------------------------------------------------

    def _scorer(self, target: Scorer | None) -> Scorer:
        """``target``, or the champion's scorer (raises ModelNotReadyError before a load)."""
        scorer = target if target is not None else self.scorer
        if scorer is None:
            raise ModelNotReadyError(self.not_ready_reason())
        return scorer

    def score(
        self, target: Scorer | None, requests: Sequence[ScoreInput], background: bool = False
    ) -> ScoreBatch:
        """Score with ``target`` (default: the champion); background (shadow) work stays out
        of the serving metrics and drift windows."""
        return self._scorer(target).score(requests, observe=not background)

    def prepare(self, target: Scorer | None, requests: Sequence[ScoreInput], state):
        """One bounded step of a large job's preparation (``Scorer.prepare``)."""
        return self._scorer(target).prepare(requests, self.settings.step_tokens, state)

    def answered(
        self, rollout: Rollout, version: Version, inputs: Sequence[ScoreInput], batch: ScoreBatch
    ) -> None:
        """After an answer: log its predictions for the online evaluation and queue its shadow
        scoring (never blocks, never fails the answer)."""
        users = [r.user_id for r in inputs]
        items = [r.item_id for r in inputs]
        if self.predictions is not None:
            self.predictions.record(version.model_version, users, items, batch)
        shadow = rollout.shadow_of(version)
        if shadow is None:
            return

        def done(result: ScoreBatch | None) -> None:
            if result is None:
                self.metrics.shadow.labels(result="expired").inc(len(inputs))
                return
            self.metrics.shadow.labels(result="scored").inc(len(inputs))
            if self.predictions is not None:
                self.predictions.record(shadow.model_version, users, items, result)

        queued = self.batcher.submit_background(
            list(inputs), shadow.scorer, self.settings.shadow_timeout_s, done
        )
        if not queued:
            self.metrics.shadow.labels(result="dropped").inc(len(inputs))

    # -- start, changes, stop -------------------------------------------------------------

    async def start(self) -> None:
        """Start the batcher and load the configured versions in the background."""
        await self.batcher.start()
        if self.catalog is not None and self.catalog.warmer is not None:
            self.catalog.warmer.start()
        self._initial = asyncio.create_task(self._load_initial(), name="levi-initial-load")

    def _configured_plan(self) -> RolloutPlan:
        s = self.settings
        challenger = str(Path(s.challenger_dir).resolve()) if s.challenger_dir else None
        champion = str(Path(s.model_dir).resolve())
        if challenger == champion:
            challenger = None
        return RolloutPlan(
            champion=champion,
            challenger=challenger,
            canary=s.canary if challenger else 0.0,
            shadow=s.shadow and challenger is not None,
            # The same in every worker and replica started with these settings.
            trial=configured_trial(champion, challenger) if challenger else None,
        )

    async def _load_initial(self) -> None:
        plan = None
        applied = self.group.serving() if self.group is not None else None
        if applied is not None:  # a worker started after a change serves what the others do
            plan, self.generation = RolloutPlan.from_json(applied.plan), applied.generation
        t0 = time.perf_counter()
        try:
            plan = plan or self._configured_plan()
            try:
                rollout = await self._load(plan, initial=True)
            except Exception as e:
                if plan.paths == (plan.champion,):
                    raise
                # A challenger or previous version that cannot be loaded must not keep the
                # champion from serving: serve it alone, and say why.
                log.error(
                    "could not load %s (%s: %s); serving the champion alone",
                    ", ".join(p for p in plan.paths if p != plan.champion),
                    type(e).__name__,
                    e,
                )
                await self.loader.stop_background()
                plan = RolloutPlan(plan.champion)
                rollout = await self._load(plan, initial=True)
        except Exception as e:  # keep serving /healthz and /readyz with the reason
            self.load_error = f"{type(e).__name__}: {e}"
            log.error(
                "could not load the model from %s: %s", self.settings.model_dir, self.load_error
            )
            await self.loader.stop_background()
            return
        await self._open_catalog(rollout)
        self._install(rollout)
        await self._freeze()
        log.info(
            "serving model %s from %s (ready after %.1fs)%s",
            rollout.champion.model_version,
            rollout.champion.path,
            time.perf_counter() - t0,
            f"; challenger {rollout.challenger.model_version} (canary {rollout.canary:g}, "
            f"shadow {'on' if rollout.shadow else 'off'})"
            if rollout.challenger
            else "",
        )
        if self.group is not None:
            self._watcher = asyncio.create_task(watch_changes(self), name="levi-rollouts")

    async def wait_ready(self) -> None:
        if self._initial is not None:
            await self._initial

    async def apply(
        self, plan: RolloutPlan, *, generation: int | None = None
    ) -> tuple[Rollout | None, Rollout, float]:
        """Load what ``plan`` needs (at a lower priority, while the current versions serve),
        then swap it in.

        Args:
            generation: the worker group's change this is (several workers), announced with
                the new state.

        Returns:
            ``(rollout before, rollout after, seconds)``.

        Raises:
            ReloadConflictError: another change is running.
            ReloadError: an artifact was refused; everything keeps serving as it was.
        """
        if self._change_lock.locked():
            raise ReloadConflictError(
                "a reload or rollout change is already running; retry when it has finished"
            )
        async with self._change_lock:
            before = self.rollout
            t0 = time.perf_counter()
            try:
                rollout = await self._load(plan, initial=before is None)
            except Exception as e:
                self.metrics.model_reloads.labels(result="failure").inc()
                serving = before.champion.model_version if before else "none"
                missing = [
                    p
                    for p in plan.paths
                    if before is None or p not in {str(v.path) for v, _ in before.versions()}
                ]
                log.warning("loading %s refused: %s: %s", missing, type(e).__name__, e)
                raise ReloadError(
                    f"artifact {', '.join(missing)} refused ({type(e).__name__}: {e}); "
                    f"still serving model {serving}"
                ) from e
            if generation is not None and self.group is not None:
                self.generation = generation
                self.group.record_serving(plan.to_json(), generation)
            await self._open_catalog(rollout)
            loaded = before is None or any(
                id(v) not in {id(x) for x, _ in before.versions()} for v, _ in rollout.versions()
            )
            unloaded = before is not None and any(
                id(v) not in {id(x) for x, _ in rollout.versions()} for v, _ in before.versions()
            )
            kept = self._install(rollout)
            if loaded and self.catalog is not None:
                self.catalog.warm_all()  # the new version's projections of registered entities
            await self.loader.stop_background(keep=kept)
            await self._freeze(collect=unloaded)
            self.metrics.model_reloads.labels(result="success").inc()
            seconds = time.perf_counter() - t0
            log.info(
                "rollout: champion %s, challenger %s (canary %g, shadow %s), previous %s (%.1fs)",
                rollout.champion.model_version,
                rollout.challenger.model_version if rollout.challenger else "none",
                rollout.canary,
                "on" if rollout.shadow else "off",
                rollout.previous.model_version if rollout.previous else "none",
                seconds,
            )
            return before, rollout, seconds

    async def change(
        self, plan: RolloutPlan, *, decision: str, trigger: str, figures: dict | None = None
    ) -> tuple[str, RolloutPlan, float]:
        """Apply ``plan`` in this process, or in every worker (several workers), then log and
        count the decision.

        Returns:
            ``(the champion version before, the plan now served, seconds)``.

        Raises:
            ReloadConflictError: another change is running.
            ReloadError: a version was refused (by some worker); nothing changed there.
        """
        before = self.scorer.model_version if self.scorer else "none"
        t0 = time.perf_counter()
        if self.group is None:
            await self.apply(plan)
        else:
            await self._change_every_worker(plan)
        seconds = time.perf_counter() - t0
        self.metrics.rollout_decisions.labels(decision=decision, trigger=trigger).inc()
        log.warning(
            "rollout decision %s (%s): champion %s -> %s, challenger %s (canary %g, shadow "
            "%s), previous %s%s",
            decision,
            trigger,
            before,
            Path(plan.champion).name,
            Path(plan.challenger).name if plan.challenger else "none",
            plan.canary,
            "on" if plan.shadow else "off",
            Path(plan.previous).name if plan.previous else "none",
            f"; figures {figures}" if figures else "",
        )
        return before, plan, seconds

    async def _change_every_worker(self, plan: RolloutPlan, timeout_s: float = 600.0) -> None:
        """Ask every worker to apply ``plan``; return once all have.

        Raises:
            ReloadConflictError: an earlier change has not reached every worker yet.
            ReloadError: some worker refused it (the reason of the first), or did not apply it
                within ``timeout_s``.
        """
        group = self.group
        assert group is not None
        try:
            generation = group.request_rollout(plan.to_json())
        except RuntimeError as e:
            raise ReloadConflictError(str(e)) from None
        log.info("rollout change %d asked of all %d workers", generation, group.expected)
        states = await group.wait_applied(generation, timeout_s)
        late = [st.pid for st in states if st.generation < generation]
        refused = [st for st in states if st.generation >= generation and st.error]
        if refused:
            log.warning(
                "change refused by %d of %d workers: %s",
                len(refused),
                len(states),
                refused[0].error,
            )
            if len(refused) == len(states):
                group.record_refused(generation, self.plan().to_json())
            raise ReloadError(f"{refused[0].error} (in {len(refused)} of {len(states)} workers)")
        if late:
            raise ReloadError(
                f"worker(s) {late} had not applied the change after {timeout_s:g}s; they serve "
                "their old versions until they do (levi_model_version_info)"
            )

    async def stop(self) -> None:
        for task in (self._initial, self._watcher):
            if task is not None and not task.done():
                task.cancel()
        self.gate.stop()
        await self.loader.stop_background()
        await self.batcher.stop()
        if self.feedback_log is not None:
            self.feedback_log.close()
        if self.catalog is not None:
            if self.catalog.warmer is not None:
                await asyncio.to_thread(self.catalog.warmer.stop)
            await asyncio.to_thread(self.catalog.close)
        if self.online is not None:
            self.online.close()
        if self.redis is not None:
            self.redis.close()
