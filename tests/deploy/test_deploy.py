"""Deployment configuration: docker-compose.yml and deploy/ (Prometheus, Grafana, Kubernetes).

Every YAML and JSON file parses; the dashboard's and the alert rules' PromQL names only real
metrics and labels (the list below, and what service/metrics.py registers); probes
and healthchecks name real routes of the app; the Indexed Job shards by its completion index;
the pieces that refer to each other (datasource uid, mounts, names, ports) agree.

Here the Dockerfile is checked as text; `make deploy-test` (deploy/podman/) builds its images
and runs the compose stack for real, running deploy/README.md's compose commands.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "levi.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards"

# The service's metrics contract: exposed name (counters with _total) -> (type, label names).
KNOWN_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "levi_requests_total": ("counter", frozenset({"endpoint", "status"})),
    "levi_request_duration_seconds": ("histogram", frozenset({"endpoint"})),
    "levi_batch_size": ("histogram", frozenset()),
    "levi_queue_wait_seconds": ("histogram", frozenset()),
    "levi_backbone_seconds": ("histogram", frozenset()),
    "levi_head_seconds": ("histogram", frozenset()),
    "levi_activation_cache_lookups_total": ("counter", frozenset({"tier", "result"})),
    "levi_prediction_rating": ("histogram", frozenset()),
    "levi_adapter_rating": ("histogram", frozenset({"layer"})),
    "levi_adapter_disagreement": ("histogram", frozenset()),
    "levi_ood_score": ("histogram", frozenset()),
    "levi_unknown_entities_total": ("counter", frozenset({"kind"})),
    "levi_prediction_psi": ("gauge", frozenset()),
    "levi_activation_drift": ("gauge", frozenset({"layer"})),
    "levi_model_info": ("gauge", frozenset({"model_version", "backbone"})),
    "levi_model_reloads_total": ("counter", frozenset({"result"})),
    # Beyond the first list: the background warm-up (service/warmup.py).
    "levi_warmup_pending_shapes": ("gauge", frozenset()),
    "levi_warmup_seconds": ("gauge", frozenset({"stage"})),
    # The feedback loop (service/corrections.py, service/feedback_log.py).
    "levi_feedback_events_total": ("counter", frozenset()),
    "levi_feedback_log_errors_total": ("counter", frozenset()),
    "levi_correction_magnitude": ("histogram", frozenset()),
    "levi_corrected_entities": ("gauge", frozenset({"side"})),
    "levi_feedback_replay_backlog": ("gauge", frozenset()),
    "levi_feedback_replay_total": ("counter", frozenset({"result"})),
    "levi_model_version_info": ("gauge", frozenset({"alias", "model_version"})),
    "levi_routed_requests_total": ("counter", frozenset({"alias"})),
    "levi_shadow_pairs_total": ("counter", frozenset({"result"})),
    "levi_rollout_decisions_total": ("counter", frozenset({"decision", "trigger"})),
    "levi_prediction_log_total": ("counter", frozenset({"result"})),
    "levi_online_feedback_joined_total": ("counter", frozenset({"model_version", "slice"})),
    "levi_online_squared_error_total": (
        "counter",
        frozenset({"model_version", "slice", "rating"}),
    ),
    "levi_online_absolute_error_total": (
        "counter",
        frozenset({"model_version", "slice", "rating"}),
    ),
    "levi_online_paired_total": ("counter", frozenset({"champion", "challenger"})),
    "levi_online_paired_squared_error_total": (
        "counter",
        frozenset({"champion", "challenger", "side", "rating"}),
    ),
    "levi_online_eval_redis_errors_total": ("counter", frozenset()),
    "levi_scheduler_dropped_pairs_total": ("counter", frozenset()),
    "levi_open_connections": ("gauge", frozenset()),
    "levi_connections_refused_total": ("counter", frozenset()),
    "levi_receive_timeouts_total": ("counter", frozenset({"phase"})),
    # The online catalog (service/catalog.py, service/catalog_warmer.py).
    "levi_catalog_records": ("gauge", frozenset({"kind"})),
    "levi_catalog_upserts_total": ("counter", frozenset({"kind", "shared"})),
    "levi_catalog_deletes_total": ("counter", frozenset({"kind", "shared"})),
    "levi_catalog_lookups_total": ("counter", frozenset({"kind", "source"})),
    "levi_catalog_pending_encodes": ("gauge", frozenset()),
    "levi_catalog_encodes_total": ("counter", frozenset({"result"})),
    "levi_catalog_unshared_records": ("gauge", frozenset()),
    "levi_catalog_resyncs_total": ("counter", frozenset({"reason"})),
    "levi_catalog_log_errors_total": ("counter", frozenset()),
}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# The app's probe and scrape routes (checked against the live app below as well).
HEALTH_PATHS = {"liveness": "/healthz", "readiness": "/readyz", "metrics": "/metrics"}
SERVICE_COMMAND = ["python", "-m", "service"]


# --------------------------------------------------------------------------- helpers
def series_labels(metrics: dict[str, tuple[str, frozenset[str]]]) -> dict[str, frozenset[str]]:
    """Queryable series name -> label names: histograms as _bucket (+ le), _sum and _count."""
    out: dict[str, frozenset[str]] = {}
    for name, (kind, labels) in metrics.items():
        if kind == "histogram":
            out[name + "_bucket"] = labels | {"le"}
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
        else:
            out[name] = labels
    return out


def base_metric(series: str, metrics: dict[str, tuple[str, frozenset[str]]]) -> str:
    """``levi_ood_score_bucket`` -> ``levi_ood_score`` (names that are not series pass through)."""
    for suffix in ("_bucket", "_sum", "_count"):
        stem = series.removesuffix(suffix)
        if stem != series and metrics.get(stem, ("",))[0] == "histogram":
            return stem
    return series


_STRING = re.compile(r'"(?:\\.|[^"\\])*"' + r"|'(?:\\.|[^'\\])*'")
_GRAFANA_VAR = re.compile(r"\$\{?\w+\}?")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def promql_references(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metric names a PromQL expression selects and the labels it names.

    Returns:
        ``({metric: label names in its matchers}, grouping labels of by/without/on/ignoring)``.
        Function and aggregation names (identifiers followed by ``(``), keywords, strings,
        range selectors and Grafana variables are not metric names.
    """
    text = _GRAFANA_VAR.sub(" ", _STRING.sub('""', expr))
    metrics: dict[str, set[str]] = {}
    for m in _SELECTOR.finditer(text):
        labels = set(_MATCHER.findall(m.group(2)))
        name = m.group(1) or "{" + m.group(2).strip() + "}"  # a bare {...} selector
        metrics.setdefault(name, set()).update(labels)
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    grouping: set[str] = set()
    for m in _GROUPING.finditer(text):
        grouping.update(x.strip() for x in m.group(1).split(",") if x.strip())
    text = _GROUPING.sub(" ", text)
    for m in _IDENT.finditer(text):
        name = m.group(1)
        rest = text[m.end() :].lstrip()
        if name.lower() in _KEYWORDS or rest.startswith("("):
            continue
        metrics.setdefault(name, set())
    return metrics, grouping


