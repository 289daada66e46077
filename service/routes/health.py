"""``GET /healthz`` (process alive) and ``GET /readyz`` (model loaded and warmed).

With several workers, ``/readyz`` is 200 only when every worker has its model (see
service/workers.py), whichever worker answers it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.deps import EngineDep
from service.schemas import ErrorResponse, StatusResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> StatusResponse:
    """Alive: the process answers HTTP."""
    return StatusResponse(status="ok")


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(request: Request, engine: EngineDep) -> StatusResponse:
    """Ready: a model is loaded and warmed for the shapes first traffic needs (the rest
    compile in the background: ``levi_warmup_pending_shapes``), in every worker."""
    group = request.app.state.workers
    reason = (
        engine.not_ready_reason()
        if engine.scorer is None
        else (group.not_ready_reason() if group is not None else None)
    )
    if reason is not None:
        return JSONResponse(  # type: ignore[return-value]
            {"detail": reason}, status_code=503, headers={"Retry-After": "5"}
        )
    return StatusResponse(status="ready", model_version=engine.scorer.model_version)
