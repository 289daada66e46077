"""The online catalog: ``PUT|GET|DELETE /v1/items/{item_id}`` and ``/v1/users/{user_id}``, bulk
``POST /v1/items`` and ``POST /v1/users``.

A record's fields are checked against the served model's dataset spec exactly as a request's
``item`` / ``user`` objects are (a 422 naming ``body.fields.<field>``); accepted records are
written to the catalog log and synced to disk before the answer (``service/catalog.py``), then
shared (Redis) and queued for projection off the request path. Scoring then reads them for
ids the request sends without fields: request fields > catalog > the model's tables.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import StringConstraints

from service.catalog import Catalog, WriteResult
from service.deps import EngineDep, SettingsDep
from service.engine import Engine
from service.entity_fields import check_entity_fields
from service.errors import (
    CatalogDisabledError,
    CatalogLogError,
    CatalogNotOpenError,
    NotFoundError,
)
from service.schemas import (
    MAX_ID_LENGTH,
    CatalogDeleteResponse,
    CatalogItemPut,
    CatalogItemsRequest,
    CatalogRecordResponse,
    CatalogUserPut,
    CatalogUsersRequest,
    CatalogWriteResponse,
    ErrorResponse,
)
from service.scoring import json_response, refuse_duplicate_ids, refuse_larger_than, served_scorer

router = APIRouter(tags=["catalog"])
log = logging.getLogger(__name__)

IdText = StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_LENGTH)
ItemId = Annotated[str, IdText, Path(examples=["new-1"])]
UserId = Annotated[str, IdText, Path(examples=["u-9001"])]
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "body is not valid JSON"},
    413: {"model": ErrorResponse, "description": "body or list too large"},
    503: {
        "model": ErrorResponse,
        "description": "no model served yet, the catalog disabled (LEVI_CATALOG_DIR empty), "
        "or its log not writable (the reason is given; nothing was applied)",
    },
}
READ_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no record of this id"},
    503: {"model": ErrorResponse, "description": "no model served yet, or the catalog disabled"},
}


def _catalog(engine: Engine) -> Catalog:
    """The open catalog.

    Raises:
        CatalogDisabledError: no catalog directory (503).
        CatalogNotOpenError: not open yet, no model served (503, Retry-After).
    """
    if engine.catalog is None:
        raise CatalogDisabledError(
            "the catalog is disabled: set LEVI_CATALOG_DIR to a writable directory"
        )
    if engine.catalog.dataset is None:
        raise CatalogNotOpenError(engine.not_ready_reason())
    return engine.catalog


async def _upsert(
    engine: Engine,
    kind: str,
    entries: Sequence[tuple[str, Mapping[str, Any] | None]],
    locs: Sequence[tuple],
    origin: str,
) -> dict:
    """Check, log and apply records; the ``CatalogWriteResponse`` body."""
    catalog = _catalog(engine)
    scorer = served_scorer(engine)
    given = [(loc, fields) for loc, (_, fields) in zip(locs, entries, strict=True)]
    checked = check_entity_fields(scorer.request_models, kind, given)
    records = [(i, f) for (i, _), f in zip(entries, checked, strict=True)]
    try:
        result: WriteResult = await asyncio.to_thread(catalog.upsert, kind, records, origin)
    except CatalogLogError as e:
        log.error("catalog write refused: %s", e)
        raise CatalogLogError(f"catalog record(s) not recorded: {e}") from None
    return {
        "kind": kind,
        "dataset": catalog.dataset,
        "accepted": len(result.records),
        "ids": [r.id for r in result.records],
        "shared": result.shared,
        "queued_encodes": result.queued,
    }


def _record(engine: Engine, kind: str, entity_id: str) -> dict:
    catalog = _catalog(engine)
    scorer = served_scorer(engine)
    record = catalog.get(kind, entity_id)
    if record is None:
        raise NotFoundError(
            f"no catalog record of {kind} {entity_id!r} (register one with "
            f"PUT /v1/{kind}s/{{{kind}_id}})"
        )
    return {
        "kind": kind,
        "id": record.id,
        "dataset": catalog.dataset,
        "fields": dict(record.fields),
        "version": record.version,
        "updated_at": record.updated_iso(),
        "origin": record.origin,
        "written_by": record.writer,
        "known_to_model": bool(scorer.tables[kind].rows([record.id])[0] >= 0),
        "model_version": scorer.model_version,
        "shared": catalog.shared,
    }


async def _delete(engine: Engine, kind: str, entity_id: str) -> dict:
    catalog = _catalog(engine)
    try:
        result = await asyncio.to_thread(catalog.delete, kind, entity_id)
    except CatalogLogError as e:
        log.error("catalog delete refused: %s", e)
        raise CatalogLogError(f"catalog deletion not recorded: {e}") from None
    if result is None:
        raise NotFoundError(f"no catalog record of {kind} {entity_id!r}")
    return {
        "kind": kind,
        "id": entity_id,
        "dataset": catalog.dataset,
        "deleted": True,
        "shared": result.shared,
    }


def _bulk_checks(ids: list[str], settings, kind: str) -> None:
    field = f"{kind}s"
    refuse_larger_than(len(ids), settings, "max_catalog_bulk", field)
    refuse_duplicate_ids(
        ids,
        lambda i: ("body", field, i, f"{kind}_id"),
        f"{kind}_id",
        "entry",
        f"list each {kind} once (the record you mean)",
    )


@router.put("/v1/items/{item_id}", responses=WRITE_ERRORS, response_model=CatalogWriteResponse)
async def put_item(item_id: ItemId, body: CatalogItemPut, engine: EngineDep):
    """Register an item's fields (or replace its record): then ask for it by id alone."""
    entries = [(item_id, body.fields)]
    return json_response(await _upsert(engine, "item", entries, [("body", "fields")], "put"))


