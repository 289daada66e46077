"""Request bodies decoded and validated in one pass by pydantic-core, with FastAPI's answers.

The hot routes (``/predict-rating``, ``/rank``) take ``request: Request`` and call
:func:`parsed_body` instead of declaring the body as a parameter: FastAPI would parse the
bytes with ``json.loads`` into Python objects, then validate those objects (a second walk,
in Python mode), and resolve the parameter through its dependency machinery on every request.
``Model.model_validate_json`` parses and validates the bytes in one pass in Rust.

A body that pass refuses is read again exactly as FastAPI reads a declared body, so every
answer is FastAPI's own: the same :class:`RequestValidationError` (``loc`` starting with
``"body"``), which the app's one handler turns into the same 400 (not JSON), 415 (not sent as
JSON) and 422 (a field, named) answers (tests/service/test_json_body.py compares the two on
bad bodies). The routes' OpenAPI entries are kept by :func:`documented_body` and
:func:`register_body_schemas`.
"""

from __future__ import annotations

import json
from email.message import Message
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

M = TypeVar("M", bound=BaseModel)


def is_json_content_type(value: str | None) -> bool:
    """Whether FastAPI reads a body sent with this ``Content-Type`` as JSON (its default,
    strict content type): ``application/json`` or ``application/<anything>+json``, parameters
    such as ``charset`` allowed; a body sent without the header is not JSON."""
    if not value:
        return False
    if value.startswith("application/json") and (len(value) == 16 or value[16] in "; "):
        return True  # the common case, without parsing the header
    message = Message()
    message["content-type"] = value
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


async def parsed_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model``, parsed and validated from the bytes in one pass.

    Raises:
        RequestValidationError: as FastAPI raises it for a declared body ``model``: ``missing``
            at ``("body",)`` for an empty body; ``model_attributes_type`` at ``("body",)`` for
            a body not sent as JSON (the app answers 415); ``json_invalid`` for bytes that are
            not JSON (400); the fields' own errors under ``("body", field, ...)`` (422).
        HTTPException: 400 for a body that could not be received (the client disconnected
            or missed the receive deadline) or that ``json.loads`` fails on otherwise
            (FastAPI's answer to both); the body limit's 413 as raised.
    """
    try:
        raw = await request.body()
    except StarletteHTTPException:  # e.g. the body limit's 413, raised while it is received
        raise
    except Exception:  # e.g. the client went away (or hit the receive deadline) mid-body
        # FastAPI's own answer to a body it could not read; never an unexpected error
        raise HTTPException(400, "There was an error parsing the body") from None
    if raw and is_json_content_type(request.headers.get("content-type")):
        try:
            return model.model_validate_json(raw)
        except ValidationError:
            pass  # answered below, as FastAPI answers it
    return as_fastapi_reads_it(raw, request.headers.get("content-type"), model)


def as_fastapi_reads_it(raw: bytes, content_type: str | None, model: type[M]) -> M:
    """``raw`` read as FastAPI reads a declared body ``model`` (``fastapi.routing``: the
    content type, ``json.loads``, validation of the Python objects): the slow path, taken only
    by bodies the one-pass parse refused. Raises what :func:`parsed_body` documents."""
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    body: Any = raw
    if is_json_content_type(content_type):
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RequestValidationError(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body", e.pos),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": e.msg},
                    }
                ],
                body=e.doc,
            ) from None
        except Exception:  # e.g. bytes in no Unicode encoding: FastAPI's own answer
            raise HTTPException(400, "There was an error parsing the body") from None
    try:
        return model.model_validate(body, from_attributes=True)  # as FastAPI validates a body
    except ValidationError as e:
        errors = [{**x, "loc": ("body", *x["loc"])} for x in e.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` with :func:`parsed_body`: the
    required JSON request body and the 422 answer FastAPI documents for a declared body
    parameter (the model's schema goes to ``components``: :func:`register_body_schemas`)."""
    invalid = {
        "description": "Validation Error",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
        },
    }
    body = {
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        },
        "required": True,
    }
    return {"requestBody": body, "responses": {"422": invalid}}


def register_body_schemas(schema: dict[str, Any], models: tuple[type[BaseModel], ...]) -> dict:
    """Add the schemas of ``models`` (and the models they nest) to ``schema``'s
    ``components``, where FastAPI puts those of declared body parameters; ones already there
    are kept. Returns ``schema`` (changed in place)."""
    from pydantic.json_schema import models_json_schema

    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    known = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, value in top.get("$defs", {}).items():
        known.setdefault(name, value)
    schema["components"]["schemas"] = dict(sorted(known.items()))
    return schema
