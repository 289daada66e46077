"""Safe rollout through the real app (in process): a challenger next to the champion, canary
routing by user, shadow scoring off the request path, online figures from feedback, promote,
rollback, a refused challenger, a shared backbone, and the automatic gate."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from support.load import wait_for
from support.servers import ADMIN_TOKEN, loaded_client

from service.errors import RolloutError
from service.routing import in_canary
from service.versions import RolloutPlan

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
USERS = [str(u) for u in range(1, 5)] + [f"new-{k}" for k in range(60)]


def _versions(client) -> dict[str, str]:
    body = client.get("/v1/models").json()
    return {a: v["model_version"] for v in body["versions"] for a in v["aliases"]}


def _metric(client, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` in a scrape now (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def _decisions(client, decision: str, trigger: str) -> float:
    return _metric(client, "levi_rollout_decisions_total", decision=decision, trigger=trigger)


def test_plan_changes_and_their_refusals():
    plan = RolloutPlan("/a")
    with pytest.raises(RolloutError, match="no challenger to promote"):
        plan.promote()
    with pytest.raises(RolloutError, match="no previous version"):
        plan.rollback()
    with pytest.raises(RolloutError, match="champion already"):
        plan.with_challenger("/a", 0.1, False)
    tried = plan.with_challenger("/b", 0.25, True)
    promoted = tried.promote()
    assert promoted == RolloutPlan("/b", previous="/a")
    assert promoted.rollback() == RolloutPlan("/a")
    assert tried.without_challenger() == plan
    assert plan.reload("/c") == RolloutPlan("/c", previous="/a")
    assert RolloutPlan.from_json(tried.to_json()) == tried
    with pytest.raises(ValueError, match="canary"):
        RolloutPlan("/a", canary=1.5)


def test_challenger_canary_shadow_promote_rollback(artifacts, compile_cache, tmp_path):
    with loaded_client(
        artifacts.v1, compile_cache, admin_token=ADMIN_TOKEN, feedback_dir=tmp_path / "fb"
    ) as c:
        assert _versions(c) == {"champion": "tiny-v1"}
        # A corrupt challenger is refused; the champion keeps serving.
        broken = tmp_path / "broken"
        shutil.copytree(artifacts.v2, broken)
        (broken / "head.safetensors").write_bytes(b"not what the manifest says")
        r = c.put("/admin/challenger", json={"path": str(broken), "canary": 0.5}, headers=ADMIN)
        assert r.status_code == 409 and "still serving model tiny-v1" in r.json()["detail"]
        assert _versions(c) == {"champion": "tiny-v1"}
        r = c.put("/admin/challenger", json={"path": "/no/such", "canary": 0.5}, headers=ADMIN)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "path"]
        r = c.put("/admin/challenger", json={"path": str(artifacts.v1), "canary": 1}, headers=ADMIN)
        assert r.status_code == 409 and "champion already" in r.json()["detail"]
        assert c.post("/admin/promote", headers=ADMIN).status_code == 409
        assert c.post("/admin/rollback", headers=ADMIN).status_code == 409

        # Canary: half the users, by user id, on every endpoint; answers carry the version.
        r = c.put(
            "/admin/challenger",
            json={"path": str(artifacts.v2), "canary": 0.5, "shadow": False},
            headers=ADMIN,
        )
        assert r.status_code == 200, r.text
        assert r.json()["challenger"] == "tiny-v2" and r.json()["canary"] == 0.5
        expect = {u: "tiny-v2" if in_canary(u, 0.5) else "tiny-v1" for u in USERS}
        assert set(expect.values()) == {"tiny-v1", "tiny-v2"}
        for u in USERS:
            got = c.post("/predict-rating", json={"user_id": u, "item_id": "10"}).json()
            assert got["model_version"] == expect[u], u
        batch = c.post(
            "/predict-rating/batch",
            json={"requests": [{"user_id": u, "item_id": "11"} for u in USERS]},
        ).json()["predictions"]
        assert [p["model_version"] for p in batch] == [expect[u] for u in USERS]
        for u in USERS[:6]:
            ranked = c.post(
                "/rank",
                json={"user_id": u, "candidates": [{"item_id": i} for i in ("10", "11", "12")]},
            ).json()
            assert ranked["model_version"] == expect[u]
        # A client may name a version or alias; an unknown one is a 404 naming the header.
        named = c.post(
            "/predict-rating",
            json={"user_id": "1", "item_id": "10"},
            headers={"X-Model-Version": "challenger"},
        ).json()
        assert named["model_version"] == "tiny-v2"
        r = c.post(
            "/predict-rating",
            json={"user_id": "1", "item_id": "10"},
            headers={"X-Model-Version": "v9"},
        )
        assert r.status_code == 404 and "X-Model-Version" in r.json()["detail"]
        models = c.get("/v1/models").json()
        traffic = {v["model_version"]: v["traffic"] for v in models["versions"]}
        assert traffic == {"tiny-v1": 0.5, "tiny-v2": 0.5}

        # Shadow: the same answers as without it; the other version's predictions are logged.
        alone = c.post("/predict-rating", json={"user_id": "2", "item_id": "12"}).json()
        r = c.put(
            "/admin/challenger",
            json={"path": str(artifacts.v2), "canary": 0.5, "shadow": True},
            headers=ADMIN,
        )
        assert r.status_code == 200 and r.json()["seconds"] < 5  # loaded already: no reload
        shadowed = c.post("/predict-rating", json={"user_id": "2", "item_id": "12"}).json()
        assert shadowed == alone
        engine = c.app.state.engine
        until = time.monotonic() + 10
        while True:
            assert engine.predictions.flush(5)
            logged = engine.predictions.lookup(["2"], ["12"])[0]
            if set(logged) == {"tiny-v1", "tiny-v2"} or time.monotonic() > until:
                break
            time.sleep(0.05)
        assert set(logged) == {"tiny-v1", "tiny-v2"}
        # Feedback joins both versions' predictions: per-version figures and the paired
        # comparison (too few clusters for an interval yet).
        r = c.post("/feedback", json={"events": [{"user_id": "2", "item_id": "12", "rating": 4}]})
        assert r.status_code == 200, r.text
        models = c.get("/v1/models").json()
        online = {v["model_version"]: v["online"] for v in models["versions"]}
        assert online["tiny-v1"]["n"] == 1 and online["tiny-v2"]["n"] == 1
        assert online["tiny-v1"]["model"]["rmse"] == pytest.approx(
            abs(logged["tiny-v1"].model_rating - 4), abs=1e-4
        )
        assert models["comparison"]["kind"] == "paired" and models["comparison"]["ci"] is None

        # Promote: instant, the challenger's state (projections) carried over.
        challenger = engine.rollout.challenger
        r = c.post("/admin/promote", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert (r.json()["champion"], r.json()["previous"]) == ("tiny-v2", "tiny-v1")
        assert engine.rollout.champion is challenger
        for u in USERS[:10]:
            got = c.post("/predict-rating", json={"user_id": u, "item_id": "10"}).json()
            assert got["model_version"] == "tiny-v2"
        assert c.get("/v1/model").json()["model_version"] == "tiny-v2"
        # Roll back: previous serves again, at once (nothing loads).
        r = c.post("/admin/rollback", headers=ADMIN)
        assert r.status_code == 200 and r.json()["champion"] == "tiny-v1"
        assert r.json()["seconds"] < 5 and r.json()["previous"] is None
        assert _versions(c) == {"champion": "tiny-v1"}
        # Counted before each answer (refused changes are not); every series exists from the
        # start at 0, so the values are what is checked.
        assert _decisions(c, "challenger", "admin") == 2  # canary, then shadow on
        assert _decisions(c, "promote", "admin") == 1
        assert _decisions(c, "rollback", "admin") == 1
        assert _metric(c, "levi_shadow_pairs_total", result="scored") >= 1


def test_a_retrained_version_shares_the_backbone(artifacts, compile_cache):
    """v3 has v1's backbone (a retrain): loaded as challenger it reuses v1's parameters,
    compiled shapes and activation cache, and answers with its own head."""
    with loaded_client(artifacts.v1, compile_cache, admin_token=ADMIN_TOKEN) as c:
        r = c.put(
            "/admin/challenger", json={"path": str(artifacts.v3), "canary": 1.0}, headers=ADMIN
        )
        assert r.status_code == 200, r.text
        rollout = c.app.state.engine.rollout
        a, b = rollout.champion, rollout.challenger
        assert b.scorer.artifact.exported_backbone is a.scorer.artifact.exported_backbone
        assert b.scorer.artifact.backbone_params is a.scorer.artifact.backbone_params
        assert b.scorer.cache is a.scorer.cache
        assert {s for s in a.shapes.compiled if s.function == "backbone"} <= b.shapes.compiled
        one = c.post("/predict-rating", json={"user_id": "1", "item_id": "10"}).json()
        other = c.post(
            "/predict-rating",
            json={"user_id": "1", "item_id": "10"},
            headers={"X-Model-Version": "champion"},
        ).json()
        assert one["model_version"] == "tiny-v3" and other["model_version"] == "tiny-v1"
        assert one["rating"] != other["rating"]  # another head
        # Another backbone (v2) is loaded on its own.
        r = c.put(
            "/admin/challenger", json={"path": str(artifacts.v2), "canary": 1.0}, headers=ADMIN
        )
        assert r.status_code == 200
        b = c.app.state.engine.rollout.challenger
        assert b.scorer.artifact.exported_backbone is not a.scorer.artifact.exported_backbone


def test_the_gate_promotes_a_better_challenger(artifacts, compile_cache, tmp_path):
    """With LEVI_GATE on, feedback that the challenger predicts better (the ratings users
    give are the challenger's own predictions) promotes it once enough events are joined."""
    with loaded_client(
        artifacts.v1,
        compile_cache,
        admin_token=ADMIN_TOKEN,
        feedback_dir=tmp_path / "fb",
        challenger_dir=artifacts.v3,
        canary=0.5,
        shadow=True,
        gate=True,
        gate_min_events=120,
        corrections=False,
    ) as c:
        engine = c.app.state.engine
        assert _versions(c) == {"champion": "tiny-v1", "challenger": "tiny-v3"}
        users = [f"g{k}" for k in range(150)]
        pairs = [{"user_id": u, "item_id": "10"} for u in users]
        got = c.post("/predict-rating/batch", json={"requests": pairs}).json()["predictions"]
        assert engine.predictions.flush(5)
        # Wait for the shadow scoring of every pair (both versions logged).
        until = time.monotonic() + 30
        while time.monotonic() < until:
            logged = engine.predictions.lookup(users, ["10"] * len(users))
            if all(len(x) == 2 for x in logged):
                break
            time.sleep(0.1)
        assert all(len(x) == 2 for x in logged)
        truth = [x["tiny-v3"].model_rating for x in logged]
        events = [
            {"user_id": u, "item_id": "10", "rating": float(np.clip(t, 1, 5))}
            for u, t in zip(users, truth, strict=True)
        ]
        assert len(got) == len(users)
        r = c.post("/feedback", json={"events": events})
        assert r.status_code == 200, r.text
        until = time.monotonic() + 30
        while _versions(c).get("champion") != "tiny-v3" and time.monotonic() < until:
            time.sleep(0.1)
        assert _versions(c) == {"champion": "tiny-v3", "previous": "tiny-v1"}
        # The new champion serves from the swap on; the engine counts the decision only once
        # apply() has returned, which waits for a GC freeze on the scorer thread after it.
        wait_for(lambda: _decisions(c, "promote", "gate") >= 1, 30)
        assert _decisions(c, "promote", "gate") == 1


def test_shadow_work_waits_for_requests_and_is_dropped_when_the_queue_is_full():
    import asyncio
    import threading

    from service.batcher import MicroBatcher
    from service.metrics import Metrics
    from service.scorer import ScoreInput

    order = []
    release = threading.Event()

    class Answers(list):
        def slice(self, a, b):
            return Answers(self[a:b])

    def score(target, pairs, background=False):
        order.append(("shadow" if background else "request", len(pairs)))
        release.wait(5)
        return Answers(range(len(pairs)))

    async def scenario():
        b = MicroBatcher(
            score, Metrics(), max_batch=4, max_delay_s=0.0, queue_bound=100, background_bound=5
        )
        await b.start()
        done = []
        first = asyncio.ensure_future(b.submit([ScoreInput("first", "i")], 5.0, "A"))
        while not order:  # the scorer is busy with the first request
            await asyncio.sleep(0.01)
        pairs = [ScoreInput("u", "i")] * 3
        assert b.submit_background(pairs, "B", 5.0, done.append)
        assert not b.submit_background(pairs, "B", 5.0, done.append)  # 6 > bound of 5
        requests = [
            asyncio.ensure_future(b.submit([ScoreInput(str(k), "i")], 5.0, "A")) for k in range(8)
        ]
        await asyncio.sleep(0.05)
        release.set()
        answers = await asyncio.gather(first, *requests)
        while not done:
            await asyncio.sleep(0.01)
        await b.stop()
        return answers, done

    answers, done = asyncio.run(scenario())
    assert all(len(a) == 1 for a in answers) and len(done) == 1 and len(done[0]) == 3
    # The shadow job, queued before the 8 requests, ran after them.
    assert order == [("request", 1), ("request", 4), ("request", 4), ("shadow", 3)], order


def test_a_challenger_that_cannot_serve_leaves_the_champion_serving(
    artifacts, compile_cache, tmp_path
):
    """At start, a challenger that cannot be loaded does not keep the champion from serving;
    at run time a copy of the champion (its own model version) is refused as challenger."""
    broken = tmp_path / "broken"
    shutil.copytree(artifacts.v3, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with loaded_client(
        artifacts.v1, compile_cache, admin_token=ADMIN_TOKEN, challenger_dir=broken, canary=0.5
    ) as c:
        assert _versions(c) == {"champion": "tiny-v1"}
        assert c.post("/predict-rating", json={"user_id": "1", "item_id": "10"}).status_code == 200
        copy = tmp_path / "copy-of-v1"
        shutil.copytree(artifacts.v1, copy)
        r = c.put("/admin/challenger", json={"path": str(copy), "canary": 0.5}, headers=ADMIN)
        assert r.status_code == 409 and "a challenger must be another version" in r.json()["detail"]
        assert _versions(c) == {"champion": "tiny-v1"}
