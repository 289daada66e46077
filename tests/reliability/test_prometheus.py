"""A real Prometheus scrapes a live ``--workers 2`` service under traffic; every Grafana panel
query (deploy/grafana/dashboards/levi.json) and every alert rule (deploy/prometheus/alerts.yml)
is evaluated against what it scraped.

tests/deploy/test_deploy.py checks that those queries name real metrics and labels; this checks
that Prometheus itself parses and evaluates them on the service's real exposition, that the
panels get data, that the rules evaluate without error, and that counters summed over the
workers never go down between scrapes (each scrape may land on either worker).

Needs Debian's ``prometheus`` and ``promtool`` (``apt-get install prometheus``): skipped
without them, failed in CI (``CI`` or ``LEVI_REQUIRE_REDIS=1`` set; .ci/run installs them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid

import httpx
import pytest
import yaml
from support.load import start_server, wait_for
from support.servers import ROOT, free_port

pytestmark = [pytest.mark.reliability, pytest.mark.e2e, pytest.mark.redis]

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "levi.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SCRAPE = "500ms"
WINDOW = "5s"  # what $__rate_interval stands for: ten scrapes
TRAFFIC_S = 7.0  # scraped under traffic before the queries: more than one window
# Queries that may rightly return nothing from this traffic, and why.
ERROR_RATE = (
    'sum(rate(levi_requests_total{status=~"5.."}[5s])) / sum(rate(levi_requests_total[5s]))'
)
EMPTY_OK = {ERROR_RATE: "no request fails with a 5xx"}


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed: `apt-get install prometheus` (gives promtool too)"
    if os.environ.get("CI") or os.environ.get("LEVI_REQUIRE_REDIS") == "1":
        pytest.fail(message + " (required in CI)")
    pytest.skip(message)


def _panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out += _panels(p.get("panels", []))
    return out


def panel_queries() -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` of every dashboard target, Grafana's variables filled in."""
    out = []
    for panel in _panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):
            expr = re.sub(
                r"\$__rate_interval|\$__interval|\$\{__rate_interval\}", WINDOW, target["expr"]
            )
            assert "$" not in expr, f"{panel['title']}: a Grafana variable is not filled: {expr}"
            out.append((panel["title"], expr))
    return out


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


class Prometheus:
    def __init__(self, base: str):
        self.base = base

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.base}/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200, f"{expr}: {r.status_code} {r.text}"
        body = r.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: {result}"
        return float(result[0]["value"][1])


def _traffic(base: str, stop: threading.Event, sent: dict[str, int]) -> None:
    """Known pairs, cold users and items, batches and invalid bodies, until ``stop``."""
    known = [{"user_id": str(u), "item_id": str(i)} for u in range(1, 5) for i in (10, 11, 12)]
    with httpx.Client(timeout=30) as client:
        k = 0
        while not stop.is_set():
            k += 1
            bodies = [
                ("/predict-rating", known[k % len(known)]),
                (
                    "/predict-rating",
                    {
                        "user_id": "1",
                        "item_id": f"new-{uuid.uuid4().hex[:6]}",
                        "item": {"title": f"Space Oddity {k % 50}"},
                    },
                ),
                (
                    "/predict-rating",
                    {"user_id": f"u-{k}", "item_id": "10", "user": {"occupation": "artist"}},
                ),
                ("/predict-rating/batch", {"requests": known[:3]}),
                ("/predict-rating", {"user_id": "1"}),  # 422
                (
                    "/v1/items",
                    {"items": [{"item_id": f"cat-{k % 20}", "fields": {"title": "Heat"}}]},
                ),
                ("/predict-rating", {"user_id": "2", "item_id": f"cat-{k % 20}"}),
                (
                    "/feedback",
                    {
                        "events": [
                            {"user_id": str(1 + k % 4), "item_id": "11", "rating": float(1 + k % 5)}
                        ]
                    },
                ),
            ]
            for path, body in bodies:
                r = client.post(base + path, json=body)
                key = f"{path} {r.status_code}"
                sent[key] = sent.get(key, 0) + 1
            # new connections too, so both workers answer
            httpx.post(base + "/predict-rating", json=known[k % 3], timeout=30)
            sent["/predict-rating 200"] += 1


