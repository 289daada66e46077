"""FastAPI dependencies as ``Annotated`` aliases: the engine, settings, metrics, admin auth.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency on its thread pool,
which costs two thread hand-offs per request for what is an attribute read (docs/PROFILING.md,
"Serving: one sync dependency").
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from service.engine import Engine
from service.errors import AdminDisabledError, AdminTokenError
from service.metrics import Metrics
from service.settings import Settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def serving(request: Request) -> tuple[Engine, Settings]:
    """The engine and settings of the app that serves ``request``, read directly. The scoring
    routes (``/predict-rating``, its batch, ``/rank``) take ``request: Request`` and call this
    instead of declaring :data:`EngineDep` and :data:`SettingsDep`: FastAPI resolves every
    declared dependency per request (a cache key, a nested solve, an await), a measurable
    share of a single prediction's Python time (docs/PROFILING.md)."""
    state = request.app.state
    return state.engine, state.settings


EngineDep = Annotated[Engine, Depends(get_engine)]
# A version or alias a client asks for (testing a challenger, comparing versions).
VERSION_HEADER = "X-Model-Version"
_VERSION_HEADER_DESCRIPTION = (
    "answer with this model version or alias (champion, challenger, previous) instead of the "
    "routed one"
)
RequestedVersion = Annotated[
    str | None,
    Header(alias=VERSION_HEADER, description=_VERSION_HEADER_DESCRIPTION),
]


def documented_version_header() -> dict:
    """``openapi_extra`` declaring the ``X-Model-Version`` header, for a route that reads it
    from the request itself instead of a :data:`RequestedVersion` parameter."""
    return {
        "parameters": [
            {
                "name": VERSION_HEADER,
                "in": "header",
                "required": False,
                "description": _VERSION_HEADER_DESCRIPTION,
                "schema": {
                    "anyOf": [{"type": "string"}, {"type": "null"}],
                    "description": _VERSION_HEADER_DESCRIPTION,
                    "title": VERSION_HEADER,
                },
            }
        ]
    }


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def require_admin(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer <admin token>")] = None,
) -> None:
    """Admit the request only with ``Authorization: Bearer <LEVI_ADMIN_TOKEN>``."""
    if settings.admin_token is None:
        raise AdminDisabledError(
            "admin disabled: set LEVI_ADMIN_TOKEN on the server to enable /admin endpoints"
        )
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AdminTokenError(
            "missing bearer token: send the header 'Authorization: Bearer <admin token>'"
        )
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(token.strip().encode(), expected):
        raise AdminTokenError("invalid admin token")


AdminDep = Depends(require_admin)
