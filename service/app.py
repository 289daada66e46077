"""The FastAPI app factory: ``create_app(settings)``.

Run with ``python -m service``. ``uvicorn --factory service.app:create_app`` serves it too, but
without the receive deadline and the connection bound unless given
``--http service.connections:GuardedHttpProtocol`` (service/connections.py).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from model.native_heap import limit_malloc_arenas
from service.connections import POLICY_STATE_KEY, ConnectionPolicy
from service.engine import Engine, tune_collector
from service.entity_fields import with_model_fields
from service.errors import ServiceError, answer
from service.json_body import register_body_schemas
from service.metrics import Metrics
from service.middleware import RequestEnvelopeMiddleware
from service.routes import (
    admin,
    catalog,
    feedback,
    health,
    metrics,
    model_info,
    predict,
    rank,
    versions,
)
from service.schemas import PredictRequest, RankRequest
from service.settings import Settings
from service.workers import WorkerGroup

log = logging.getLogger("service")

DESCRIPTION = """Rating prediction with LEVI: a frozen text encoder's layers, each with its own
adapter, ensembled with a from-scratch MLP over ids and features. Every answer carries the
per-layer adapter ratings and an out-of-distribution score."""


# Errors of a wrong JSON type ("should be a valid integer") also say which type came: a
# `true` where a count belongs reads "got the boolean true".
_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "string_type", "int_from_float"}


def _says_what_came(error: dict) -> bool:
    return error.get("type") in _TYPE_ERRORS and "input" in error


TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def _json_kind(value: object) -> str:
    """``value`` as the client sent it: its JSON type and (short) text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:40] + "..."
        return f"the string {json.dumps(text)}"
    return "an array" if isinstance(value, list) else "an object"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """400 for a body that is not JSON; otherwise 422 listing each field's ``loc`` and why."""
    errors = exc.errors()
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        reason = (bad_json.get("ctx") or {}).get("error", "")
        return JSONResponse(
            {"detail": f"request body is not valid JSON ({reason})".replace(" ()", "")},
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type and any(
        tuple(e.get("loc", ())) == ("body",) and e.get("type") == "model_attributes_type"
        for e in errors
    ):
        return JSONResponse(
            {
                "detail": "request body must be JSON sent with 'Content-Type: application/json' "
                f"(got {content_type or 'no Content-Type'})"
            },
            status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        )
    detail = [
        {k: e[k] for k in ("loc", "msg", "type") if k in e}
        | ({"msg": f"{e['msg']}; got {_json_kind(e['input'])}"} if _says_what_came(e) else {})
        | ({"ctx": e["ctx"]} if "ctx" in e else {})
        for e in errors
    ]
    return JSONResponse(
        {"detail": jsonable_encoder(detail, custom_encoder={Exception: str})},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    """An expected failure: its status, detail and headers, declared on its class
    (service/errors.py). The one place where the service's errors become answers."""
    status_code, body, headers = answer(exc)
    return JSONResponse(jsonable_encoder(body), status_code=status_code, headers=headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback under an incident id (the request id), answered 500
    without internals and without Retry-After (retrying a fault does not fix it)."""
    # Starlette answers this one outside every middleware, so the id header is set here.
    incident = getattr(request.state, "request_id", None) or uuid.uuid4().hex
    log.exception(
        "unexpected error on %s %s (incident %s)", request.method, request.url.path, incident
    )
    return JSONResponse(
        {
            "detail": f"internal error while handling the request (incident {incident}); "
            "it was logged: report the incident id"
        },
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        headers={"X-Request-ID": incident},
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; its lifespan loads and warms the model and runs the micro-batcher.

    Process-wide, it caps glibc's malloc arenas (model/native_heap.py) and sets the cyclic
    collector's thresholds (``service.engine.COLLECTOR_THRESHOLDS``).

    Args:
        settings: default ``Settings()`` (from the environment). The model is loaded with
            ``model.artifact.load_artifact`` from ``settings.model_dir``.
    """
    limit_malloc_arenas()  # before the engine's threads start (model/native_heap.py)
    tune_collector()  # fewer collections of the requests' short-lived objects (engine.py)
    settings = settings or Settings()
    app_metrics = Metrics()
    connection_policy = ConnectionPolicy(
        settings.receive_timeout_s, settings.max_connections, app_metrics
    )
    # Set by `python -m service --workers N` (N > 1): metrics and readiness span the workers.
    group = WorkerGroup.from_environment(settings.workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict]:
        logging.captureWarnings(True)  # Python warnings through the service's log handler
        engine = Engine(settings, app_metrics, group=group)
        app.state.engine = engine
        await engine.start()
        if group is not None:
            # One of several workers takes connections only once it can score them: until
            # then the shared socket's connections go to the workers that can. A worker whose
            # model cannot be loaded exits (uvicorn: startup failure) instead of answering 503.
            await engine.wait_ready()
            if engine.scorer is None:
                await engine.stop()
                group.mark_failed(engine.not_ready_reason())
                raise RuntimeError(f"this worker cannot serve: {engine.not_ready_reason()}")
        try:
            # The HTTP protocol reads its limits and metrics from the lifespan state.
            yield {POLICY_STATE_KEY: connection_policy}
        finally:
            await engine.stop()
            if group is not None:
                group.leave()

    app = FastAPI(
        title="LEVI Serve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry checks its providers on every request unless turned
        # off here; the service's own metrics are Prometheus (service/metrics.py).
        telemetry=None if settings.opentelemetry else TELEMETRY_OFF,
    )
    app.state.settings = settings
    app.state.metrics = app_metrics
    app.state.workers = group
    for module in (predict, rank, feedback, catalog, health, model_info, versions, metrics, admin):
        app.include_router(module.router)
    fastapi_openapi = app.openapi

    def static_openapi() -> dict:
        # The bodies the hot routes parse themselves (service/json_body.py) are documented
        # as FastAPI documents declared ones.
        return register_body_schemas(fastapi_openapi(), (PredictRequest, RankRequest))

    def openapi() -> dict:
        # The user / item fields are the served model's (its dataset spec): typed once loaded.
        engine = getattr(app.state, "engine", None)
        scorer = engine.scorer if engine is not None else None
        schema = static_openapi()
        return schema if scorer is None else with_model_fields(schema, scorer.request_models)

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(
        RequestEnvelopeMiddleware, metrics=app_metrics, max_bytes=settings.max_body_bytes
    )
    return app
