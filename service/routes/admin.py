"""``POST /admin/reload``: load, warm and swap in a new artifact (bearer token)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status

from service.deps import AdminDep, EngineDep
from service.engine import ReloadConflictError, ReloadError
from service.schemas import ErrorResponse, ReloadRequest, ReloadResponse

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])


@router.post(
    "/reload",
    responses={
        401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
        409: {"model": ErrorResponse, "description": "artifact refused or reload running"},
    },
)  # fmt: skip
async def reload(engine: EngineDep, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load ``path`` (default: the configured model dir), warm it, then swap atomically.

    A refused artifact (checksum, format, platform, ...) leaves the old model serving.
    """
    path = Path(body.path) if body and body.path else None
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
