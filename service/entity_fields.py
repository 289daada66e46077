"""The ``user`` / ``item`` request objects, typed by the served model's dataset spec.

Which fields a request may send depends on the model (its spec's declared columns), and a
reload can change them, so these pydantic models are built per loaded model
(:func:`request_models`) and applied by the routes (:func:`check_fields`). An unknown field
or a wrong type is a 422 whose ``loc`` is ``["body", "item", "<field>"]`` (batch:
``["body", "requests", i, "item", "<field>"]``), like any other validation error.

Types per column kind:

* ``categorical``: a string, a number or a boolean (codes such as zip codes arrive as
  numbers; they are read as training read them: 3.0 is "3", true is "True");
* ``numeric``: a JSON number (not a string, not a boolean; no NaN or infinity), within the
  spec's declared ``range`` when it has one;
* ``multi_categorical``: a list of such values (or one delimited string when the column has
  a ``sep``);
* ``text``: a string of up to ``MAX_TEXT_CHARS`` characters; the backbone truncates it at its
  token limit and the answer then carries a warning.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
)
from pydantic import create_model as _create_model

from model.features import Column, FeatureSpec

MAX_VALUE_CHARS = 256
MAX_TEXT_CHARS = 20_000
MAX_LIST_VALUES = 256

Short = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_VALUE_CHARS)
]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# Integer categories within 64 bits (what JSON tools, Parquet and the feedback log can hold).
Integer = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
Category = Short | Integer | Number | StrictBool
LongText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS)
]
KIND_TYPES: dict[str, Any] = {
    "categorical": Category,
    "numeric": Number,
    "multi_categorical": Annotated[list[Category], Field(max_length=MAX_LIST_VALUES)],
    "text": LongText,
}
KIND_JSON = {
    "categorical": "string, number or boolean",
    "numeric": "number",
    "multi_categorical": "array of strings, numbers or booleans",
    "text": "string",
}


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _field_type(col: Column) -> Any:
    if col.kind == "multi_categorical" and col.sep:
        return KIND_TYPES["multi_categorical"] | Short
    if col.kind == "numeric" and col.valid_range is not None:  # the spec's declared range
        lo, hi = col.valid_range
        return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=lo, le=hi)]
    return KIND_TYPES[col.kind]


def request_models(features: FeatureSpec) -> dict[str, type[BaseModel]]:
    """``{"user": Model, "item": Model}``: every declared column optional, nothing else."""
    out = {}
    for entity in ("user", "item"):
        fields = {
            col.name: (
                _field_type(col) | None,
                Field(None, description=f"{col.kind}{'' if col.mlp else ' (text only)'}"),
            )
            for col in features.fields_of(entity)
        }
        name = f"{entity.capitalize()}Fields"
        out[entity] = _create_model(name, __base__=_Fields, **fields)  # type: ignore[call-overload]
    return out


def describe(features: FeatureSpec) -> dict[str, list[dict[str, Any]]]:
    """The request fields per entity: name, kind, JSON type, whether the MLP reads it, and
    the delimiter a multi-valued field's string may use."""
    return {
        entity: [
            {"name": c.name, "kind": c.kind, "json_type": KIND_JSON[c.kind], "mlp": c.mlp}
            | ({"sep": c.sep} if c.kind == "multi_categorical" and c.sep else {})
            for c in features.fields_of(entity)
        ]
        for entity in ("user", "item")
    }


# (component, property) -> the entity whose fields the property holds, and whether it may be
# null: the request bodies typed by the served model in its OpenAPI document.
TYPED_PROPERTIES = {
    ("PredictRequest", "user"): ("user", True),
    ("PredictRequest", "item"): ("item", True),
    ("CatalogItemPut", "fields"): ("item", False),
    ("CatalogUserPut", "fields"): ("user", False),
    ("CatalogItemEntry", "fields"): ("item", False),
    ("CatalogUserEntry", "fields"): ("user", False),
}


