"""Hot reload back to back under load (a reload every 1.5-3.5 s: each takes 1-3 s on 2 busy
cores, then a 0.5 s pause), alternating tiny-v1 / tiny-v2 with refused artifacts mixed in:
no request fails and every answer comes from one of the two models.

(The single-reload version of this check is tests/service/test_e2e.py::
test_reload_under_concurrent_load_fails_no_request; this one repeats the swap many times.)
"""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest
from support.load import ADMIN, Load

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

BODIES = [{"user_id": str(u), "item_id": str(i)} for u in range(1, 5) for i in (10, 11, 12)]
PAUSE_S = 0.5  # between reloads; a reload itself takes 1-3 s on 2 loaded cores


def test_reload_every_second_under_load(rel_server, artifacts, tmp_path):
    server = rel_server
    broken = tmp_path / "wrong-format"
    shutil.copytree(artifacts.v1, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))

    plan = [artifacts.v2, broken, artifacts.v1, artifacts.v2, broken, artifacts.v1]
    served: list[str] = []
    reload_seconds: list[float] = []
    with Load(f"{server.base}/predict-rating", BODIES, threads=3, max_seconds=90) as load:
        time.sleep(0.5)
        for target in plan:
            before = load.count
            r = httpx.post(
                f"{server.base}/admin/reload",
                json={"path": str(target)},
                headers=ADMIN,
                timeout=60,
            )
            if target == broken:
                assert r.status_code == 409, r.text
                assert "format_version 99 is not supported" in r.json()["detail"]
                assert f"still serving model {served[-1]}" in r.json()["detail"]
            else:
                assert r.status_code == 200, r.text
                served.append(r.json()["model_version"])
                reload_seconds.append(r.json()["seconds"])
                model = httpx.get(f"{server.base}/v1/model", timeout=10).json()
                assert model["model_version"] == served[-1]
            time.sleep(PAUSE_S)
            assert load.count > before, "no request was answered between two reloads"
    assert load.failures() == {}, f"failed requests: {load.failures()} of {load.count}"
    assert load.count > 50
    assert load.versions == {"tiny-v1", "tiny-v2"}, load.versions
    assert served[-1] == "tiny-v1"  # left as the other tests expect
    assert server.value("levi_model_reloads_total", result="failure") >= 2
    print(f"{len(plan)} reloads, {load.count} requests, reload seconds {reload_seconds}")
