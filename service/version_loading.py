"""Loading the versions a rollout plan names (``service/engine.py`` swaps them in).

A version is its artifact read (:func:`model.artifact.load_artifact`: checksum,
format-version and platform checks), a scorer built on it and its shapes compiled. Versions
with the same backbone share its parameters, compiled shapes and activation cache, so a
retrained challenger costs its head and projections only. At a start nothing serves yet: a
version is ready once the shapes first traffic needs are compiled, the rest compile in the
background (service/warmup.py). While other versions serve, a load runs on its own thread at
a lower CPU priority and warms every shape before it is returned.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from model.native_heap import release_free_heap
from service.batcher import lower_thread_priority
from service.scorer_setup import build_scorer
from service.versions import Rollout, RolloutPlan, Version, check_challenger
from service.warmup import CompiledShapes, start_background, warm_first, warm_rest

if TYPE_CHECKING:
    from service.cache import RedisTier
    from service.metrics import Metrics
    from service.settings import Settings

# The engine's logger: load lines are read (and filtered) as the engine's, as before they
# moved here.
log = logging.getLogger("service.engine")
T = TypeVar("T")


async def on_own_thread(fn: Callable[[], T], name: str) -> T:
    """``fn()`` on a new thread (not the shared pool, whose threads other work reuses: a
    priority set inside ``fn`` dies with this thread)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as e:  # delivered to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, future, None, e)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


def _settle(future: asyncio.Future, result: object, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class VersionLoader:
    """Loads and warms versions for one engine, and holds the background warm-ups of a
    staged start until their versions are unloaded."""

    def __init__(self, settings: Settings, metrics: Metrics, redis: RedisTier | None):
        self.settings = settings
        self.metrics = metrics
        self.redis = redis
        # Background warm-ups (staged start) by version: stopped when the version is unloaded.
        self._background: dict[int, tuple[CompiledShapes, threading.Thread]] = {}

    def build(
        self, path: Path, *, staged: bool = False, loaded: tuple[Version, ...] = ()
    ) -> Version:
        """Load and warm the artifact at ``path`` (blocking; run off the event loop).

        Args:
            staged: warm only what first traffic needs (service/warmup.py, stage 1); the
                caller starts the rest with :func:`service.warmup.start_background`.
                Otherwise every shape is compiled before this returns.
            loaded: versions already loaded; one with the same backbone lends it (its
                parameters, compiled shapes and activation cache).
        """
        from model.artifact import load_artifact

        t0 = time.perf_counter()
        root = Path(path).resolve()
        donor = next(
            (
                v
                for v in loaded
                if v.scorer.artifact.manifest["backbone"].get("fingerprint")
                == _fingerprint_at(root)
            ),
            None,
        )
        artifact = load_artifact(root, backbone_of=donor.shapes._artifact if donor else None)
        shared = (
            donor is not None
            and artifact.exported_backbone is donor.scorer.artifact.exported_backbone
        )
        shapes = CompiledShapes(
            artifact, self.metrics, backbone_from=donor.shapes if shared else None
        )
        scorer = build_scorer(
            shapes,
            self.settings,
            self.metrics,
            redis=self.redis,
            warm=False,
            corrections=self.settings.corrections,
            cache=donor.scorer.cache if shared else None,
        )
        loaded_s = time.perf_counter() - t0
        first = warm_first(scorer, shapes)
        rest = 0.0 if staged else warm_rest(scorer, shapes)
        stages = self.metrics.warmup_seconds
        stages.labels(stage="load").set(loaded_s)
        stages.labels(stage="first").set(first)
        if not staged:
            stages.labels(stage="background").set(rest)
        log.info(
            "model %s: artifact and entity tables read in %.1fs%s, first shapes compiled in "
            "%.1fs%s",
            scorer.model_version,
            loaded_s,
            f" (backbone shared with {donor.model_version})" if shared else "",
            first,
            "; the rest compile in the background" if staged else f", the rest in {rest:.1f}s",
        )
        return Version(
            scorer=scorer,
            shapes=shapes,
            path=root,
            loaded_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            load_seconds=time.perf_counter() - t0,
        )

    def _build_while_serving(self, path: Path, loaded: tuple[Version, ...]) -> Version:
        """:meth:`build` of every shape at a lower CPU priority (run on its own thread)."""
        lower_thread_priority(self.settings.load_niceness)
        return self.build(path, loaded=loaded)

    def _warm_rest_in_background(self, version: Version) -> None:
        scorer, shapes = version.scorer, version.shapes

        def done(seconds: float) -> None:
            release_free_heap()  # the compiles' temporaries
            self.metrics.warmup_seconds.labels(stage="background").set(seconds)
            log.info(
                "model %s: every shape compiled (%.1fs in the background)",
                scorer.model_version,
                seconds,
            )

        self._background[id(version)] = (shapes, start_background(scorer, shapes, done))

    async def stop_background(self, keep: set[int] | None = None) -> None:
        """End background warm-ups (of versions not in ``keep``) after their current shape."""
        for key in [k for k in self._background if keep is None or k not in keep]:
            shapes, thread = self._background.pop(key)
            shapes.stopping.set()
            await asyncio.to_thread(thread.join)

    async def load(self, plan: RolloutPlan, current: Rollout | None, *, initial: bool) -> Rollout:
        """The rollout of ``plan``: the versions of ``current`` reused, the others loaded (in
        order).

        Args:
            initial: nothing serves yet: each version is ready after its first shapes (with
                ``LEVI_WARMUP=first``), the rest compile in the background.
        """
        have = {str(v.path): v for v, _ in current.versions()} if current is not None else {}
        versions: dict[str, Version] = {}
        for p in plan.paths:
            if p in have:
                versions[p] = have[p]
                continue
            loaded = tuple(have.values()) + tuple(versions.values())
            if initial:  # nothing serves yet: ready after the first shapes of each
                staged = self.settings.warmup == "first"
                version = await asyncio.to_thread(self.build, Path(p), staged=staged, loaded=loaded)
                if staged:
                    self._warm_rest_in_background(version)
            else:
                version = await on_own_thread(
                    functools.partial(self._build_while_serving, Path(p), loaded), "levi-load"
                )
            versions[p] = version
        check_challenger(versions[plan.champion], versions.get(plan.challenger or ""))
        return Rollout(
            champion=versions[plan.champion],
            challenger=versions[plan.challenger] if plan.challenger else None,
            previous=versions[plan.previous] if plan.previous else None,
            canary=plan.canary if plan.challenger else 0.0,
            shadow=plan.shadow and plan.challenger is not None,
            trial=plan.trial if plan.challenger else None,
        )


def _fingerprint_at(root: Path) -> str | None:
    """The backbone fingerprint an artifact's manifest names (None when unreadable: the load
    then reports why)."""
    try:
        return str(json.loads((root / "manifest.json").read_text())["backbone"]["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
