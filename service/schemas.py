"""Request and response bodies of the HTTP API, named by role."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
)
from typing_extensions import TypedDict

from model.timestamps import MAX_SECONDS, MIN_SECONDS, RULE, TimestampError, to_seconds

MAX_ID_LENGTH = 64

# Numbers and switches of request bodies take their own JSON type only: `true` is no count
# (pydantic's lax mode reads it as 1), `"3"` no rating and `1` no boolean. Response models keep
# the plain types (they are built from our own values).
StrictNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]

EntityId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_LENGTH),
    Field(examples=["196"]),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


EntityFields = Annotated[
    dict[str, Any],
    Field(
        description="fields of the served model's dataset spec (GET /v1/model lists them; "
        "an unknown field or a wrong type is a 422 naming it)",
        max_length=256,
        examples=[{"title": "Kolya (1996)"}],
    ),
]


class PredictRequest(_Strict):
    """One user–item pair to rate. Known ids need nothing else; request fields override."""

    user_id: EntityId
    item_id: EntityId
    user: EntityFields | None = None
    item: EntityFields | None = None


class AdapterRating(BaseModel):
    """The rating of the adapter on one encoder layer (1-based)."""

    layer: int
    rating: float


class ColdStart(BaseModel):
    """Which side of the pair the model has not seen (served through the OOV slot + text)."""

    user: bool
    item: bool


class Corrections(BaseModel):
    """Online offsets learned from ``POST /feedback`` since the model version was installed."""

    user: float
    item: float


Source = Literal["request", "catalog", "model", "unknown"]
SOURCE_DESCRIPTION = (
    "where the entity's fields came from, highest precedence first: request (the request's "
    "fields, over any other), catalog (its record: PUT /v1/items/{item_id}), model (the "
    "model's tables), unknown (a cold start without fields)"
)


class Sources(BaseModel):
    """Where each side's fields came from (request > catalog > model > unknown)."""

    user: Source
    item: Source


class PredictResponse(BaseModel):
    """A predicted rating with the per-layer adapter ratings behind it."""

    rating: float = Field(
        description="the answer: model_rating plus the online corrections, clipped to the "
        "rating range"
    )
    adapters: list[AdapterRating] = Field(description="the model's per-layer ratings")
    ood_score: float = Field(description="how unfamiliar the pair looks (see GET /v1/model)")
    model_version: str
    cold_start: ColdStart
    warnings: list[str] = Field(default_factory=list)
    model_rating: float = Field(description="the model's own rating: the adapters' mean, clipped")
    corrections: Corrections = Field(description="offsets added to model_rating (0 when off)")
    sources: Sources = Field(description=SOURCE_DESCRIPTION)


class BatchPredictRequest(_Strict):
    """Several pairs at once; answers come back in the same order."""

    requests: list[PredictRequest] = Field(min_length=1)


class BatchPredictResponse(BaseModel):
    predictions: list[PredictResponse]


# A validated dict, not a model instance: a /rank of 10,000 candidates builds 10,000 of
# them, and pydantic validates a list of dicts about 2x faster than one of models (fewer
# objects for the cyclic collector to walk, too). Unknown keys are still a 422
# (extra_forbidden, naming candidates.<i>.<key>), as in every request body.
class RankCandidate(TypedDict):
    """One item to rank; an unknown item needs its fields for a good answer (cold start)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    item_id: EntityId
    item: NotRequired[EntityFields | None]


class RankRequest(_Strict):
    """Candidates for one user, to be ordered by predicted rating."""

    user_id: EntityId
    user: EntityFields | None = None
    candidates: list[RankCandidate] = Field(
        min_length=1,
        description="each item_id at most once (a repeated one is a 422 naming it)",
    )
    top_k: StrictInt | None = Field(
        None, ge=1, description="return only the best k (default: all); a JSON integer"
    )
    adapters: StrictBool = Field(
        False, description="include each candidate's per-adapter ratings (true or false)"
    )


class RankedItem(BaseModel):
    """A candidate with its predicted rating."""

    item_id: str
    rating: float
    model_rating: float = Field(description="the model's own rating, before corrections")
    ood_score: float
    cold_start: bool = Field(description="the item is not in the model's tables")
    source: Source = Field(description=SOURCE_DESCRIPTION)
    warnings: list[str] = Field(default_factory=list)
    adapters: list[AdapterRating] | None = None


class RankResponse(BaseModel):
    """Candidates sorted by rating, highest first (ties keep the request's order)."""

    model_version: str
    user_id: str
    cold_start: bool = Field(description="the user is not in the model's tables")
    user_source: Source = Field(description=SOURCE_DESCRIPTION)
    ranked: list[RankedItem]


EventId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[A-Za-z0-9_.:-]+$"),
]


def _seconds(value: Any) -> int:
    try:
        return to_seconds(value)
    except TimestampError as e:  # a 422 naming body.events.<i>.timestamp
        raise ValueError(str(e)) from None


