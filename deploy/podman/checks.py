"""The deploy test's checks (deploy/podman/stack-test.sh runs them, in its tools' venv).

    python checks.py static  # the Kubernetes manifests and the Grafana dashboard, by schema
    python checks.py serve   # the running stack from outside, after `up -d api redis prometheus`
    python checks.py reload  # after the trainer wrote a second model
    python checks.py batch   # after `--profile batch run --rm batch`

Reads its settings from the environment the stack test exports: COMPOSE, CONTAINER_ENGINE,
LEVI_API_PORT, LEVI_PROMETHEUS_PORT, LEVI_ADMIN_TOKEN, ARTIFACTS_DIR and FEEDBACK_DIR (the
host paths of the `artifacts` and `feedback` volumes), BATCH_DIR. Every check prints one line
(ok / FAILED and why); the last line counts them; the exit status is 1 if any failed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
API = f"http://127.0.0.1:{os.environ.get('LEVI_API_PORT', '8000')}"
PROMETHEUS = f"http://127.0.0.1:{os.environ.get('LEVI_PROMETHEUS_PORT', '9090')}"
ENGINE = os.environ.get("CONTAINER_ENGINE", "podman")
PROJECT = "levi"  # docker-compose.yml's `name`
STATE = Path(os.environ.get("LEVI_DEPLOY_RUN_DIR", "/tmp")) / "checks-state.json"

results: list[tuple[str, bool]] = []


def check(name: str) -> Callable[[Callable[[], str | None]], Callable[[], str | None]]:
    def run(fn: Callable[[], str | None]) -> Callable[[], str | None]:
        start = time.monotonic()
        try:
            detail = fn() or ""
            ok = True
        except Exception as e:  # a check that raises has failed; the others still run
            detail = f"{type(e).__name__}: {e}"
            if not isinstance(e, AssertionError | TimeoutError):
                detail += "\n" + traceback.format_exc()
            ok = False
        took = time.monotonic() - start
        print(f"[{'ok' if ok else 'FAILED'}] {name} ({took:.1f}s){': ' + detail if detail else ''}")
        sys.stdout.flush()
        results.append((name, ok))
        return fn

    return run


# ----------------------------------------------------------------------------- helpers
def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout=30
):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (OSError, ValueError) as e:
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s (last: {last!r})"[:800])


def container(service: str) -> str:
    out = subprocess.run(
        [ENGINE, "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        + ["--filter", f"label=com.docker.compose.service={service}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(out) == 1, f"one running {service} container expected, found {out}"
    return out[0]


def compose_exec(service: str, *argv: str) -> subprocess.CompletedProcess:
    cmd = shlex.split(os.environ.get("COMPOSE", "podman-compose")) + ["exec", "-T", service]
    return subprocess.run(cmd + list(argv), capture_output=True, text=True, timeout=60)


def served_version_on_disk() -> str:
    return os.readlink(Path(os.environ["ARTIFACTS_DIR"]) / "latest").rstrip("/").split("/")[-1]


def prom_query(expr: str) -> list[dict]:
    query = urllib.parse.urlencode({"query": expr})
    status, body = http("GET", f"{PROMETHEUS}/api/v1/query?{query}")
    assert status == 200 and body["status"] == "success", f"{expr}: {status} {body}"
    return body["data"]["result"]


def predict(user: str = "196", item: str = "242") -> dict:
    status, body = http("POST", f"{API}/predict-rating", {"user_id": user, "item_id": item})
    assert status == 200, f"POST /predict-rating: {status} {body}"
    return body


def remember(**values: Any) -> None:
    state = json.loads(STATE.read_text()) if STATE.exists() else {}
    STATE.write_text(json.dumps(state | values))


def recall(key: str) -> Any:
    return json.loads(STATE.read_text())[key]


# ----------------------------------------------------------------------- static phase
K8S_VERSIONS = ("1.28", "1.37")  # the oldest Kubernetes the manifests support, the newest known


def k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted((ROOT / "deploy/k8s").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def static_checks() -> None:
    import kubernetes_validate

    @check(f"Kubernetes manifests valid against the API schemas of {', '.join(K8S_VERSIONS)}")
    def _():
        docs = k8s_documents()
        for version in K8S_VERSIONS:
            for name, doc in docs:
                where = f"{name}: {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version})"
                try:  # strict: a field the API does not know is an error too
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(map(str, e.path))
                    raise AssertionError(f"{where}: {path}: {e.message}") from None
                except kubernetes_validate.SchemaNotFoundError:
                    raise AssertionError(f"{where}: no such kind in this version") from None
        return f"{len(docs)} objects"

    @check("kustomization: its resources render, its image rewrite names an image they use")
    def _():
        k = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
        docs = [d for name, d in k8s_documents() if name in k["resources"]]
        assert len({n for n, _ in k8s_documents() if n in k["resources"]}) == len(k["resources"])
        images = {
            c["image"].split(":")[0]
            for d in docs
            for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        }
        for rewrite in k["images"]:
            assert rewrite["name"] in images, (rewrite, images)
        jobs = {d["metadata"]["name"]: d for _, d in k8s_documents() if d["kind"] == "Job"}
        train_image = jobs["levi-train"]["spec"]["template"]["spec"]["containers"][0]["image"]
        assert train_image.split(":")[0] == "levi-train", train_image
        return f"{len(docs)} objects, images {sorted(images)}; training Job: {train_image}"

    @check("Grafana dashboard: every field is one of Grafana's dashboard schema (SDK models)")
    def _():
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.cog.plugins import register_default_plugins
        from grafana_foundation_sdk.models.dashboard import Dashboard

        register_default_plugins()  # panel options and Prometheus queries as typed models
        raw = json.loads((ROOT / "deploy/grafana/dashboards/levi.json").read_text())
        again = json.loads(json.dumps(Dashboard.from_json(raw), cls=JSONEncoder))
        lost = list(_differences(raw, again))
        assert not lost, f"not in the schema or changed by it: {lost[:10]}"
        return f"{len(raw['panels'])} panels round-trip unchanged"

    @check("Grafana provisioning: the datasource is the compose Prometheus, dashboards mounted")
    def _():
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
        prov = ROOT / "deploy/grafana/provisioning"
        (source,) = yaml.safe_load((prov / "datasources/prometheus.yml").read_text())["datasources"]
        url = urllib.parse.urlparse(source["url"])
        assert source["type"] == "prometheus" and url.hostname in compose, source
        port = int(compose["prometheus"]["ports"][0].rsplit(":", 1)[1])
        assert url.port == port, (url, port)
        (provider,) = yaml.safe_load((prov / "dashboards/levi.yml").read_text())["providers"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["grafana"]["volumes"]}
        assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards", mounts
        return f"{source['url']} (uid {source['uid']})"


def _differences(a: Any, b: Any, path: str = ""):
    if isinstance(a, dict):
        if not isinstance(b, dict):
            yield f"{path}: {type(b).__name__}"
            return
        for key, value in a.items():
            if key not in b:
                yield f"{path}/{key}"
            else:
                yield from _differences(value, b[key], f"{path}/{key}")
    elif isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            yield f"{path}: list"
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _differences(x, y, f"{path}[{i}]")
    elif a != b:
        yield f"{path}: {a!r} -> {b!r}"


# ------------------------------------------------------------------------ serve phase
def serve_checks() -> None:
    @check("api ready: GET /readyz answers 200 (model loaded and warmed)")
    def _():
        wait_for("/readyz 200", lambda: http("GET", f"{API}/readyz", timeout=5)[0] == 200, 240)
        status, _ = http("GET", f"{API}/healthz")
        assert status == 200, f"/healthz {status}"

    @check("api healthcheck (docker-compose.yml's, run in the container) passes")
    def _():
        cid = container("api")
        if ENGINE == "podman":  # podman without systemd does not schedule healthchecks itself
            argv = [ENGINE, "healthcheck", "run", cid]
            run = subprocess.run(argv, capture_output=True, text=True)
            assert run.returncode == 0, f"podman healthcheck run: {run.stdout}{run.stderr}"
            return "podman healthcheck run: healthy"
        fmt = ["-f", "{{.State.Health.Status}}"]
        status = lambda: subprocess.run(  # noqa: E731
            [ENGINE, "inspect", *fmt, cid], capture_output=True, text=True
        ).stdout.strip()
        wait_for("healthy", lambda: status() == "healthy", 60)
        return "healthy"

    @check("api runs as uid 10001 and the artifact volume is read-only")
    def _():
        uid = compose_exec("api", "id", "-u")
        assert uid.returncode == 0 and uid.stdout.strip() == "10001", uid
        touch = compose_exec("api", "touch", "/artifacts/probe")
        assert touch.returncode != 0 and "Read-only" in touch.stderr, touch

    @check("the api serves the model the trainer wrote (artifacts/latest)")
    def _():
        expected = served_version_on_disk()
        status, info = http("GET", f"{API}/v1/model")
        assert status == 200 and info["model_version"] == expected, (expected, status, info)
        remember(first_version=expected)
        return expected

    @check("POST /predict-rating answers a rating in range with one rating per adapter")
    def _():
        body = predict()
        assert 1.0 <= body["rating"] <= 5.0, body
        assert len(body["adapters"]) == 6 and body["model_version"] == recall("first_version")
        status, batch = http(
            "POST",
            f"{API}/predict-rating/batch",
            {"requests": [{"user_id": "1", "item_id": "1"}, {"user_id": "196", "item_id": "242"}]},
        )
        assert status == 200 and len(batch["predictions"]) == 2, (status, batch)
        assert batch["predictions"][1]["rating"] == body["rating"], (batch, body)
        return f"rating {body['rating']:.3f}"

    @check("POST /feedback: the event lands in the feedback volume")
    def _():
        event_id = f"deploy-test-{uuid.uuid4()}"
        event = {"event_id": event_id, "user_id": "196", "item_id": "242", "rating": 5}
        status, body = http("POST", f"{API}/feedback", {"events": [event]})
        assert status == 200 and body["accepted"] == 1, (status, body)
        files = sorted(Path(os.environ["FEEDBACK_DIR"]).rglob("*.jsonl"))
        logged = [
            json.loads(line)
            for f in files
            for line in f.read_text().splitlines()
            if event_id in line
        ]
        assert len(logged) == 1 and logged[0]["rating"] == 5, (files, logged)
        remember(event_id=event_id)
        return f"{event_id} in {', '.join(f.name for f in files)} ({body['corrections']})"

    @check("Redis holds the api's keys (activation cache, online corrections)")
    def _():
        scan = compose_exec("redis", "redis-cli", "--scan", "--pattern", "levi:*")
        assert scan.returncode == 0, scan
        keys = scan.stdout.split()
        kinds = {k.split(":")[1] for k in keys}
        assert {"act", "fb"} <= kinds, f"key kinds {sorted(kinds)} ({len(keys)} keys)"
        return f"{len(keys)} keys, kinds {sorted(kinds)}"

    @check("Prometheus scrapes the api: target levi-api up, levi_model_info of the served model")
    def _():
        def scraped():
            status, body = http("GET", f"{PROMETHEUS}/api/v1/targets")
            targets = [t for t in body["data"]["activeTargets"] if t["labels"]["job"] == "levi-api"]
            return targets and all(t["health"] == "up" for t in targets) and targets

        targets = wait_for("target levi-api up", scraped, 90)
        info = wait_for(
            "levi_model_info scraped",
            lambda: prom_query(f'levi_model_info{{model_version="{recall("first_version")}"}}'),
            60,
        )
        up = prom_query('up{job="levi-api"}')
        assert up and up[0]["value"][1] == "1", up
        return f"{targets[0]['scrapeUrl']}, {len(info)} levi_model_info series"

    @check("Prometheus loaded every alert rule group of deploy/prometheus/alerts.yml")
    def _():
        groups = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
        want = {g["name"]: len(g["rules"]) for g in groups}
        status, body = http("GET", f"{PROMETHEUS}/api/v1/rules")
        got = {g["name"]: len(g["rules"]) for g in body["data"]["groups"]}
        assert got == want, f"loaded {got}, alerts.yml has {want}"
        unhealthy = [
            r["name"] for g in body["data"]["groups"] for r in g["rules"] if r["health"] == "err"
        ]
        assert not unhealthy, f"rules failing to evaluate: {unhealthy}"
        return ", ".join(f"{k} ({v} rules)" for k, v in want.items())

    @check("every Grafana panel query evaluates on this Prometheus")
    def _():
        dashboard = json.loads((ROOT / "deploy/grafana/dashboards/levi.json").read_text())
        exprs = [
            t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if t.get("expr")
        ]
        with_data = 0
        for expr in exprs:
            expr = re.sub(r"\$\{?__(rate_)?interval\}?", "1m", expr)
            expr = re.sub(r"\$\{?__range\}?", "5m", expr)
            with_data += bool(prom_query(expr))
        return f"{len(exprs)} queries, {with_data} with data"


# ----------------------------------------------------------------------- reload phase
def reload_checks() -> None:
    @check("the trainer read the logged feedback and wrote a second model")
    def _():
        log = Path(os.environ["RETRAIN_LOG"]).read_text()
        learned = re.search(r"feedback: (\d+) events added from", log)
        assert learned and int(learned.group(1)) >= 1, "no feedback event added"
        second = served_version_on_disk()
        assert second != recall("first_version"), second
        manifest = Path(os.environ["ARTIFACTS_DIR"]) / second / "manifest.json"
        assert manifest.is_file(), manifest
        remember(second_version=second)
        return f"{second}, {learned.group(0).removesuffix(' from')}"

    @check("POST /admin/reload: the api serves the trainer's new model")
    def _():
        token = os.environ["LEVI_ADMIN_TOKEN"]
        status, body = http(
            "POST", f"{API}/admin/reload", {}, {"Authorization": f"Bearer {token}"}, timeout=180
        )
        second = recall("second_version")
        assert status == 200 and body["model_version"] == second, (status, body)
        assert body["previous_version"] == recall("first_version"), body
        assert predict()["model_version"] == second
        status, info = http("GET", f"{API}/v1/model")
        assert info["model_version"] == second, info
        return f"{body['previous_version']} -> {second} in {body['seconds']:.1f}s"

    @check("an admin call without the token is refused")
    def _():
        status, _ = http("POST", f"{API}/admin/reload", {})
        assert status == 401, status


# ------------------------------------------------------------------------ batch phase
def batch_checks() -> None:
    @check("the batch scorer (serve image) scored every row with the served model")
    def _():
        batch = Path(os.environ["BATCH_DIR"])
        rows = list(csv.DictReader((batch / os.environ["BATCH_INPUT"]).open()))
        scores = list(csv.DictReader((batch / os.environ["BATCH_OUTPUT"]).open()))
        assert len(scores) == len(rows) > 0, (len(rows), len(scores))
        assert [(r["user_id"], r["item_id"]) for r in scores] == [
            (r["user_id"], r["item_id"]) for r in rows
        ]
        ratings = [float(r["rating"]) for r in scores]
        assert all(1.0 <= x <= 5.0 for x in ratings), ratings
        pair = next(r for r in scores if (r["user_id"], r["item_id"]) == ("196", "242"))
        online = predict()["model_rating"]
        assert abs(float(pair["rating"]) - online) < 1e-4, (pair, online)
        return f"{len(scores)} rows"


def main(argv: list[str]) -> int:
    phases = {
        "static": static_checks,
        "serve": serve_checks,
        "reload": reload_checks,
        "batch": batch_checks,
    }
    if len(argv) != 1 or argv[0] not in phases:
        print(__doc__, file=sys.stderr)
        return 2
    phases[argv[0]]()
    failed = sum(not ok for _, ok in results)
    print(f"deploy-test {argv[0]}: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
