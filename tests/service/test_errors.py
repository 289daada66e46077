"""The service's expected failures: each class declares its status once, answered as such."""

from __future__ import annotations

import inspect

import pytest

from service import errors
from service.errors import ServiceError, answer

CLASSES = [
    c
    for _, c in inspect.getmembers(errors, inspect.isclass)
    if issubclass(c, ServiceError) and c is not ServiceError
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_expected_failure_is_a_client_or_availability_status_never_500(cls):
    error = cls("what went wrong")
    status, body, headers = answer(error)
    assert 400 <= status < 600 and status != 500, status
    assert body == {"detail": "what went wrong"}
    # Retry-After only where retrying the same call can succeed (503 of a passing state).
    if "Retry-After" in headers:
        assert status == 503 and int(headers["Retry-After"]) > 0


def test_overload_and_not_ready_invite_a_retry_but_a_full_list_does_not():
    assert answer(errors.QueueFullError("x"))[2] == {"Retry-After": "1"}
    assert answer(errors.ModelNotReadyError("x"))[2] == {"Retry-After": "5"}
    assert (
        answer(errors.TooLargeError("x"))[:1] == (413,) and not answer(errors.TooLargeError("x"))[2]
    )
    assert answer(errors.AdminTokenError("x"))[2] == {"WWW-Authenticate": "Bearer"}
    detail = [{"loc": ["body", "events", 0, "event_id"], "msg": "m", "type": "t"}]
    assert answer(errors.EventIdConflictError(detail))[:2] == (409, {"detail": detail})