@router.put("/v1/users/{user_id}", responses=WRITE_ERRORS, response_model=CatalogWriteResponse)
async def put_user(user_id: UserId, body: CatalogUserPut, engine: EngineDep):
    """Register a user's fields (or replace the record): then ask for them by id alone."""
    entries = [(user_id, body.fields)]
    return json_response(await _upsert(engine, "user", entries, [("body", "fields")], "put"))


@router.post("/v1/items", responses=WRITE_ERRORS, response_model=CatalogWriteResponse)
async def post_items(body: CatalogItemsRequest, engine: EngineDep, settings: SettingsDep):
    """Register several items at once (at most ``LEVI_MAX_CATALOG_BULK``, each id once)."""
    ids = [e.item_id for e in body.items]
    _bulk_checks(ids, settings, "item")
    entries = [(e.item_id, e.fields) for e in body.items]
    locs = [("body", "items", i, "fields") for i in range(len(entries))]
    return json_response(await _upsert(engine, "item", entries, locs, "bulk"))


@router.post("/v1/users", responses=WRITE_ERRORS, response_model=CatalogWriteResponse)
async def post_users(body: CatalogUsersRequest, engine: EngineDep, settings: SettingsDep):
    """Register several users at once (at most ``LEVI_MAX_CATALOG_BULK``, each id once)."""
    ids = [e.user_id for e in body.users]
    _bulk_checks(ids, settings, "user")
    entries = [(e.user_id, e.fields) for e in body.users]
    locs = [("body", "users", i, "fields") for i in range(len(entries))]
    return json_response(await _upsert(engine, "user", entries, locs, "bulk"))


@router.get("/v1/items/{item_id}", responses=READ_ERRORS, response_model=CatalogRecordResponse)
async def get_item(item_id: ItemId, engine: EngineDep):
    """An item's record: its fields, when and how it was written, whether the model knows it."""
    return json_response(_record(engine, "item", item_id))


@router.get("/v1/users/{user_id}", responses=READ_ERRORS, response_model=CatalogRecordResponse)
async def get_user(user_id: UserId, engine: EngineDep):
    """A user's record: their fields, when and how it was written, whether the model knows
    them."""
    return json_response(_record(engine, "user", user_id))


@router.delete("/v1/items/{item_id}", responses=READ_ERRORS, response_model=CatalogDeleteResponse)
async def delete_item(item_id: ItemId, engine: EngineDep):
    """Delete an item's record: answers fall back to the model's tables (or a cold start)."""
    return json_response(await _delete(engine, "item", item_id))


@router.delete("/v1/users/{user_id}", responses=READ_ERRORS, response_model=CatalogDeleteResponse)
async def delete_user(user_id: UserId, engine: EngineDep):
    """Delete a user's record: answers fall back to the model's tables (or a cold start)."""
    return json_response(await _delete(engine, "user", user_id))
