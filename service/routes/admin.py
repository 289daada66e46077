"""Admin endpoints (bearer token): reload, and the rollout of a new version next to the
champion: ``PUT|DELETE /admin/challenger``, ``POST /admin/promote``, ``POST /admin/rollback``.

Every change is a new plan of what to serve (service/versions.py), applied by
:meth:`service.engine.Engine.change`: versions not loaded yet are loaded and warmed while the
current ones serve, then the whole rollout is swapped in. With several workers
(``--workers N``) every worker applies it; the answer comes once all have. A refused artifact
leaves everything serving as it was (409).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from service.deps import AdminDep, EngineDep
from service.engine import Engine
from service.schemas import (
    ChallengerRequest,
    ErrorResponse,
    ReloadRequest,
    ReloadResponse,
    RolloutResponse,
)
from service.versions import RolloutPlan

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])
log = logging.getLogger(__name__)
ADMIN_ERRORS = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    409: {
        "model": ErrorResponse,
        "description": "artifact refused, another change running, or the change does not fit "
        "what is served (e.g. no challenger to promote)",
    },
    503: {"model": ErrorResponse, "description": "no model loaded yet"},
}


def _artifact_dir(path: str, loc: tuple) -> str:
    """``path`` resolved (``latest`` names the version it points at now).

    Raises:
        RequestValidationError: 422 naming ``loc`` when it is not a directory.
    """
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir():
        raise RequestValidationError(
            [
                {
                    "type": "path_not_directory",
                    "loc": loc,
                    "msg": f"{path} is not an artifact directory on the server (expected "
                    "artifacts/<model_version>, as written by `make train`)",
                    "input": path,
                }
            ]
        )
    return str(resolved)


async def _change(engine: Engine, plan: RolloutPlan, decision: str) -> RolloutResponse:
    _, applied, seconds = await engine.change(plan, decision=decision, trigger="admin")
    rollout = engine.rollout
    assert rollout is not None
    return RolloutResponse(
        decision=decision,
        champion=rollout.champion.model_version,
        challenger=rollout.challenger.model_version if rollout.challenger else None,
        previous=rollout.previous.model_version if rollout.previous else None,
        canary=applied.canary,
        shadow=applied.shadow,
        seconds=round(seconds, 3),
    )


@router.post("/reload", responses=ADMIN_ERRORS)
async def reload(engine: EngineDep, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load ``path`` (default: the configured model dir) as champion, warm it, then swap
    atomically; the champion it replaces stays loaded as ``previous`` (instant rollback).

    A refused artifact (checksum, format, platform, ...) leaves the old model serving.
    """
    if body and body.path:
        target = _artifact_dir(body.path, ("body", "path"))
    else:
        target = str(Path(engine.settings.model_dir).resolve())
    current = engine.plan() if engine.rollout is not None else None
    plan = current.reload(target) if current is not None else RolloutPlan(target)
    before, _, seconds = await engine.change(plan, decision="reload", trigger="admin")
    versions = (
        sorted({s.model_version for s in engine.group.ready_workers()})
        if engine.group
        else [engine.scorer.model_version]
    )
    return ReloadResponse(
        previous_version=before,
        model_version=", ".join(versions),
        path=target,
        seconds=round(seconds, 3),
    )


@router.put("/challenger", responses=ADMIN_ERRORS)
async def put_challenger(engine: EngineDep, body: ChallengerRequest) -> RolloutResponse:
    """Serve the artifact at ``path`` as challenger: ``canary`` share of users (0-1, sticky
    by user-id hash), ``shadow`` scoring of the other version's answers. Loading it does not
    stop the champion from serving; the same path again only changes its traffic."""
    target = _artifact_dir(body.path, ("body", "path"))
    current = engine.plan()
    plan = current.with_challenger(target, body.canary, body.shadow)
    return await _change(engine, plan, "challenger")


@router.delete("/challenger", responses=ADMIN_ERRORS)
async def delete_challenger(engine: EngineDep) -> RolloutResponse:
    """Retire the challenger: its users go back to the champion, it is unloaded."""
    current = engine.plan()
    return await _change(engine, current.without_challenger(), "remove_challenger")


@router.post("/promote", responses=ADMIN_ERRORS)
async def promote(engine: EngineDep) -> RolloutResponse:
    """The challenger becomes champion (for every user, at once: it is loaded and warm); the
    champion stays loaded as ``previous``."""
    current = engine.plan()
    return await _change(engine, current.promote(), "promote")


@router.post("/rollback", responses=ADMIN_ERRORS)
async def rollback(engine: EngineDep) -> RolloutResponse:
    """``previous`` becomes champion again, at once (it is still loaded: nothing compiles);
    the rolled-back version is unloaded."""
    current = engine.plan()
    return await _change(engine, current.rollback(), "rollback")
