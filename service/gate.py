"""The automatic gate (``LEVI_GATE``): promote a challenger that errs less than the champion,
retire one that errs more, judged by the feedback of their trial (``service/online_eval.py``).

It looks at the trial's sums at ``LEVI_GATE_MIN_EVENTS`` joined events of the challenger
(paired ones with shadow), then at each doubling, each look at a stricter confidence
(``service.online_stats.look_confidence``), so repeated looks keep the configured one
overall. A decision is applied as an admin's is (:meth:`service.engine.Engine.change`),
logged with its figures and counted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from service.errors import ReloadConflictError, ReloadError, RolloutError
from service.online_stats import decision, look_confidence

if TYPE_CHECKING:
    from service.online_eval import OnlineEvaluation
    from service.settings import Settings
    from service.versions import Rollout, RolloutPlan

log = logging.getLogger(__name__)


class Changes(Protocol):
    """What the gate reads and calls of its engine (``service.engine.Engine``)."""

    settings: Settings
    rollout: Rollout | None
    online: OnlineEvaluation | None

    async def change(
        self, plan: RolloutPlan, *, decision: str, trigger: str, figures: dict | None = None
    ) -> tuple[str, RolloutPlan, float]: ...


class Gate:
    """The gate of one engine: one look at a time, off the request path."""

    def __init__(self, engine: Changes):
        self.engine = engine
        self._task: asyncio.Task | None = None
        self._looks: set[tuple[str | None, int]] = set()  # (trial, look) already taken

    def consider(self) -> None:
        """After feedback was joined: take the next look if it is due (never blocks)."""
        engine = self.engine
        rollout = engine.rollout
        if not engine.settings.gate or engine.online is None or rollout is None:
            return
        if rollout.challenger is None or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.create_task(self._look(), name="levi-gate")

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _look(self) -> None:
        engine, s = self.engine, self.engine.settings
        rollout = engine.rollout
        if rollout is None or rollout.challenger is None or engine.online is None:
            return
        pair = rollout.trial_pair()
        sums = await asyncio.to_thread(engine.online.trial_sums, pair)
        if engine.rollout is not rollout:
            return
        counts = engine.online.comparison(
            sums, pair, rating=s.gate_rating, confidence=s.gate_confidence
        )
        evidence = counts["n"] if counts["kind"] == "paired" else counts["challenger_events"]
        look = look_confidence(evidence, s.gate_min_events, s.gate_confidence)
        if look is None or (rollout.trial, look[0]) in self._looks:
            return
        self._looks.add((rollout.trial, look[0]))
        comparison = engine.online.comparison(sums, pair, rating=s.gate_rating, confidence=look[1])
        verdict = decision(comparison, s.gate_min_events)
        log.info(
            "gate look %d of trial %s at %d events (confidence %.4f): %s, interval %s",
            look[0],
            rollout.trial,
            evidence,
            look[1],
            verdict or "no decision",
            comparison.get("ci"),
        )
        if verdict is None:
            return
        plan = rollout.plan()
        try:
            new = plan.promote() if verdict == "promote" else plan.without_challenger()
        except RolloutError:
            return
        keys = ("kind", "n", "clusters", "mean_diff", "ci", "confidence")
        name = "promote" if verdict == "promote" else "remove_challenger"
        try:
            await engine.change(
                new, decision=name, trigger="gate", figures={k: comparison.get(k) for k in keys}
            )
        except (ReloadConflictError, ReloadError) as e:  # the next look tries again
            self._looks.discard((rollout.trial, look[0]))
            log.warning("gate decision %s not applied: %s", name, e)
