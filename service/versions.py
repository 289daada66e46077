"""The versions a service holds: the ``champion``, an optional ``challenger`` and the
``previous`` champion, and how traffic is split between them.

Two shapes of the same thing:

- :class:`RolloutPlan`: paths and traffic, plain JSON. Admin calls compute the next plan
  (:meth:`RolloutPlan.promote`, :meth:`~RolloutPlan.rollback`, ...); with several workers the
  plan is what they exchange (service/workers.py), so every worker ends up with the same.
- :class:`Rollout`: the plan with every version loaded (:class:`Version`: scorer and compiled
  shapes). The engine swaps it in with one assignment (service/engine.py); a request reads it
  once and is answered by the version it chose (:meth:`Rollout.route`).

The model repository is the artifacts directory: a version is ``artifacts/<model_version>/``
(paths are resolved, so ``artifacts/latest`` names the version it points at when asked).
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.entity_fields import describe
from service.errors import RolloutError, UnknownVersionError
from service.routing import in_canary

if TYPE_CHECKING:
    from service.scorer import Scorer
    from service.warmup import CompiledShapes

ALIASES = ("champion", "challenger", "previous")
VERSION_HEADER = "X-Model-Version"


@dataclass(frozen=True)
class RolloutPlan:
    """What to serve, by artifact path (resolved version directories).

    Attributes:
        champion: answers everyone outside the canary.
        challenger: answers the canary share of users (and shadows the champion).
        previous: the champion before the last promotion or reload, kept loaded so that a
            rollback is instant.
        canary: share of users (0-1, by a hash of the user id) answered by the challenger.
        shadow: the challenger also scores what the champion answers, and the champion what
            the challenger answers, off the request path (for the paired comparison).
        trial: names this challenger's trial against this champion (new whenever either
            changes): the comparison and the gate count only the feedback of their trial, so
            an earlier trial's figures (a challenger removed, then tried again) never decide.
    """

    champion: str
    challenger: str | None = None
    previous: str | None = None
    canary: float = 0.0
    shadow: bool = False
    trial: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.canary <= 1.0:
            raise ValueError(f"canary share must be within [0, 1], got {self.canary}")

    @property
    def paths(self) -> tuple[str, ...]:
        """The distinct paths the plan loads, champion first."""
        out = [self.champion, self.challenger, self.previous]
        return tuple(dict.fromkeys(p for p in out if p is not None))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(doc: dict[str, Any]) -> RolloutPlan:
        names = {f.name for f in dataclasses.fields(RolloutPlan)}
        return RolloutPlan(**{k: v for k, v in doc.items() if k in names})

    # -- the changes an operator (or the gate) asks for ----------------------------------

    def with_challenger(self, path: str, canary: float, shadow: bool) -> RolloutPlan:
        """``path`` as challenger with this traffic (replacing any challenger)."""
        if path == self.champion:
            raise RolloutError(f"{path} is the champion already; a challenger must differ")
        trial = self.trial if path == self.challenger and self.trial else uuid.uuid4().hex[:12]
        return dataclasses.replace(self, challenger=path, canary=canary, shadow=shadow, trial=trial)

    def without_challenger(self) -> RolloutPlan:
        """The challenger retired (its traffic goes back to the champion)."""
        if self.challenger is None:
            raise RolloutError("there is no challenger to remove")
        return dataclasses.replace(self, challenger=None, canary=0.0, shadow=False, trial=None)

    def promote(self) -> RolloutPlan:
        """The challenger becomes champion; the champion becomes ``previous``."""
        if self.challenger is None:
            raise RolloutError(
                "there is no challenger to promote; set one with PUT /admin/challenger"
            )
        return RolloutPlan(champion=self.challenger, previous=self.champion)

    def rollback(self) -> RolloutPlan:
        """``previous`` becomes champion again; the rolled-back champion is unloaded."""
        if self.previous is None:
            raise RolloutError(
                "there is no previous version to roll back to (none was promoted or reloaded "
                "in this process's lifetime)"
            )
        challenger = self.challenger if self.challenger != self.previous else None
        return dataclasses.replace(
            self,
            champion=self.previous,
            previous=None,
            challenger=challenger,
            canary=self.canary if challenger else 0.0,
            shadow=self.shadow if challenger else False,
            trial=uuid.uuid4().hex[:12] if challenger else None,  # another champion
        )

    def reload(self, path: str) -> RolloutPlan:
        """``path`` becomes champion (``POST /admin/reload``); the champion it replaces is
        kept as ``previous`` unless it is the same version."""
        previous = self.champion if self.champion != path else self.previous
        challenger = self.challenger if self.challenger != path else None
        return dataclasses.replace(
            self,
            champion=path,
            previous=previous if previous != path else None,
            challenger=challenger,
            canary=self.canary if challenger else 0.0,
            shadow=self.shadow if challenger else False,
            trial=uuid.uuid4().hex[:12] if challenger else None,  # another champion
        )


@dataclass(frozen=True, eq=False)
class Version:
    """One loaded artifact version."""

    scorer: Scorer
    shapes: CompiledShapes
    path: Path  # the resolved version directory
    loaded_at: str  # ISO 8601, UTC
    load_seconds: float

    @property
    def model_version(self) -> str:
        return self.scorer.model_version


@dataclass(frozen=True, eq=False)
class Rollout:
    """The served versions and their traffic (a :class:`RolloutPlan`, loaded)."""

    champion: Version
    challenger: Version | None = None
    previous: Version | None = None
    canary: float = 0.0
    shadow: bool = False
    trial: str | None = None

    def plan(self) -> RolloutPlan:
        return RolloutPlan(
            champion=str(self.champion.path),
            challenger=str(self.challenger.path) if self.challenger else None,
            previous=str(self.previous.path) if self.previous else None,
            canary=self.canary,
            shadow=self.shadow,
            trial=self.trial,
        )

    def trial_pair(self) -> tuple[str, str, str] | None:
        """``(champion version, challenger version, trial)`` while a challenger is served."""
        if self.challenger is None:
            return None
        return (self.champion.model_version, self.challenger.model_version, self.trial or "")

    def aliases(self) -> dict[str, Version]:
        """``alias -> version`` of the aliases in use."""
        out = {"champion": self.champion}
        if self.challenger is not None:
            out["challenger"] = self.challenger
        if self.previous is not None:
            out["previous"] = self.previous
        return out

    def versions(self) -> list[tuple[Version, list[str]]]:
        """Each loaded version once, with its aliases (champion first)."""
        out: dict[int, tuple[Version, list[str]]] = {}
        for alias, v in self.aliases().items():
            out.setdefault(id(v), (v, []))[1].append(alias)
        return list(out.values())

    def named(self, name: str) -> Version:
        """The version of an alias or a model version.

        Raises:
            UnknownVersionError: nothing loaded has that name.
        """
        aliases = self.aliases()
        if name in aliases:
            return aliases[name]
        for v in aliases.values():
            if v.model_version == name:
                return v
        loaded = ", ".join(f"{a}={v.model_version}" for a, v in aliases.items())
        raise UnknownVersionError(
            f"{VERSION_HEADER}: {name!r} is neither an alias nor a loaded model version "
            f"(loaded: {loaded})"
        )

    def route(self, user_id: str, requested: str | None = None) -> Version:
        """The version that answers ``user_id``: the one ``requested`` (alias or model
        version) when given, else the challenger for users in the canary share, else the
        champion."""
        if requested:
            return self.named(requested)
        if self.challenger is not None and in_canary(user_id, self.canary):
            return self.challenger
        return self.champion

    def shadow_of(self, answered: Version) -> Version | None:
        """The version that shadows an answer of ``answered`` (None without shadow mode)."""
        if not self.shadow or self.challenger is None:
            return None
        if answered is self.champion:
            return self.challenger
        if answered is self.challenger:
            return self.champion
        return None

    def served(self) -> list[Version]:
        """The versions that answer traffic: the champion, and the challenger if any."""
        return [self.champion] + ([self.challenger] if self.challenger is not None else [])


def check_challenger(champion: Version, challenger: Version | None) -> None:
    """Refuse a challenger that could not answer the champion's requests: another dataset
    spec's fields (a canary user's request would be a 422), or the champion's own model
    version (predictions and figures would mix).

    Raises:
        ValueError: naming what differs (the change is refused, 409).
    """
    if challenger is None:
        return
    if challenger.model_version == champion.model_version:
        raise ValueError(
            f"{challenger.path} has model version {challenger.model_version}, the champion's "
            f"({champion.path}); a challenger must be another version"
        )
    mine, theirs = describe(champion.scorer.features), describe(challenger.scorer.features)
    if mine != theirs:
        raise ValueError(
            f"{challenger.path} takes other request fields than the champion ({theirs} vs "
            f"{mine}): requests valid for one would be refused by the other; serve it with "
            "POST /admin/reload instead"
        )


def configured_trial(champion: str, challenger: str) -> str:
    """The trial of a challenger set in the settings: named by the two artifact directories,
    so every worker and replica started with them counts the same trial (and a restart
    continues it)."""
    return hashlib.blake2b(f"{champion}\n{challenger}".encode(), digest_size=6).hexdigest()