def query_problems(
    expr: str,
    metrics: dict[str, tuple[str, frozenset[str]]] = KNOWN_METRICS,
    legend: str | None = None,
) -> list[str]:
    """What in ``expr`` (and its Grafana legend) names a metric or label that does not exist."""
    series = series_labels(metrics)
    selected, grouping = promql_references(expr)
    problems = []
    available = set(TARGET_LABELS)
    for name, labels in selected.items():
        if name not in series:
            hint = " (a histogram: query _bucket, _sum or _count)" if name in metrics else ""
            problems.append(f"unknown metric {name!r}{hint}")
            continue
        available |= series[name]
        for label in sorted(labels - series[name] - TARGET_LABELS):
            problems.append(f"{name} has no label {label!r}")
    if not selected:
        problems.append("selects no metric")
    for label in sorted(grouping - available):
        problems.append(f"groups by {label!r}, which no selected metric has")
    if legend:
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            if label not in available:
                problems.append(f"legend names label {label!r}, which no selected metric has")
    return problems


def load_yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def config_files() -> list[Path]:
    files = [COMPOSE]
    for pattern in ("*.yml", "*.yaml", "*.json"):
        files += DEPLOY.rglob(pattern)
    return sorted(set(files))


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out += all_panels(p.get("panels", []))  # collapsed rows nest their panels
    return out