@pytest.fixture(scope="module")
def scraped(artifacts, compile_cache, redis_url, tmp_path_factory):
    """A ``--workers 2`` service (a challenger in a canary with shadow) under traffic, scraped
    by a real Prometheus every 0.5 s."""
    prometheus, promtool = _binary("prometheus"), _binary("promtool")
    work = tmp_path_factory.mktemp("prometheus")
    prefix = f"levi:prom:{uuid.uuid4().hex[:12]}"
    with start_server(
        artifacts.v1,
        work / "server.log",
        compile_cache,
        LEVI_WORKERS="2",
        REDIS_URL=redis_url,
        LEVI_CACHE_KEY_PREFIX=prefix,
        LEVI_MAX_BATCH="4",
        LEVI_FEEDBACK_DIR=str(work / "feedback"),
        LEVI_CORRECTIONS_KEY_PREFIX=f"{prefix}:fb",
        LEVI_ONLINE_KEY_PREFIX=f"{prefix}:online",
        LEVI_CATALOG_DIR=str(work / "catalog"),
        LEVI_CATALOG_KEY_PREFIX=f"{prefix}:cat",
        # A challenger in a canary with shadow: the Versions row's panels have data.
        LEVI_CHALLENGER_DIR=str(artifacts.v3),
        LEVI_CANARY="0.5",
        LEVI_SHADOW="true",
    ) as server:
        port = free_port()
        target = server.base.removeprefix("http://")
        config = work / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [
                        {
                            "job_name": "levi-api",
                            "metrics_path": "/metrics",
                            "static_configs": [{"targets": [target]}],
                        }
                    ],
                }
            )
        )
        check = subprocess.run(
            [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0, check.stdout + check.stderr
        stop, sent = threading.Event(), {"/predict-rating 200": 0}
        traffic = threading.Thread(target=_traffic, args=(server.base, stop, sent), daemon=True)
        traffic.start()
        with open(work / "prometheus.log", "w") as sink:
            proc = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        prom = Prometheus(f"http://127.0.0.1:{port}")
        try:

            def scraping() -> bool:  # Prometheus answers 503 until it is ready
                with contextlib.suppress(httpx.HTTPError, AssertionError):
                    return prom.value('count_over_time(up{job="levi-api"}[1m])') >= 4
                return False

            assert wait_for(scraping, 60), (work / "prometheus.log").read_text()[-3000:]
            time.sleep(TRAFFIC_S)
            stop.set()
            traffic.join(timeout=60)
            time.sleep(1.0)  # a scrape and a rule evaluation after the last request
            yield prom, server, sent
        finally:
            stop.set()
            proc.terminate()
            proc.wait(timeout=30)
            with contextlib.suppress(Exception):
                import redis

                client = redis.Redis.from_url(redis_url)
                keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
                if keys:
                    client.delete(*keys)


def test_promtool_accepts_the_alert_rules():
    promtool = _binary("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in check.stdout


def test_every_panel_query_evaluates_and_every_panel_has_data(scraped):
    prom, _, _ = scraped
    queries = panel_queries()
    assert len(queries) >= 15
    empty, panels_with_data = [], set()
    for title, expr in queries:
        result = prom.query(expr)  # fails on a PromQL error
        if result:
            panels_with_data.add(title)
        elif expr not in EMPTY_OK:
            empty.append(f"{title}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    assert panels_with_data == {t for t, _ in queries}


def test_every_alert_rule_evaluates_without_error(scraped):
    prom, _, _ = scraped
    rules = alert_rules()
    for rule in rules:  # each expression on its own, as the rule manager runs it
        prom.query(rule["expr"])
    groups = httpx.get(f"{prom.base}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r["alert"] for r in rules}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
        assert rule["lastEvaluation"] != "0001-01-01T00:00:00Z", f"{name} never evaluated"
    # A healthy service: a model is served, by both workers, in one version.
    for name in ("LeviNoModelServed", "LeviMixedModelVersions", "LeviModelReloadFailed"):
        assert loaded[name]["state"] == "inactive", loaded[name]


def test_counters_summed_over_workers_never_go_down_between_scrapes(scraped):
    prom, server, sent = scraped
    # The last scrape counted every request the traffic sent, whichever worker answered it
    # (Prometheus keeps its connection, so per-worker counters would undercount).
    counted = prom.value(
        'sum(last_over_time(levi_requests_total{endpoint="/predict-rating",status="200"}[1m]))'
    )
    assert counted == sent["/predict-rating 200"], sent
    assert prom.value("count(levi_model_info)") == 2  # one series per worker (pid)
    for counter in (
        "levi_requests_total",
        "levi_request_duration_seconds_count",
        "levi_predictions_total",
    ):
        assert prom.value(f"sum(resets({counter}[1m]))") == 0, counter
