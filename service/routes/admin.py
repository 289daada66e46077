"""``POST /admin/reload``: load, warm and swap in a new artifact (bearer token).

With several workers (``--workers N``) every worker reloads in place, each serving its old
model until the new one is warm; the answer comes once all have (service/workers.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fastapi import APIRouter, HTTPException, status

from service.deps import AdminDep, EngineDep
from service.engine import Engine, ReloadConflictError, ReloadError
from service.schemas import ErrorResponse, ReloadRequest, ReloadResponse

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])
log = logging.getLogger(__name__)
RELOAD_TIMEOUT_S = 600.0  # several workers: how long the answer waits for all of them


@router.post(
    "/reload",
    responses={
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse},
        409: {"model": ErrorResponse, "description": "artifact refused or reload running"},
    },
)
async def reload(engine: EngineDep, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load ``path`` (default: the configured model dir), warm it, then swap atomically.

    A refused artifact (checksum, format, platform, ...) leaves the old model serving.
    """
    path = Path(body.path) if body and body.path else None
    if engine.group is not None:
        return await _reload_every_worker(engine, path)
    try:
        previous, version, seconds = await engine.reload(path)
    except (ReloadConflictError, ReloadError) as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    return ReloadResponse(
        previous_version=previous,
        model_version=version,
        path=str(engine.path),
        seconds=round(seconds, 3),
    )


async def _reload_every_worker(engine: Engine, path: Path | None) -> ReloadResponse:
    """Several workers: ask each to reload ``path``, answer once all have (or say who not)."""
    group = engine.group
    target = path if path is not None else engine.settings.model_dir
    previous = engine.scorer.model_version if engine.scorer else "none"
    t0 = time.perf_counter()
    try:
        generation = group.request_reload(target)
    except RuntimeError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    log.info("reload %d of %s asked of all %d workers", generation, target, group.expected)
    states = await group.wait_applied(generation, RELOAD_TIMEOUT_S)
    late = [s.pid for s in states if s.generation < generation]
    refused = [s for s in states if s.generation >= generation and s.error]
    if refused:
        log.warning(
            "reload refused by %d of %d workers: %s", len(refused), len(states), refused[0].error
        )
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"{refused[0].error} (in {len(refused)} of {len(states)} workers)",
        )
    if late:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"worker(s) {late} had not applied the reload after {RELOAD_TIMEOUT_S:g}s; "
            "they serve their old model until they do (levi_model_info)",
        )
    versions = sorted({s.model_version for s in states})
    return ReloadResponse(
        previous_version=previous,
        model_version=", ".join(versions),
        path=str(target),
        seconds=round(time.perf_counter() - t0, 3),
    )