def dashboard_queries() -> list[tuple[str, str, str | None]]:
    """``(panel title, expr, legendFormat)`` of every dashboard target."""
    return [
        (p.get("title", ""), t["expr"], t.get("legendFormat"))
        for p in all_panels(dashboard()["panels"])
        for t in p.get("targets", [])
    ]


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_objects() -> list[tuple[Path, dict]]:
    return [
        (path, doc)
        for path in sorted(K8S.glob("*.y*ml"))
        if path.name != "kustomization.yaml"
        for doc in load_yaml_docs(path)
    ]


def k8s_object(kind: str, name: str | None = None) -> dict:
    found = [
        d
        for _, d in k8s_objects()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def pod_containers(obj: dict) -> list[dict]:
    return obj["spec"]["template"]["spec"]["containers"]


def provisioned_datasource_uids() -> set[str]:
    uids = set()
    for path in DATASOURCES.glob("*.y*ml"):
        for ds in yaml.safe_load(path.read_text()).get("datasources", []):
            uids.add(ds["uid"])
    return uids


def module_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def app_paths() -> set[str]:
    """The routes of the real app (its OpenAPI schema; built without loading a model)."""
    from service.app import create_app
    from service.settings import Settings

    return set(create_app(Settings(redis_url=None)).openapi()["paths"])


@pytest.fixture(scope="module")
def registered_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """What service/metrics.py registers, in the form of KNOWN_METRICS.

    Skips (visibly, see ``-ra``) only while service/metrics.py does not exist; a module that
    exists but offers no registry fails.
    """
    try:
        module = importlib.import_module("service.metrics")
    except ModuleNotFoundError as e:
        if e.name in ("service", "service.metrics"):
            pytest.skip(
                "NOT WIRED YET: service/metrics.py does not exist; this check runs once it does"
            )
        raise
    from prometheus_client import CollectorRegistry

    if hasattr(module, "Metrics"):
        metrics = module.Metrics()
        if hasattr(metrics, "use_rating_scale"):  # the rating histograms follow the model's
            metrics.use_rating_scale(1.0, 5.0)
        registry = metrics.registry
    elif isinstance(getattr(module, "REGISTRY", None), CollectorRegistry):
        registry = module.REGISTRY
    else:
        pytest.fail(
            "service.metrics has neither a Metrics class (with .registry) nor a REGISTRY; "
            "update registered_metrics() in tests/deploy/test_deploy.py to find its registry"
        )
    # Label names are not part of the exposition of a metric without children, so they are
    # read from the collectors (prometheus_client keeps them in `_labelnames`).
    labels_by_name = {
        c._name: frozenset(c._labelnames)
        for c in getattr(registry, "_collector_to_names", {})
        if hasattr(c, "_labelnames")
    }
    out = {}
    for family in registry.collect():
        kind = family.type
        exposed = family.name + "_total" if kind == "counter" else family.name
        out[exposed] = (kind, labels_by_name.get(family.name, frozenset()))
    return out


# ------------------------------------------------------------------- every file parses
@pytest.mark.parametrize("path", config_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_config_file_parses(path: Path):
    if path.suffix == ".json":
        assert isinstance(json.loads(path.read_text()), dict)
    else:
        docs = load_yaml_docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), f"{path}: no YAML mapping"


def test_expected_files_exist():
    for path in (
        DEPLOY / "Dockerfile",
        ROOT / ".dockerignore",
        COMPOSE,
        PROMETHEUS,
        ALERTS,
        DASHBOARD,
        DEPLOY / "README.md",
        K8S / "kustomization.yaml",
    ):
        assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    assert list(DATASOURCES.glob("*.y*ml")) and list(DASHBOARD_PROVIDERS.glob("*.y*ml"))


# -------------------------------------------------------------- the PromQL checker itself
@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(levi_request_total[5m])", "unknown metric 'levi_request_total'"),
        ("levi_requests", "unknown metric 'levi_requests'"),
        ("histogram_quantile(0.9, rate(levi_ood_score[5m]))", "a histogram"),
        ("levi_prediction_psi_bucket", "unknown metric 'levi_prediction_psi_bucket'"),
        ('sum(rate(levi_requests_total{code="500"}[5m]))', "no label 'code'"),
        ("sum by (tier) (rate(levi_requests_total[5m]))", "groups by 'tier'"),
        ("avg(levi_activaton_drift) > 1.5", "unknown metric 'levi_activaton_drift'"),
        ("rate(levi_ood_score_count[5m]) / on() group_left rate(levi_oops_total[5m])", "oops"),
        ("vector(1)", "selects no metric"),
    ],
)
def test_checker_flags_wrong_queries(expr: str, problem: str):
    problems = query_problems(expr)
    assert any(problem in p for p in problems), f"{expr!r}: {problems}"


