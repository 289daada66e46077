"""``GET /metrics``: Prometheus text exposition (of every worker, when there are several)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import MetricsDep
from service.metrics import exposition

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, metrics: MetricsDep) -> Response:
    """Every ``levi_*`` metric (service/metrics.py), summed over the server's workers."""
    group = getattr(request.app.state, "workers", None)
    if group is not None:
        group.prune()  # a killed worker's live gauges (model info, drift) leave the scrape
    return Response(exposition(metrics), media_type=CONTENT_TYPE_LATEST)
