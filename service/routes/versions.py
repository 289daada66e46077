"""``GET /v1/models``: the loaded versions, their traffic, and how each does on the ratings
users sent back (online evaluation), with the challenger-vs-champion comparison and the
gate's verdict."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from service.deps import EngineDep, SettingsDep
from service.online_stats import decision, summarize
from service.schemas import ErrorResponse, ModelsResponse
from service.scoring import served_rollout

router = APIRouter(tags=["model"])


@router.get("/v1/models", responses={503: {"model": ErrorResponse}})
async def models(engine: EngineDep, settings: SettingsDep) -> ModelsResponse:
    """Versions (``champion``, ``challenger``, ``previous``), traffic, online figures."""
    rollout = served_rollout(engine)
    loaded = rollout.versions()
    names = [v.model_version for v, _ in loaded]
    pair = rollout.trial_pair()
    if engine.online is not None:
        per_version, comparison, source = await asyncio.to_thread(
            engine.online.report,
            names,
            pair,
            rating=settings.gate_rating,
            confidence=settings.gate_confidence,
        )
    else:
        per_version, comparison, source = {v: summarize({}) for v in names}, None, "off"
    traffic = {id(rollout.champion): 1.0 - (rollout.canary if rollout.challenger else 0.0)}
    if rollout.challenger is not None:
        traffic[id(rollout.challenger)] = rollout.canary
    verdict = decision(comparison, settings.gate_min_events) if comparison else None
    return ModelsResponse(
        versions=[
            {
                "model_version": v.model_version,
                "aliases": aliases,
                "path": str(v.path),
                "loaded_at": v.loaded_at,
                "traffic": traffic.get(id(v), 0.0),
                "shadow": rollout.shadow and rollout.shadow_of(v) is not None,
                "online": per_version[v.model_version],
            }
            for v, aliases in loaded
        ],
        comparison=comparison,
        gate={
            "enabled": settings.gate,
            "min_events": settings.gate_min_events,
            "confidence": settings.gate_confidence,
            "rating": settings.gate_rating,
            "verdict": verdict,
            "looks": "at min_events joined events of the challenger (paired events with "
            "shadow), then at each doubling; look k at confidence 1 - (1 - confidence) / "
            "2^(k+1), so repeated looks keep the configured confidence overall",
        },
        source=source,
    )
