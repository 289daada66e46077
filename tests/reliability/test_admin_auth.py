"""Admin endpoints: bearer token required, compared in constant time, disabled without one.

Status codes (service/deps.py): no or malformed ``Authorization`` → 401 with
``WWW-Authenticate: Bearer``; a wrong token → 401 as well (RFC 6750 ``invalid_token``: the
credentials are bad, not insufficient); admin disabled (no ``LEVI_ADMIN_TOKEN``) → 403.
tests/service/test_api.py checks the basic cases in process; here they run over real HTTP
with the token variants an attacker would try, and the comparison is shown to go through
``hmac.compare_digest`` for every presented token, whatever its length.
"""

from __future__ import annotations

import hmac
import inspect

import httpx
import pytest
from fastapi.testclient import TestClient
from support.load import ADMIN_TOKEN

import service.deps
from service.app import create_app
from service.settings import Settings

pytestmark = [pytest.mark.reliability]

NO_SUCH_MODEL = {
    "path": "/nonexistent/reliability-model"
}  # authorized → 422 naming body.path, no reload


@pytest.mark.e2e
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        f"Basic {ADMIN_TOKEN}",
        f"Token {ADMIN_TOKEN}",
        ADMIN_TOKEN,
        f"Bearer{ADMIN_TOKEN}",
    ],
    ids=[
        "none",
        "empty",
        "scheme-only",
        "basic",
        "token-scheme",
        "no-scheme",
        "no-space",
    ],
)
def test_missing_or_malformed_credentials_are_401(rel_server, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    r = httpx.post(f"{rel_server.base}/admin/reload", json=NO_SUCH_MODEL, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in r.json()["detail"]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "token",
    [
        "wrong-token-" + "a" * 30,
        ADMIN_TOKEN[:-1],
        ADMIN_TOKEN + "x",
        ADMIN_TOKEN.upper(),
        "x",
        "x" * 10_000,
        ADMIN_TOKEN[:-1] + "é",
    ],
    ids=["other", "prefix", "suffix", "case", "short", "long", "non-ascii"],
)
def test_wrong_token_is_401_and_changes_nothing(rel_server, token):
    version = httpx.get(f"{rel_server.base}/v1/model").json()["model_version"]
    r = httpx.post(
        f"{rel_server.base}/admin/reload",
        json={"path": "/nonexistent/x"},
        headers={"Authorization": f"Bearer {token}".encode()},
    )
    assert r.status_code == 401, r.text
    assert r.json()["detail"] == "invalid admin token"
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{rel_server.base}/v1/model").json()["model_version"] == version


@pytest.mark.e2e
def test_right_token_is_admitted_case_insensitive_scheme(rel_server):
    for scheme in ("Bearer", "bearer", "BEARER"):
        r = httpx.post(
            f"{rel_server.base}/admin/reload",
            json=NO_SUCH_MODEL,
            headers={"Authorization": f"{scheme} {ADMIN_TOKEN}"},
            timeout=60,
        )
        # Past the auth: the reload itself is refused (no such artifact directory, 422 naming
        # the field); the old model keeps serving.
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "path"]


def _app(token: str | None) -> TestClient:
    settings = Settings(model_dir="/nonexistent/model", redis_url=None, admin_token=token)
    return TestClient(create_app(settings))


@pytest.mark.parametrize("token", [None, ""], ids=["unset", "empty"])
def test_admin_disabled_without_a_configured_token_is_403(token):
    with _app(token) as client:
        for headers in (
            {},
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
            {"Authorization": "Bearer "},
        ):
            r = client.post("/admin/reload", json=NO_SUCH_MODEL, headers=headers)
            assert r.status_code == 403, r.text
            assert "admin disabled" in r.json()["detail"]


def test_token_comparison_uses_hmac_compare_digest(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service.deps.hmac, "compare_digest", counting)
    presented = ["wrong", "w" * len(ADMIN_TOKEN), ADMIN_TOKEN + "!", "é" * 3, ADMIN_TOKEN]
    with _app(ADMIN_TOKEN) as client:
        statuses = [
            client.post(
                "/admin/reload",
                json=NO_SUCH_MODEL,
                headers={"Authorization": f"Bearer {t}".encode()},
            ).status_code
            for t in presented
        ]
    assert statuses == [401, 401, 401, 401, 422]
    # One constant-time comparison per presented token, of bytes, whatever the length:
    # no early exit on a length mismatch, no str ``==`` anywhere on the way.
    assert len(calls) == len(presented)
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
    assert {b for _, b in calls} == {ADMIN_TOKEN.encode()}
    source = inspect.getsource(service.deps.require_admin)
    assert "compare_digest" in source and "== expected" not in source