def with_model_fields(schema: dict, models: Mapping[str, type[BaseModel]]) -> dict:
    """The app's OpenAPI document with ``PredictRequest.user`` / ``.item`` and the catalog's
    ``fields`` typed by the served model (``UserFields`` / ``ItemFields`` components);
    ``schema`` is not modified."""
    out = copy.deepcopy(schema)
    components = out.setdefault("components", {}).setdefault("schemas", {})
    for model in models.values():
        components[model.__name__] = model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
    for (component, prop), (entity, nullable) in TYPED_PROPERTIES.items():
        properties = components.get(component, {}).get("properties", {})
        if prop not in properties or entity not in models:
            continue
        ref = {"$ref": f"#/components/schemas/{models[entity].__name__}"}
        description = properties[prop].get("description")
        properties[prop] = {"anyOf": [ref, {"type": "null"}]} if nullable else dict(ref)
        if description:
            properties[prop]["description"] = description
    return out


def _parse(
    model: type[BaseModel], entity: str, given: Mapping[str, Any], loc: tuple, errors: list
) -> dict[str, Any]:
    """``given`` checked by ``model`` (the fields that were set), or {} with its problems
    appended to ``errors``, each ``loc`` prefixed by ``loc``."""
    try:
        value = model.model_validate(given)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            err = dict(err)
            if err.get("type") == "extra_forbidden":
                known = ", ".join(model.model_fields) or "none"
                article = "an" if entity == "item" else "a"
                err["msg"] = f"not {article} {entity} field of this model (its fields: {known})"
            err["loc"] = (*loc, *err["loc"])
            errors.append(err)
        return {}
    return value.model_dump(exclude_none=True)


def plain_value(value: Any) -> Any:
    """A table cell as a plain Python value: None for a missing one (None, NaN), lists for
    arrays, Python scalars for numpy ones."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy scalars and arrays
        value = value.tolist()
    return value


def cell_value(value: Any, kind: str, sep: str | None = None) -> Any:
    """A file's cell as a field of ``kind`` expects it (CSV cells arrive as strings): a
    number read from its text, a multi-valued field split at ``|`` unless the column has its
    own ``sep`` (then the field splits it); None for a missing or blank cell. A cell that
    cannot be read is passed on, so the field's validation refuses it naming the field."""
    value = plain_value(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if kind == "numeric" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # refused by the field's validation, naming row and column
    if kind == "multi_categorical" and isinstance(value, str) and not sep:
        return [v for v in value.split("|") if v.strip()]
    return value


def check_fields(
    models: Mapping[str, type[BaseModel]],
    payloads: Sequence[tuple[tuple, Mapping[str, Any] | None, Mapping[str, Any] | None]],
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Validate the ``user`` / ``item`` objects of requests against the model's fields.

    Args:
        models: :func:`request_models` of the served model.
        payloads: per request ``(loc prefix, user object or None, item object or None)``,
            e.g. ``(("body",), {...}, {...})``.

    Returns:
        Per request ``(user fields, item fields)`` with the fields that were set.

    Raises:
        RequestValidationError: every problem of every request, ``loc`` naming the field.
    """
    errors: list[dict[str, Any]] = []
    out = []
    for prefix, user, item in payloads:
        parsed = [
            _parse(models[entity], entity, given, (*prefix, entity), errors) if given else {}
            for entity, given in (("user", user), ("item", item))
        ]
        out.append((parsed[0], parsed[1]))
    if errors:
        raise RequestValidationError(errors)
    return out


def check_entity_fields(
    models: Mapping[str, type[BaseModel]],
    entity: str,
    payloads: Sequence[tuple[tuple, Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """Validate objects of one entity's fields (catalog records) as :func:`check_fields`
    validates a request's ``user`` / ``item`` objects.

    Args:
        payloads: per record ``(loc of the object, the object)``, e.g.
            ``(("body", "fields"), {...})``.

    Returns:
        Per record the fields that were set (null ones left out).

    Raises:
        RequestValidationError: every problem of every record, ``loc`` naming the field
            (``["body", "fields", "<field>"]``).
    """
    errors: list[dict[str, Any]] = []
    out = [_parse(models[entity], entity, given or {}, loc, errors) for loc, given in payloads]
    if errors:
        raise RequestValidationError(errors)
    return out
