"""The service's log output: levels, text or JSON lines, request ids and the model version.

``python -m service`` hands :func:`log_config` to uvicorn, which applies it in the server
process and in every worker: one handler on stderr that uvicorn's own loggers, the service's
(``service.*``, ``model.*``) and everything else (JAX, Python warnings) all print through.

- ``LEVI_LOG_LEVEL``: the level of the service's and uvicorn's loggers (other libraries print
  warnings and above).
- ``LEVI_LOG_FORMAT=text``: uvicorn's style, ``2026-01-02 10:00:00,123 INFO:     service.engine:
  serving model ...``, with ``[request <id>]`` appended inside a request.
- ``LEVI_LOG_FORMAT=json``: one JSON object per line with ``time`` (UTC, ISO 8601), ``level``,
  ``logger``, ``message``, ``model_version`` (the model this process serves, null before the
  first load), ``request_id`` (null outside a request) and ``exception`` when there is one.

The request id is the ``X-Request-ID`` of the request being handled
(:class:`service.middleware.RequestEnvelopeMiddleware` sets :data:`request_id`); the model
version is set by the engine whenever it installs a model (:func:`set_model_version`).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
from typing import Any

from uvicorn.logging import DefaultFormatter

# The X-Request-ID of the request this task is handling (None outside a request).
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "levi_request_id", default=None
)
_model_version: str | None = None

# Loggers printed at LEVI_LOG_LEVEL; the root logger (every other library) prints warnings.
SERVICE_LOGGERS = ("service", "model")


def set_model_version(version: str | None) -> None:
    """Name the model this process now serves in every later log record."""
    global _model_version
    _model_version = version


class ContextFilter(logging.Filter):
    """Stamp each record with ``request_id`` and ``model_version`` (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        if not hasattr(record, "model_version"):
            record.model_version = _model_version
        return True


class TextFormatter(DefaultFormatter):
    """uvicorn's formatter (``INFO:     ...``) with the logger name and the request id."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        rid = getattr(record, "request_id", None)
        return f"{line} [request {rid}]" if rid else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "model_version": getattr(record, "model_version", None),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def log_config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for uvicorn's ``log_config``.

    Args:
        level: ``critical`` ... ``debug`` (uvicorn's ``trace`` prints the service at debug).
        fmt: ``text`` or ``json``.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"LEVI_LOG_FORMAT must be 'text' or 'json', got {fmt!r}")
    name = "DEBUG" if level.lower() == "trace" else level.upper()
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"}
        if fmt == "json"
        else {
            "()": f"{__name__}.TextFormatter",
            "fmt": "%(asctime)s %(levelprefix)s %(name)s: %(message)s",
            "use_colors": False,
        }
    )
    handler = ["default"]
    loggers: dict[str, Any] = {
        n: {"handlers": handler, "level": name, "propagate": False}
        for n in (*SERVICE_LOGGERS, "uvicorn", "uvicorn.access")
    }
    loggers["uvicorn.error"] = {"level": name}  # propagates to "uvicorn"
    loggers["py.warnings"] = {"handlers": handler, "level": "WARNING", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": f"{__name__}.ContextFilter"}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["context"],
            }
        },
        "loggers": loggers,
        "root": {"handlers": handler, "level": "WARNING"},
    }


def configure(level: str = "info", fmt: str = "text") -> None:
    """Apply :func:`log_config` in this process (and route ``warnings`` through it)."""
    import logging.config

    logging.config.dictConfig(log_config(level, fmt))
    logging.captureWarnings(True)
