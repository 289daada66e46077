"""``POST /admin/reload``: load, warm and swap in a new artifact (bearer token).

One worker: the model is swapped in place (200 once it serves). Several workers
(``--workers N``): the artifact at ``LEVI_MODEL_DIR`` is checked here, then every worker is
replaced in turn, each new one serving once its model is warm (202 at once: the worker
answering is itself replaced; watch ``levi_model_info`` or ``GET /v1/model``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse

from service.deps import AdminDep, EngineDep
from service.engine import Engine, ReloadConflictError, ReloadError
from service.schemas import ErrorResponse, ReloadRequest, ReloadResponse, StatusResponse

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])
log = logging.getLogger(__name__)


@router.post(
    "/reload",
    responses={
        202: {"model": StatusResponse, "description": "several workers: each is replaced in turn"},
        401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
        409: {"model": ErrorResponse, "description": "artifact refused or reload running"},
    },
)  # fmt: skip
async def reload(engine: EngineDep, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load ``path`` (default: the configured model dir), warm it, then swap atomically.

    A refused artifact (checksum, format, platform, ...) leaves the old model serving.
    """
    path = Path(body.path) if body and body.path else None
    if engine.group is not None:
        return await _replace_workers(engine, path)  # type: ignore[return-value]
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


async def _replace_workers(engine: Engine, path: Path | None) -> JSONResponse:
    """Several workers: check the artifact, then have the supervisor replace every worker.

    A new worker reads ``LEVI_MODEL_DIR`` like the first ones did, so only that directory can
    be reloaded (point its ``latest`` link at the new version).
    """
    from model.artifact import load_artifact

    configured = engine.settings.model_dir
    if path is not None and path.resolve() != configured.resolve():
        log.warning("reload refused: %s is not LEVI_MODEL_DIR (%s)", path, configured)
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"with {engine.group.expected} workers a reload loads LEVI_MODEL_DIR ({configured}) "
            f"in new workers, not {path}: point {configured} at the new version (e.g. the "
            "artifacts' latest link) and reload without a path",
        )
    try:  # refuse a bad artifact here, before any worker is replaced
        artifact = await asyncio.to_thread(load_artifact, configured)
    except Exception as e:
        engine.metrics.model_reloads.labels(result="failure").inc()
        current = engine.scorer.model_version if engine.scorer else "none"
        log.warning("reload refused: %s: %s: %s", configured, type(e).__name__, e)
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"artifact {configured} refused ({type(e).__name__}: {e}); "
            f"still serving model {current}",
        ) from None
    version = artifact.model_version
    del artifact
    try:
        engine.group.restart_all()
    except RuntimeError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    log.info("reload: replacing all %d workers to serve model %s from %s",
             engine.group.expected, version, configured)  # fmt: skip
    return JSONResponse(
        StatusResponse(status="reloading", model_version=version).model_dump(),
        status_code=status.HTTP_202_ACCEPTED,
    )