def test_checker_accepts_valid_queries():
    for expr in (
        "histogram_quantile(0.99, sum by (le, endpoint) (rate(levi_request_duration_seconds_bucket"
        '{endpoint=~"/predict-rating.*"}[$__rate_interval])))',
        'sum(rate(levi_requests_total{status=~"5.."}[5m])) / sum(rate(levi_requests_total[5m]))',
        "count(count by (model_version) (levi_model_info)) > 1",
        "sum by (kind) (rate(levi_unknown_entities_total[5m])) / on() group_left() "
        "sum(rate(levi_prediction_rating_count[5m]))",
        "absent(levi_model_info)",
        'increase(levi_model_reloads_total{result="failure"}[15m]) > 0',
    ):
        assert query_problems(expr) == [], expr
    assert query_problems("avg by (layer) (levi_activation_drift)", legend="{{kind}}")


# ------------------------------------------------------- queries name real metrics
def test_dashboard_queries_name_known_metrics():
    queries = dashboard_queries()
    assert len(queries) >= 15
    bad = {
        f"{title}: {expr}": problems
        for title, expr, legend in queries
        if (problems := query_problems(expr, legend=legend))
    }
    assert not bad, bad


def test_alert_queries_name_known_metrics():
    bad = {r["alert"]: p for r in alert_rules() if (p := query_problems(r["expr"]))}
    assert not bad, bad


def test_design_metrics_are_what_the_service_registers(registered_metrics):
    missing = {
        name: spec for name, spec in KNOWN_METRICS.items() if registered_metrics.get(name) != spec
    }
    assert not missing, {
        name: f"the contract says {spec}, service/metrics.py has {registered_metrics.get(name)}"
        for name, spec in missing.items()
    }


def test_dashboard_and_alerts_use_registered_metrics(registered_metrics):
    exprs = [(f"dashboard {t}", e, lg) for t, e, lg in dashboard_queries()]
    exprs += [(f"alert {r['alert']}", r["expr"], None) for r in alert_rules()]
    bad = {w: p for w, e, lg in exprs if (p := query_problems(e, registered_metrics, lg))}
    assert not bad, bad


def test_dashboard_plots_every_design_metric():
    used = {
        base_metric(name, KNOWN_METRICS)
        for _, expr, _ in dashboard_queries()
        for name in promql_references(expr)[0]
    }
    assert not set(KNOWN_METRICS) - used, f"not plotted: {sorted(set(KNOWN_METRICS) - used)}"


def test_alerts_cover_drift_errors_latency_cache_and_reloads():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for r in rules:
        assert r.get("labels", {}).get("severity") in {"critical", "warning", "info"}, r["alert"]
        assert r.get("annotations", {}).get("summary"), f"{r['alert']}: no summary"
    used = {
        base_metric(name, KNOWN_METRICS) for r in rules for name in promql_references(r["expr"])[0]
    }
    for metric in (
        "levi_prediction_psi",
        "levi_activation_drift",
        "levi_ood_score",
        "levi_requests_total",
        "levi_request_duration_seconds",
        "levi_activation_cache_lookups_total",
        "levi_model_reloads_total",
    ):
        assert metric in used, f"no alert rule on {metric}"
    psi = [r for r in rules if "levi_prediction_psi" in r["expr"]]
    assert any(re.search(r">\s*0\.2\b", r["expr"]) and r.get("for") == "10m" for r in psi)


