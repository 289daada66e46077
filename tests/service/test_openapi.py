"""service/openapi.json equals the live schema (regenerate: python -m service.openapi --write)."""

import json

from service.openapi import SCHEMA_PATH, live_schema, render


def test_committed_openapi_matches_the_live_schema():
    committed = SCHEMA_PATH.read_text()
    assert committed == render(live_schema()), (
        "service/openapi.json is stale; run `.venv/bin/python -m service.openapi --write`"
    )
    paths = json.loads(committed)["paths"]
    for path in (
        "/predict-rating",
        "/predict-rating/batch",
        "/healthz",
        "/readyz",
        "/v1/model",
        "/metrics",
        "/admin/reload",
    ):
        assert path in paths
