"""``GET /healthz`` (process alive) and ``GET /readyz`` (model loaded and warmed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import EngineDep
from service.schemas import ErrorResponse, StatusResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> StatusResponse:
    """Alive: the process answers HTTP."""
    return StatusResponse(status="ok")


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(engine: EngineDep) -> StatusResponse:
    """Ready: a model is loaded and warmed for every batch and length bucket in use."""
    if engine.scorer is None:
        return JSONResponse(  # type: ignore[return-value]
            {"detail": engine.not_ready_reason()}, status_code=503, headers={"Retry-After": "5"}
        )
    return StatusResponse(status="ready", model_version=engine.scorer.model_version)