# ------------------------------------------------------------------ Grafana
def test_dashboard_is_a_grafana_dashboard_model():
    d = dashboard()
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 30
    assert d["uid"] and d["title"]
    panels = all_panels(d["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(g) and g["w"] > 0 and g["h"] > 0, p["title"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{p['title']}: wider than the grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in occupied, f"{p['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = p["title"]
        if p["type"] not in {"row", "text"}:
            refs = [t["refId"] for t in p["targets"]]
            assert p["targets"] and len(refs) == len(set(refs)), p["title"]
            assert all(t["expr"].strip() for t in p["targets"]), p["title"]


def test_dashboard_datasource_is_the_provisioned_one():
    uids = provisioned_datasource_uids()
    assert len(uids) == 1, f"one provisioned datasource expected, found {uids}"
    for p in all_panels(dashboard()["panels"]):
        for holder in [p, *p.get("targets", [])]:
            if "datasource" in holder:
                assert holder["datasource"]["uid"] in uids, f"{p['title']}: {holder['datasource']}"
        if p.get("targets"):
            assert p["datasource"]["uid"] in uids, p["title"]


def test_dashboard_explains_the_drift_signals():
    texts = [
        p["options"]["content"] for p in all_panels(dashboard()["panels"]) if p["type"] == "text"
    ]
    content = "\n".join(texts).lower()
    for signal in ("disagreement", "ood score", "activation drift", "psi", "unknown"):
        assert signal in content, f"the text panel does not explain {signal!r}"


def test_grafana_and_prometheus_mounts_match_their_configs():
    services = compose()["services"]
    grafana_mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert grafana_mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider_paths = {
        p["options"]["path"]
        for f in DASHBOARD_PROVIDERS.glob("*.y*ml")
        for p in yaml.safe_load(f.read_text())["providers"]
    }
    assert provider_paths == {grafana_mounts["./deploy/grafana/dashboards"]}

    prom = yaml.safe_load(PROMETHEUS.read_text())
    prom_mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert prom_mounts["./deploy/prometheus/alerts.yml"] in prom["rule_files"]
    config_flag = next(a for a in services["prometheus"]["command"] if "config.file" in a)
    assert prom_mounts["./deploy/prometheus/prometheus.yml"] == config_flag.split("=", 1)[1]
    for ds in yaml.safe_load(next(DATASOURCES.glob("*.y*ml")).read_text())["datasources"]:
        assert ds["url"].split("//")[1].split(":")[0] in services, ds["url"]


def test_prometheus_scrapes_the_api_metrics_route(app_paths):
    prom = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    api = jobs["levi-api"]
    assert api.get("metrics_path", "/metrics") in app_paths
    targets = [t for c in api["static_configs"] for t in c["targets"]]
    assert targets == ["api:8000"]
    assert "api" in compose()["services"]


# ------------------------------------------------------------------ docker-compose
def test_health_paths_are_real_routes(app_paths):
    assert set(HEALTH_PATHS.values()) <= app_paths, app_paths


def test_compose_api_runs_the_service_and_is_ready_on_readyz(app_paths):
    services = compose()["services"]
    api = services["api"]
    command = api["command"]
    assert command[:3] == SERVICE_COMMAND and module_exists("service.__main__")
    assert command[command.index("--model") + 1] == "/artifacts/latest"
    check = " ".join(api["healthcheck"]["test"])
    assert HEALTH_PATHS["readiness"] in check
    assert set(re.findall(r"127\.0\.0\.1:8000(/\w+)", check)) <= app_paths
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "redis-cli" in " ".join(services["redis"]["healthcheck"]["test"])
    assert api["environment"]["REDIS_URL"].startswith("redis://redis:")


def test_compose_trainer_and_batch_profiles():
    services = compose()["services"]
    trainer, batch, api = services["trainer"], services["batch"], services["api"]
    assert trainer["profiles"] == ["train"] and trainer["command"] == ["make", "train"]
    assert re.search(r"^train:", (ROOT / "Makefile").read_text(), re.MULTILINE)
    volume = lambda svc: {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    assert volume(trainer)["/artifacts"] == volume(api)["/artifacts"] == "artifacts"
    assert "artifacts" in compose()["volumes"]
    assert trainer["environment"]["ARTIFACTS"] == "/artifacts"
    assert batch["profiles"] and batch["command"][:3] == ["python", "-m", "service.batch"]
    assert module_exists("service.batch")
    for svc in ("api", "redis", "prometheus", "grafana"):
        assert "profiles" not in services[svc], f"{svc} must start with `docker compose up`"


def _settings_env_names() -> set[str]:
    from model.packaged import CACHE_ENV
    from service.settings import Settings

    return {f"LEVI_{f.upper()}" for f in Settings.model_fields} | {"REDIS_URL", CACHE_ENV}


def test_compose_and_configmap_settings_exist():
    known = _settings_env_names()
    env = dict(compose()["services"]["api"]["environment"])
    env |= k8s_object("ConfigMap", "levi-config")["data"]
    unknown = sorted(k for k in env if k not in known)
    assert not unknown, f"not settings of service/settings.py: {unknown}"


# ----------------------------------------------------------------------- Kubernetes
def test_k8s_manifests_are_namespace_agnostic_and_typed():
    objects = k8s_objects()
    assert objects
    for path, obj in objects:
        assert obj.get("apiVersion") and obj.get("kind"), path
        assert "namespace" not in obj["metadata"], f"{path}: hard-coded namespace"


def test_k8s_deployment_probes_resources_and_wiring(app_paths):
    dep = k8s_object("Deployment", "levi-api")
    (c,) = pod_containers(dep)
    assert c["command"] == SERVICE_COMMAND
    assert c["args"][c["args"].index("--model") + 1] == "/artifacts/latest"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and path in app_paths, probe
        assert get["port"] in ports or get["port"] in ports.values(), probe
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]

    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in app_paths
    assert int(annotations["prometheus.io/port"]) in ports.values()

    config = k8s_object("ConfigMap", c["envFrom"][0]["configMapRef"]["name"])
    assert config["data"]["REDIS_URL"].startswith("redis://levi-redis:")
    k8s_object("Service", "levi-redis")
    token = next(e for e in c["env"] if e["name"] == "LEVI_ADMIN_TOKEN")["valueFrom"]
    secret = k8s_object("Secret", token["secretKeyRef"]["name"])
    assert token["secretKeyRef"]["key"] in secret["stringData"]
    for vol in dep["spec"]["template"]["spec"]["volumes"]:
        if "persistentVolumeClaim" in vol:
            k8s_object("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])


def test_k8s_secret_placeholder_is_marked_and_refused():
    from pydantic import ValidationError

    from service.settings import Settings

    secret_file = (K8S / "secret.yaml").read_text()
    assert "REPLACE" in secret_file
    (placeholder,) = k8s_object("Secret", "levi-admin")["stringData"].values()
    assert "REPLACE" in placeholder
    with pytest.raises(ValidationError):  # a forgotten placeholder stops the service
        Settings(admin_token=placeholder)


def test_k8s_service_and_hpa_target_the_deployment():
    dep = k8s_object("Deployment", "levi-api")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = k8s_object("Service", "levi-api")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (c,) = pod_containers(dep)
    assert svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in c["ports"]}

    hpa = k8s_object("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "levi-api")
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])


def test_k8s_indexed_job_shards_by_completion_index():
    from service.batch import parse_shard

    jobs = [d for _, d in k8s_objects() if d["kind"] == "Job"]
    (job,) = [
        j
        for j in jobs
        if j["spec"].get("completionMode") == "Indexed"
        and pod_containers(j)[0]["command"][:3] == ["python", "-m", "service.batch"]
    ]
    n = job["spec"]["completions"]
    (c,) = pod_containers(job)
    argv = c["command"] + c["args"]
    assert argv[:3] == ["python", "-m", "service.batch"]
    shard = argv[argv.index("--shard") + 1]
    assert shard == f"$(JOB_COMPLETION_INDEX)/{n}", f"--shard {shard} with {n} completions"
    outputs = argv[argv.index("--output") + 1]
    assert "$(JOB_COMPLETION_INDEX)" in outputs, "every shard needs its own output file"
    # What each pod runs, after Kubernetes substitutes the index, is a valid --shard.
    for k in range(n):
        assert parse_shard(shard.replace("$(JOB_COMPLETION_INDEX)", str(k))) == (k, n)


def test_k8s_training_job_runs_make_train_into_the_artifact_claim():
    job = next(
        d
        for _, d in k8s_objects()
        if d["kind"] == "Job" and d["spec"].get("completionMode") != "Indexed"
    )
    (c,) = pod_containers(job)
    assert c["command"] == ["make", "train"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == env["ARTIFACTS"])
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
    }
    api_claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in k8s_object("Deployment", "levi-api")["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims[mount["name"]] in api_claims


def test_k8s_multi_pod_training_is_an_indexed_job_with_a_headless_coordinator():
    job = k8s_object("Job", "levi-train-distributed")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    n = spec["completions"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == n > 1
    (c,) = pod_containers(job)
    assert c["command"] == ["python", "-m", "training"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert int(env["LEVI_NUM_PROCESSES"]) == n, "completions and LEVI_NUM_PROCESSES differ"
    assert "LEVI_PROCESS_ID" not in env  # JOB_COMPLETION_INDEX is the process id
    # The coordinator is pod 0 under the headless Service the pods' subdomain names.
    svc = k8s_object("Service", pod["subdomain"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    host, port = env["LEVI_COORDINATOR"].rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
    assert int(port) in {p["containerPort"] for p in c["ports"]}
    # The flags read that environment (as python -m training resolves it in each pod).
    from training.distributed import DistributedConfig

    for k in range(n):
        cfg = DistributedConfig.resolve(environ={**env, "JOB_COMPLETION_INDEX": str(k)})
        assert (cfg.num_processes, cfg.process_id) == (n, k)
    # Every pod writes checkpoints to, and pod 0 exports into, the claim the api reads.
    argv = c["command"] + c["args"]
    out = argv[argv.index("--output-dir") + 1]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == out)
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    assert claims[mount["name"]] == "levi-artifacts"


def test_kustomization_lists_the_serving_stack():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert all((K8S / r).is_file() for r in listed), listed
    for path in K8S.glob("*.y*ml"):
        if path.name == "kustomization.yaml":
            continue
        kinds = {d["kind"] for d in load_yaml_docs(path)}
        # Jobs run on demand (kubectl create -f), so applying the stack never retrains; the
        # Secret is created out of band, so re-applying never resets the token to the placeholder.
        # A multi-pod training Job comes with its own headless Service.
        on_demand = kinds <= {"Job"} or kinds == {"Secret"} or kinds == {"Job", "Service"}
        assert path.name in listed or on_demand, f"{path.name} is not in kustomization"
        if on_demand:
            assert path.name not in listed, f"{path.name} must not be applied with the stack"


# ------------------------------------------------------------------------ Dockerfile
def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its text (from its FROM line to the next)."""
    text = (DEPLOY / "Dockerfile").read_text()
    parts = re.split(r"^(?=FROM )", text, flags=re.MULTILINE)[1:]
    return {re.match(r"FROM \S+(?: AS (\S+))?", p).group(1) or "": p for p in parts}


def test_dockerfile_serve_and_train_targets_slim_non_root_healthcheck_and_entry_points():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = dockerfile_stages()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    assert list(stages)[0] == "artifact" and list(stages)[-1] == "serve"  # the default target
    for target, entry in (("serve", SERVICE_COMMAND), ("train", ["make", "train"])):
        stage = stages[target]
        users = re.findall(r"^USER (\S+)", stage, re.MULTILINE)
        assert users and users[-1] not in {"root", "0"}, target
        cmd = json.loads(re.search(r"^CMD (\[.*\])$", stage, re.MULTILINE).group(1))
        assert cmd[: len(entry)] == entry, (target, cmd)
    serve = stages["serve"]
    assert re.search(r"^EXPOSE 8000$", serve, re.MULTILINE)
    healthcheck = serve[serve.index("HEALTHCHECK") :].split("\n\n")[0]
    assert HEALTH_PATHS["liveness"] in healthcheck
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", serve, re.MULTILINE).group(1))
    assert "/artifacts/latest" in cmd
    # The serve image takes its venv from the serving stages, never from the training venv.
    copied = re.findall(r"^COPY --from=(\S+)", serve, re.MULTILINE)
    assert "train-venv" not in copied and "packaged" not in copied, copied
    # Everything the Dockerfile copies from the context exists and is not .dockerignored.
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        for src in shlex.split(line)[:-1]:
            if src.startswith("--"):
                continue
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not dockerignored(src, ignore), f"COPY {src}: excluded by .dockerignore"


def dockerignored(src: str, patterns: list[str]) -> bool:
    """.dockerignore's rule for plain paths: the last pattern naming the path or a folder above
    it decides; ``!`` keeps."""
    parts = src.rstrip("/").split("/")
    excluded = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        name = pattern.lstrip("!").rstrip("/")
        if any("/".join(parts[: i + 1]) == name for i in range(len(parts))):
            excluded = not keep
    return excluded


def test_serving_dependencies_leave_out_the_training_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serving = {re.split(r"[<>=\[ ]", d)[0] for d in project["dependencies"]}
    training = {re.split(r"[<>=\[ ]", d)[0] for d in project["optional-dependencies"]["train"]}
    assert {"optax", "orbax-checkpoint", "matplotlib"} <= training
    assert not serving & training
    assert "train" in re.search(r"pip install --quiet -e '\.\[(.*)\]'", MAKEFILE).group(1)


# ---------------------------------------------------------------- images in compose
def test_compose_builds_the_serve_and_train_targets():
    services = compose()["services"]
    stages = dockerfile_stages()
    for name, image, target in (
        ("api", "levi-serve:local", "serve"),
        ("batch", "levi-serve:local", "serve"),
        ("trainer", "levi-train:local", "train"),
    ):
        svc = services[name]
        assert svc["image"] == image and svc["build"]["target"] == target, name
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile" and target in stages
    volume = lambda svc: {v.split(":")[1]: v.split(":")[2:] for v in svc["volumes"]}
    assert volume(services["api"])["/artifacts"] == ["ro"], "the api mounts the artifacts read-only"
    assert volume(services["trainer"])["/artifacts"] == []


def test_k8s_jobs_run_the_image_of_their_target():
    jobs = {d["metadata"]["name"]: d for _, d in k8s_objects() if d["kind"] == "Job"}
    (train,) = pod_containers(jobs["levi-train"])
    assert train["image"].split(":")[0] == "levi-train"
    for obj in [k8s_object("Deployment", "levi-api")] + [
        j for n, j in jobs.items() if n != "levi-train"
    ]:
        assert all(c["image"].split(":")[0] == "levi-serve" for c in pod_containers(obj))


# --------------------------------------------------------------------- the deploy test
STACK_TEST = (DEPLOY / "podman" / "stack-test.sh").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
# deploy/README.md's compose commands that the deploy test cannot run: no Grafana image here.
NOT_IN_THE_DEPLOY_TEST = {"docker compose up -d grafana"}


def readme_compose_commands() -> list[str]:
    readme = (DEPLOY / "README.md").read_text()
    section = readme[readme.index("## Deploying with docker-compose") :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return [
        line.split("  #")[0].strip()
        for line in block.splitlines()
        if line.startswith("docker compose")
    ]


def test_the_deploy_test_runs_the_readme_compose_commands():
    commands = readme_compose_commands()
    assert len(commands) >= 3, commands
    for command in commands:
        if command in NOT_IN_THE_DEPLOY_TEST:
            continue
        ran = command.replace("docker compose", "$COMPOSE", 1)
        # (a step may keep its output in a file)
        assert re.search(rf"^step .*{re.escape(ran)}( >.*)?$", STACK_TEST, re.MULTILINE), command
    # ... and its other invocations are README bullets too (batch scoring).
    readme = (DEPLOY / "README.md").read_text()
    assert "docker compose --profile batch run --rm batch" in readme
    assert re.search(r"^step .*\$COMPOSE --profile batch run --rm batch$", STACK_TEST, re.M)


def test_make_deploy_test_runs_the_stack_test_and_ci_runs_it_after_make_test():
    assert re.search(r"^deploy-test:\n\tbash deploy/podman/stack-test\.sh$", MAKEFILE, re.M)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci.index("make deploy-test") > ci.index("make test")
    # The deploy test lives outside tests/: `make test` never builds images.
    assert not list((ROOT / "tests").rglob("stack-test*"))


def test_the_stand_in_base_images_are_the_ones_the_files_name():
    base = (DEPLOY / "podman" / "base-images.sh").read_text()
    assert "ARG PYTHON_IMAGE=" in base and 'services["redis"]["image"]' in base
    assert 'services["prometheus"]["image"]' in base
    files = {p.name for p in (DEPLOY / "podman" / "base").glob("*.Containerfile")}
    assert files == {"python.Containerfile", "redis.Containerfile", "prometheus.Containerfile"}
    assert all(f in base for f in files)