# model/timestamps.py: numbers are seconds (never milliseconds, whatever their size), strings
# ISO 8601 with an offset within ±18:00, in [1970-01-01, 2262-04-11).
Timestamp = Annotated[
    int,
    BeforeValidator(_seconds),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": MIN_SECONDS, "exclusiveMaximum": MAX_SECONDS},
                {"type": "string", "description": "ISO 8601 date or date-time"},
            ],
            "description": RULE,
        }
    ),
]


class FeedbackEvent(_Strict):
    """A rating a user gave, for the online corrections and the next retraining."""

    event_id: EventId | None = Field(
        None,
        description="a globally unique id of the event (e.g. a UUID), sent again unchanged "
        "with a retry: a request retried with the same ids is not learned twice, and "
        "retraining counts each id once; the same id with another payload is a 409; "
        "default: the service assigns one",
    )
    user_id: EntityId
    item_id: EntityId
    rating: StrictNumber = Field(
        description="a JSON number inside the served model's rating range (GET /v1/model)"
    )
    timestamp: Timestamp | None = Field(
        None,
        description="when it was rated: seconds since 1970-01-01T00:00:00Z as a number, or "
        "ISO 8601 (no offset = UTC; offsets within ±18:00), from 1970-01-01 up to (not "
        "including) 2262-04-11; anything else is a 422 naming it; default: when the service "
        "received it",
        examples=["2026-11-30T04:30:00Z", 1764477000],
    )
    user: EntityFields | None = None
    item: EntityFields | None = None


class FeedbackRequest(_Strict):
    """Ratings users gave; each is logged durably, then applied to the corrections."""

    events: list[FeedbackEvent] = Field(min_length=1)


class FeedbackResponse(BaseModel):
    """What happened to the events (all of them, or the request failed)."""

    accepted: int = Field(description="events written to the feedback log")
    event_ids: list[str] = Field(description="their ids (yours or the service's), in order")
    duplicates: int = Field(
        0, description="events whose event_id was already received: logged, not learned again"
    )
    model_version: str = Field(description="the model whose ratings the residuals are of")
    corrections: str = Field(
        description="applied (to the corrections: Redis's, shared by every replica, or this "
        "process's without Redis), kept (Redis is down or behind: applied in this process, "
        "replayed to Redis when it answers), duplicate (every event_id was already received), "
        "off (LEVI_CORRECTIONS=0) or skipped (the model was reloaded while they were scored, "
        "or applying them failed: a retry with the same ids is learned)"
    )


# -- the online catalog (service/catalog.py) -------------------------------------------------

CatalogFields = Annotated[
    dict[str, Any],
    Field(
        description="the entity's fields, as the served model's dataset spec declares them "
        "(GET /v1/model lists them; an unknown field or a wrong type is a 422 naming it; a "
        "field left out or null falls back to the model's tables)",
        max_length=256,
        examples=[{"title": "Alien (1979)"}],
    ),
]


class CatalogItemPut(_Strict):
    """An item's record: replaces any earlier record of the id."""

    fields: CatalogFields


class CatalogUserPut(_Strict):
    """A user's record: replaces any earlier record of the id."""

    fields: CatalogFields


class CatalogItemEntry(_Strict):
    item_id: EntityId
    fields: CatalogFields


class CatalogUserEntry(_Strict):
    user_id: EntityId
    fields: CatalogFields


class CatalogItemsRequest(_Strict):
    """Item records to register at once (each id once)."""

    items: list[CatalogItemEntry] = Field(min_length=1)


class CatalogUsersRequest(_Strict):
    """User records to register at once (each id once)."""

    users: list[CatalogUserEntry] = Field(min_length=1)


Shared = Literal["applied", "kept", "local"]
SHARED_DESCRIPTION = (
    "applied (written to Redis: every replica answers with it within LEVI_CATALOG_SYNC_S plus "
    "one read, about 1 s), kept (Redis did not answer: logged and served by this process, "
    "written to Redis when it answers), local (no Redis: this process and the workers "
    "sharing its log directory, within the same bound)"
)


class CatalogWriteResponse(BaseModel):
    """Records accepted: on disk (the catalog log) before this answer."""

    kind: Literal["user", "item"]
    dataset: str = Field(description="the data set the records belong to (the served model's)")
    accepted: int
    ids: list[str]
    shared: Shared = Field(description=SHARED_DESCRIPTION)
    queued_encodes: int = Field(
        description="records queued for their text to be encoded and projected off the "
        "request path (the others, beyond LEVI_CATALOG_WARM_QUEUE, on first use)"
    )


class CatalogRecordResponse(BaseModel):
    """A registered entity's record."""

    kind: Literal["user", "item"]
    id: str
    dataset: str
    fields: dict[str, Any]
    version: int = Field(description="microseconds of the accepting process's clock")
    updated_at: str = Field(description="when it was accepted (ISO 8601, UTC)")
    origin: str = Field(description="put, bulk or import (how it was written)")
    written_by: str = Field(description="the accepting process's catalog log")
    known_to_model: bool = Field(
        description="the served model's tables hold the id (its record then overrides their "
        "fields); false: a cold start answered from the record's fields"
    )
    model_version: str
    shared: bool = Field(description="the catalog is shared through Redis")


