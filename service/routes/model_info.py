"""``GET /v1/model``: a summary of the served artifact's manifest."""

from __future__ import annotations

from fastapi import APIRouter

from model.corrections import DEFAULT_SHRINKAGE
from service.corrections import shrinkage_of
from service.deps import EngineDep
from service.entity_fields import describe
from service.errors import ModelNotReadyError
from service.schemas import (
    BackboneSummary,
    CorrectionsSummary,
    DatasetSummary,
    ErrorResponse,
    ModelResponse,
)

router = APIRouter(tags=["model"])


def _corrections(scorer) -> CorrectionsSummary:
    online = scorer.corrections
    if online is not None:
        shrinkage, fitted = online.shrinkage, bool(scorer.artifact.manifest.get("corrections"))
    else:  # off: the manifest's values are only shown, never used; a bad one is no error here
        try:
            shrinkage, fitted = shrinkage_of(scorer.artifact.manifest), True
        except ValueError:
            shrinkage, fitted = DEFAULT_SHRINKAGE, False
        fitted = fitted and bool(scorer.artifact.manifest.get("corrections"))
    return CorrectionsSummary(
        enabled=online is not None,
        shared=online is not None and online.redis is not None,
        **shrinkage.to_json(),
        fitted=fitted,
    )


@router.get("/v1/model", responses={503: {"model": ErrorResponse}})
async def model_summary(engine: EngineDep) -> ModelResponse:
    """The served model: version, backbone, text views, adapter layers, the dataset spec's
    request fields and split, tables, calibration, online corrections."""
    scorer = engine.scorer
    if scorer is None:
        raise ModelNotReadyError(engine.not_ready_reason())
    art = scorer.artifact
    manifest = art.manifest
    backbone = manifest.get("backbone", {})
    cfg = scorer.head_config
    ood = dict(manifest.get("ood_score") or {})
    ood.setdefault(
        "disagreement_quantiles", [float(q) for q in art.reference.disagreement_quantiles]
    )
    return ModelResponse(
        model_version=scorer.model_version,
        format_version=manifest.get("format_version"),
        created_at=manifest.get("created_at"),
        path=str(engine.path),
        backbone=BackboneSummary(
            name=str(backbone.get("name", "unknown")),
            fingerprint=str(backbone.get("fingerprint", "")),
            n_layers=scorer.cache.shape[0],
            hidden_size=scorer.cache.shape[1],
            max_length=scorer.tokenizer.max_length,
        ),
        views=[v.name for v in scorer.views.views],
        layers=list(scorer.layers),
        rating_range=(float(cfg.rating_min), float(cfg.rating_max)),
        dataset=DatasetSummary(
            name=str(art.dataset.get("name", "unknown")),
            fields=describe(scorer.features),
            split=dict(art.dataset.get("split") or {}),
            na_values=list(art.dataset.get("na_values") or [""]),
        ),
        n_users=scorer.n_users,
        n_items=scorer.n_items,
        activation_dtype=str(scorer.cache.dtype),
        loaded_at=engine.loaded_at or "",
        ood_score=ood,
        corrections=_corrections(scorer),
    )
