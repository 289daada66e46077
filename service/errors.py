"""The service's expected failures, each with the HTTP status it is answered with.

Every failure a client can meet (not ready, overloaded, past its deadline, a conflicting
rollout change, a list too long, ...) is a :class:`ServiceError` raised where it happens, in
the engine, the micro-batcher or a route, and turned into its answer in one place: the
exception handler of ``service/app.py`` (:func:`answer`). The status, the ``Retry-After`` a
client should honour and any other header are declared here, on the class, once.

Anything else that escapes a route is a bug: a 500 with an incident id (logged with its
traceback under the request id), never a 503 that would invite the client to retry it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """An expected failure, answered ``{"detail": detail}`` with :attr:`status`.

    Args:
        detail: what went wrong and what to do, for the client (a string, or a list of
            ``{"loc", "msg", "type"}`` entries like a 422's).
        headers: extra response headers (``Retry-After`` comes from :attr:`retry_after`).
    """

    status: ClassVar[int] = 400
    retry_after: ClassVar[int | None] = None  # seconds a client should wait before retrying

    def __init__(self, detail: Any, *, headers: dict[str, str] | None = None):
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail
        self._headers = dict(headers or {})

    @property
    def headers(self) -> dict[str, str]:
        retry = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        return retry | self._headers


class ModelNotReadyError(ServiceError, RuntimeError):
    """No model is loaded yet, or it is still warming (503, retry after 5 s)."""

    status = 503
    retry_after = 5


class QueueFullError(ServiceError, RuntimeError):
    """More pairs (or more text to encode) are pending than the queue bounds allow (503,
    retry after 1 s)."""

    status = 503
    retry_after = 1


class DeadlineError(ServiceError, TimeoutError):
    """A pair's deadline passed before it was scored (504)."""

    status = 504


class UnknownVersionError(ServiceError, LookupError):
    """A request named a version or alias that is not loaded (404)."""

    status = 404


class ReloadConflictError(ServiceError, RuntimeError):
    """A reload or another rollout change is already running (409)."""

    status = 409


class ReloadError(ServiceError, RuntimeError):
    """A new artifact could not be loaded or warmed; what served keeps serving (409)."""

    status = 409


class RolloutError(ServiceError, RuntimeError):
    """A rollout change that the current state does not allow (409), e.g. no challenger to
    promote or no previous version to roll back to."""

    status = 409


class LogWriteError(ServiceError, RuntimeError):
    """A durable log (service/durable_log.py) could not be written: what the request brought
    is refused, not lost (503, retry after 1 s)."""

    status = 503
    retry_after = 1


class FeedbackLogError(LogWriteError):
    """The feedback log could not be written (503, retry after 1 s)."""


class CatalogLogError(LogWriteError):
    """The catalog log could not be written (503, retry after 1 s)."""


class CatalogNotOpenError(ServiceError, RuntimeError):
    """No model is served yet, so the catalog's data set is not known (503, retry after 5 s)."""

    status = 503
    retry_after = 5


class CatalogDisabledError(ServiceError):
    """The catalog routes on a server without a catalog (503: a setting, no Retry-After)."""

    status = 503


class NotFoundError(ServiceError, LookupError):
    """A named record does not exist (404)."""

    status = 404


class FeedbackDisabledError(ServiceError):
    """``POST /feedback`` on a server without a feedback directory (503: a setting, not a
    passing state, so no Retry-After)."""

    status = 503


class TooLargeError(ServiceError):
    """A body lists more entries, or brings more new text to encode, than one call may (413:
    split it; retrying the same call cannot help)."""

    status = 413


class EventIdConflictError(ServiceError):
    """A feedback ``event_id`` was seen before with another payload (409)."""

    status = 409


class AdminDisabledError(ServiceError):
    """An admin endpoint while the server has no admin token (403)."""

    status = 403


class AdminTokenError(ServiceError):
    """A missing or wrong admin bearer token (401, with the Bearer challenge)."""

    status = 401

    def __init__(self, detail: str):
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


def answer(error: ServiceError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, JSON body and headers that answer ``error``."""
    return error.status, {"detail": error.detail}, error.headers
