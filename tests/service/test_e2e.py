"""The service over real HTTP (uvicorn subprocess) with its cache in the real Redis."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.artifacts import BACKBONE_NAME, direct_scores
from support.servers import ADMIN_TOKEN

from model.text_keys import activation_key

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _check(answer: dict, expected: dict, layers: list[int]) -> None:
    assert answer["rating"] == pytest.approx(expected["rating"], abs=1e-4)
    assert [a["layer"] for a in answer["adapters"]] == layers
    got = [a["rating"] for a in answer["adapters"]]
    np.testing.assert_allclose(got, expected["adapters"], atol=1e-4)
    assert answer["ood_score"] == pytest.approx(expected["ood_score"], abs=1e-4)


def _fresh_user() -> dict:
    """An unknown user whose text no earlier request rendered."""
    return {"user_id": f"u{uuid.uuid4().hex[:8]}", "user": {"age": 30, "occupation": "artist"}}


def test_single_and_batch_predictions_equal_the_artifacts_scores(server, artifacts):
    art = artifacts.loader(artifacts.v1)
    layers = [lay + 1 for lay in art.head_config.layers]
    pairs = [
        {"user_id": "1", "item_id": "10"},
        {"user_id": "2", "item_id": "11", "user": {"age": 40}},  # request field overrides
        {"user_id": "3", "item_id": "999", "item": {"title": "Brand New Movie (2031)"}},
        {"user_id": "77", "item_id": "12", "user": {"occupation": "lawyer", "zip_code": "9"}},
    ]
    expected = direct_scores(art, pairs)
    for pair, exp in zip(pairs, expected, strict=True):
        r = httpx.post(f"{server.base}/predict-rating", json=pair, timeout=30)
        assert r.status_code == 200, r.text
        _check(r.json(), exp, layers)
        assert r.json()["model_version"] == art.model_version
    r = httpx.post(f"{server.base}/predict-rating/batch", json={"requests": pairs * 3}, timeout=30)
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    assert len(answers) == len(pairs) * 3
    for answer, exp in zip(answers, expected * 3, strict=True):  # order kept
        _check(answer, exp, layers)


def test_model_summary_says_the_token_limit(server, artifacts):
    backbone = httpx.get(f"{server.base}/v1/model", timeout=10).json()["backbone"]
    manifest = artifacts.loader(artifacts.v1).manifest["backbone"]
    assert backbone["name"] == BACKBONE_NAME
    assert backbone["max_length"] == manifest["max_length"] == 32  # the tiny tokenizer's


def test_cold_start_item_without_title_is_answered_and_says_so(server, artifacts):
    art = artifacts.loader(artifacts.v1)
    before = server.value("levi_unknown_entities_total", kind="item")
    pair = {"user_id": "1", "item_id": "no-such-item"}
    r = httpx.post(f"{server.base}/predict-rating", json=pair, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] == {"user": False, "item": True}
    assert any(
        "unknown item without fields" in w and "item.title" in w for w in body["warnings"]
    ), body["warnings"]
    _check(body, direct_scores(art, [pair])[0], [lay + 1 for lay in art.head_config.layers])
    assert server.value("levi_unknown_entities_total", kind="item") == before + 1


def test_second_request_hits_the_projection_cache(server):
    """A repeated pair needs no text work at all: both sides' head projections are kept in
    process (first-layer decomposition), so neither the activation LRU nor Redis is asked."""
    pair = {**_fresh_user(), "item_id": "10"}
    url = f"{server.base}/predict-rating"

    def counts():
        acts = sum(
            server.value("levi_activation_cache_lookups_total", tier=t, result=r)
            for t in ("local", "redis")
            for r in ("hit", "miss")
        )
        hits = {
            s: server.value("levi_projection_cache_lookups_total", side=s, result="hit")
            for s in ("user", "item")
        }
        return acts, hits

    first = httpx.post(url, json=pair, timeout=30)
    assert first.status_code == 200
    acts, hits = counts()
    second = httpx.post(url, json=pair, timeout=30)
    assert second.json() == first.json()
    acts_after, hits_after = counts()
    assert acts_after == acts
    assert hits_after == {"user": hits["user"] + 1, "item": hits["item"] + 1}


def test_redis_tier_is_read_with_the_design_key(server, artifacts, redis_client, key_prefix):
    """Activations another replica wrote are read from Redis, under the documented key."""
    art = artifacts.loader(artifacts.v1)
    user = _fresh_user()
    pair = {**user, "item_id": "10"}
    record = {"user_id": user["user_id"], "age": 30, "occupation": "artist"}
    text = art.views.views[0].render(record, {})
    ids, mask = art.tokenizer.pad(art.tokenizer.encode([text]))
    acts = np.asarray(art.encode(ids, mask), dtype=np.float32)[0]
    key = activation_key(key_prefix, art.manifest["backbone"]["fingerprint"], text)
    assert key.startswith(f"{key_prefix}:{art.manifest['backbone']['fingerprint']}:")
    redis_client.set(key, acts.tobytes(), ex=60)
    hits = server.value("levi_activation_cache_lookups_total", tier="redis", result="hit")
    r = httpx.post(f"{server.base}/predict-rating", json=pair, timeout=30)
    assert r.status_code == 200, r.text
    assert server.value("levi_activation_cache_lookups_total", tier="redis", result="hit") >= (
        hits + 1
    )
    _check(r.json(), direct_scores(art, [pair])[0], [lay + 1 for lay in art.head_config.layers])
    # A miss is written back with a TTL.
    other = _fresh_user()
    httpx.post(f"{server.base}/predict-rating", json={**other, "item_id": "11"}, timeout=30)
    written = activation_key(
        key_prefix,
        art.manifest["backbone"]["fingerprint"],
        art.views.views[0].render({**other["user"], "user_id": other["user_id"]}, {}),
    )
    assert redis_client.strlen(written) == acts.nbytes
    assert 0 < redis_client.ttl(written) <= 7 * 24 * 3600


def test_redis_down_keeps_answering_counts_errors_and_recovers(server, redis_proxy):
    url = f"{server.base}/predict-rating"
    errors_before = server.total("levi_activation_cache_errors_total")  # any op fails first
    redis_proxy.stop()
    try:
        for _ in range(5):
            r = httpx.post(url, json={**_fresh_user(), "item_id": "12"}, timeout=30)
            assert r.status_code == 200, r.text
        assert server.total("levi_activation_cache_errors_total") > errors_before
        assert server.value("levi_activation_cache_redis_up") == 0
    finally:
        redis_proxy.start()
    time.sleep(0.6)  # past the back-off maximum of the test server
    misses = server.value("levi_activation_cache_lookups_total", tier="redis", result="miss")
    for _ in range(3):
        r = httpx.post(url, json={**_fresh_user(), "item_id": "12"}, timeout=30)
        assert r.status_code == 200, r.text
        time.sleep(0.3)
    assert server.value("levi_activation_cache_lookups_total", tier="redis", result="miss") > (
        misses
    )
    assert server.value("levi_activation_cache_redis_up") == 1


def test_metrics_parse_and_name_every_design_metric(server):
    httpx.post(f"{server.base}/predict-rating", json={"user_id": "1", "item_id": "10"})
    names = {name for name, _ in server.metrics()}
    for metric in (
        "levi_requests_total",
        "levi_request_duration_seconds_bucket",
        "levi_batch_size_bucket",
        "levi_queue_wait_seconds_bucket",
        "levi_backbone_seconds_bucket",
        "levi_head_seconds_bucket",
        "levi_activation_cache_lookups_total",
        "levi_prediction_rating_bucket",
        "levi_adapter_rating_bucket",
        "levi_adapter_disagreement_bucket",
        "levi_ood_score_bucket",
        "levi_unknown_entities_total",
        "levi_prediction_psi",
        "levi_activation_drift",
        "levi_model_info",
        "levi_model_reloads_total",
    ):
        assert metric in names, metric
    samples = server.metrics()
    endpoints = {
        dict(labels).get("endpoint") for name, labels in samples if "endpoint" in dict(labels)
    }
    assert "/predict-rating" in endpoints
    assert all(
        not str(e).startswith("/predict-rating/") or e == "/predict-rating/batch" for e in endpoints
    )


def _flip_byte(d: Path) -> None:
    data = bytearray((d / "head.safetensors").read_bytes())
    data[-3] ^= 0x01  # inside a tensor: the file still parses, only the checksum catches it
    (d / "head.safetensors").write_bytes(bytes(data))


def _truncate(d: Path) -> None:
    data = (d / "backbone.jaxexport").read_bytes()
    (d / "backbone.jaxexport").write_bytes(data[: len(data) // 2])


def _edit_manifest(**changes):
    def edit(d: Path) -> None:
        manifest = json.loads((d / "manifest.json").read_text())
        manifest.update(changes)
        (d / "manifest.json").write_text(json.dumps(manifest))

    return edit


def _wrong_param_shape(d: Path) -> None:
    """Checksums re-done, so only the parameter check can refuse it."""
    from safetensors.numpy import load_file, save_file

    flat = load_file(str(d / "head.safetensors"))
    name = next(k for k in flat if k.endswith("mlp_0/kernel"))
    flat[name] = np.zeros((flat[name].shape[0], 17), np.float32)
    save_file(flat, str(d / "head.safetensors"))
    manifest = json.loads((d / "manifest.json").read_text())
    digest = hashlib.sha256((d / "head.safetensors").read_bytes()).hexdigest()
    manifest["files"]["head.safetensors"] = digest
    (d / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_flip_byte, r"head\.safetensors: sha256 \w+\.\.\. does not match the manifest's"),
        (_truncate, r"backbone\.jaxexport: sha256 .* \(changed or truncated"),
        (lambda d: (d / "manifest.json").write_text("{"), r"manifest\.json is not valid JSON"),
        (_edit_manifest(format_version=99), r"format_version 99 is not supported"),
        (_edit_manifest(platforms=["tpu"]), r"exported for platforms \['tpu'\]"),
        (lambda d: (d / "tokenizer.json").unlink(), r"tokenizer\.json is missing"),
        (_wrong_param_shape, r"parameter 'params/mlp/mlp_0/kernel' has shape"),
    ],
    ids=[
        "flipped-byte",
        "truncated",
        "bad-json",
        "format-version",
        "platform",
        "no-tokenizer",
        "param-shape",
    ],
)
def test_broken_artifact_is_refused_with_the_loaders_reason_and_the_old_model_kept(
    server, artifacts, tmp_path, corrupt, message
):
    bad = tmp_path / "broken"
    shutil.copytree(artifacts.v1, bad)
    corrupt(bad)
    version = httpx.get(f"{server.base}/v1/model").json()["model_version"]
    failures = server.value("levi_model_reloads_total", result="failure")
    r = httpx.post(
        f"{server.base}/admin/reload", json={"path": str(bad)}, headers=ADMIN, timeout=120
    )
    assert r.status_code == 409, r.text  # a 4xx with the reason, never a 500
    detail = r.json()["detail"]
    assert "refused (ArtifactError: " in detail and f"still serving model {version}" in detail
    assert re.search(message, detail), detail
    assert httpx.get(f"{server.base}/v1/model").json()["model_version"] == version
    assert server.value("levi_model_reloads_total", result="failure") == failures + 1
    ok = httpx.post(f"{server.base}/predict-rating", json={"user_id": "1", "item_id": "10"})
    assert ok.status_code == 200 and ok.json()["model_version"] == version
    assert httpx.get(f"{server.base}/readyz").status_code == 200


def test_artifacts_root_is_refused_with_a_hint(server, artifacts):
    r = httpx.post(
        f"{server.base}/admin/reload",
        json={"path": str(artifacts.root)},
        headers=ADMIN,
        timeout=120,
    )
    assert r.status_code == 409, r.text
    assert "looks like the artifacts root: pass" in r.json()["detail"]


def test_reload_under_concurrent_load_fails_no_request(server, artifacts):
    stop = threading.Event()
    statuses: list[int] = []
    versions: set[str] = set()

    def hammer() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                r = client.post(
                    f"{server.base}/predict-rating", json={"user_id": "2", "item_id": "11"}
                )
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        r = httpx.post(
            f"{server.base}/admin/reload",
            json={"path": str(artifacts.v2)},
            headers=ADMIN,
            timeout=240,
        )
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "tiny-v2"
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}
    assert versions == {"tiny-v1", "tiny-v2"}
    info = server.metrics()
    v2 = (("backbone", BACKBONE_NAME), ("model_version", "tiny-v2"))
    assert info[("levi_model_info", v2)]
    assert not any(
        name == "levi_model_info" and dict(labels)["model_version"] == "tiny-v1"
        for name, labels in info
    )
    # Back to v1 for the other tests.
    r = httpx.post(
        f"{server.base}/admin/reload",
        json={"path": str(artifacts.v1)},
        headers=ADMIN,
        timeout=240,
    )
    assert r.status_code == 200, r.text