class CatalogDeleteResponse(BaseModel):
    kind: Literal["user", "item"]
    id: str
    dataset: str
    deleted: bool
    shared: Shared = Field(description=SHARED_DESCRIPTION)


class ReloadRequest(_Strict):
    """``path``: an artifact version directory; default: the configured model dir."""

    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None


class ReloadResponse(BaseModel):
    previous_version: str
    model_version: str
    path: str
    seconds: float


class ChallengerRequest(_Strict):
    """A version to try next to the champion (``PUT /admin/challenger``)."""

    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        description="the artifact version directory (artifacts/<model_version>, or the latest "
        "link, resolved when asked)"
    )
    canary: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        strict=True,
        description="share of users (sticky by a hash of the user id) it answers",
    )
    shadow: bool = Field(
        False,
        strict=True,
        description="also score, off the request path, what the other version answers "
        "(for the paired comparison)",
    )


class RolloutResponse(BaseModel):
    """What is served after a rollout change."""

    decision: str = Field(
        description="challenger, remove_challenger, promote, rollback (or reload)"
    )
    champion: str
    challenger: str | None = None
    previous: str | None = None
    canary: float = 0.0
    shadow: bool = False
    seconds: float = Field(description="time the change took (loading a new version included)")


class OnlineFigures(BaseModel):
    """A version judged by the feedback joined with its logged predictions."""

    n: int = Field(description="feedback events joined with this version's predictions")
    rmse: float | None = Field(description="of the served rating (online corrections included)")
    mae: float | None = None
    model: dict = Field(description="rmse and mae of the model's own rating")
    slices: dict = Field(
        description="the same per slice: cold_item / known_item, ood_high / ood_low (ood_score "
        "above or not above its training median)"
    )


class VersionEntry(BaseModel):
    model_version: str
    aliases: list[str] = Field(description="champion, challenger, previous")
    path: str
    loaded_at: str
    traffic: float = Field(description="share of users it answers (by user-id hash)")
    shadow: bool = Field(description="it also scores the other version's answers, off path")
    online: OnlineFigures


class ModelsResponse(BaseModel):
    """Every loaded version, its traffic and how it does on live feedback."""

    versions: list[VersionEntry]
    comparison: dict | None = Field(
        description="challenger minus champion in squared error: kind (paired on pairs both "
        "predicted, or unpaired), n, clusters, mean_diff, ci (the interval, or null with too "
        "few user clusters), confidence, rating (model or served), interval (how it is "
        "computed)"
    )
    gate: dict = Field(description="the automatic gate's settings and its verdict now")
    source: str = Field(
        description="redis (every replica's feedback) or process (this process's: no Redis, "
        "or it did not answer)"
    )


class BackboneSummary(BaseModel):
    name: str
    fingerprint: str
    n_layers: int
    hidden_size: int
    max_length: int = Field(
        description="token limit: each text view is cut to this many tokens, special tokens "
        "included (the backbone checkpoint's own limit unless training lowered it)"
    )


class RequestField(BaseModel):
    """A field the ``user`` / ``item`` objects accept (a declared column of the spec)."""

    name: str
    kind: str = Field(description="categorical, multi_categorical, numeric or text")
    json_type: str
    mlp: bool = Field(description="read by the embedding MLP (else only by the text views)")
    sep: str | None = Field(
        None,
        description="multi_categorical: a string value may list the values separated by it "
        "(else the values come as an array)",
    )


class DatasetSummary(BaseModel):
    """The dataset spec the model was trained on."""

    name: str
    fields: dict[str, list[RequestField]] = Field(description="per entity: user, item")
    split: dict = Field(default_factory=dict, description="the ID/OOD split of training")
    na_values: list[str] = Field(
        default_factory=lambda: [""],
        description="cell texts the spec's files read as missing (for tools that read files "
        "as training did, e.g. python -m service.catalog_import)",
    )


class CorrectionsSummary(BaseModel):
    """The online corrections of ``POST /feedback`` on this model (README: "Feedback")."""

    enabled: bool = Field(description="LEVI_CORRECTIONS")
    shared: bool = Field(description="kept in Redis for every replica (else this process's)")
    k_item: float = Field(description="shrinkage of item offsets (ratings at half weight)")
    k_user: float
    k_item_oov: float | None = Field(
        None, description="shrinkage of cold-start (out-of-vocabulary) items' offsets"
    )
    fitted: bool = Field(description="k fitted at training time (else the defaults)")


class ModelResponse(BaseModel):
    """Summary of the served artifact's manifest."""

    model_version: str
    format_version: int | str | None
    created_at: str | None
    path: str
    backbone: BackboneSummary
    views: list[str]
    layers: list[int] = Field(description="1-based encoder layers that have an adapter")
    rating_range: tuple[float, float]
    dataset: DatasetSummary
    n_users: int
    n_items: int
    activation_dtype: str
    loaded_at: str
    ood_score: dict = Field(default_factory=dict, description="calibration of ood_score")
    corrections: CorrectionsSummary


class StatusResponse(BaseModel):
    status: str
    model_version: str | None = None


class ErrorResponse(BaseModel):
    detail: str | list
