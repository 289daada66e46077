"""Rollout changes across the workers of one server (``--workers N``, service/workers.py).

The worker that takes an admin call (or whose gate decides) writes the whole plan to the
shared directory and waits until every live worker has applied or refused it
(:meth:`service.engine.Engine.change`); each worker watches for new plans and applies them in
place, its old versions serving until the new ones are warm (:func:`watch_changes`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Protocol

from service.errors import ReloadConflictError, ReloadError
from service.versions import RolloutPlan
from service.workers import WorkerState

if TYPE_CHECKING:
    from service.scorer import Scorer
    from service.versions import Rollout
    from service.workers import WorkerGroup


class GroupMember(Protocol):
    """What watching the group reads and calls of a worker's engine (``service.engine``)."""

    group: WorkerGroup | None
    generation: int

    @property
    def scorer(self) -> Scorer | None: ...

    async def apply(
        self, plan: RolloutPlan, *, generation: int | None = None
    ) -> tuple[Rollout | None, Rollout, float]: ...


log = logging.getLogger(__name__)


async def watch_changes(engine: GroupMember, interval_s: float = 0.25) -> None:
    """Apply every change the group asks for, announcing a refusal with its reason."""
    group = engine.group
    assert group is not None
    while True:
        await asyncio.sleep(interval_s)
        request = group.rollout_request()
        if request is None or request.generation <= engine.generation:
            continue
        error = None
        try:
            await engine.apply(RolloutPlan.from_json(request.plan), generation=request.generation)
        except ReloadConflictError:
            continue  # one is running here; the request is looked at again
        except ReloadError as e:
            error = str(e)
        except Exception as e:  # keep watching: the old versions serve on
            log.exception("rollout change %d failed", request.generation)
            error = f"{type(e).__name__}: {e}"
        if error is not None:
            engine.generation = request.generation
            scorer = engine.scorer
            backbone = scorer.artifact.manifest.get("backbone", {}) if scorer else {}
            group.announce(
                WorkerState(
                    os.getpid(),
                    scorer.model_version if scorer else "none",
                    str(backbone.get("name", "unknown")),
                    engine.generation,
                    error,
                )
            )
