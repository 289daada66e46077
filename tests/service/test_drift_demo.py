"""The drift demo's scraping and summary, on a Prometheus exposition the metrics module writes."""

import numpy as np
from prometheus_client import generate_latest

from bench.drift_demo import Series, _append, scrape, summary
from service.metrics import Metrics


def _exposition(ood: list[float], psi: float, drift: list[float], unknown: int) -> str:
    m = Metrics()
    for value in ood:
        m.ood_score.observe(value)
        m.adapter_disagreement.observe(value / 10)
    m.prediction_psi.set(psi)
    for layer, value in enumerate(drift, start=1):
        m.activation_drift.labels(layer=str(layer)).set(value)
    if unknown:
        m.unknown_entities.labels(kind="item").inc(unknown)
    return generate_latest(m.registry).decode()


def test_scrape_reads_windows_gauges_and_layers():
    got = scrape(_exposition([1.0, 3.0], psi=0.3, drift=[1.1, 0.9], unknown=2))
    assert got["levi_ood_score_sum"] == 4.0 and got["levi_ood_score_count"] == 2.0
    assert got["psi"] == 0.3 and got["drift"] == {1: 1.1, 2: 0.9} and got["unknown_items"] == 2


def test_window_means_come_from_deltas_between_scrapes():
    first = scrape(_exposition([1.0, 1.0], psi=0.05, drift=[1.0, 1.0], unknown=0))
    second = scrape(_exposition([1.0, 1.0, 4.0, 2.0], psi=0.4, drift=[1.5, 1.2], unknown=1))
    series = Series()
    _append(series, 2, {"drift": {}}, first, 2)
    _append(series, 4, first, second, 2)
    assert series.ood_score == [1.0, 3.0]  # the second window holds 4.0 and 2.0 only
    np.testing.assert_allclose(series.disagreement, [0.1, 0.3])
    assert series.unknown_items == [0.0, 0.5]
    table = summary(series, switch=2)
    assert "| mean OOD score | 1.000 | 3.000 |" in table
    assert "| prediction PSI (end) | 0.050 | 0.400 |" in table


def test_traffic_falls_back_to_cold_starts_when_every_item_was_trained_on(artifacts):
    """The tiny artifact's features were fitted on all of its items (as after a random or
    time split): the OOD side becomes new item ids carrying existing items' fields."""
    import json

    from bench.drift_demo import traffic
    from model.features import FeatureSpec
    from service.entity_fields import check_fields, request_models

    id_reqs, ood_reqs = traffic(artifacts.v1, 6, seed=0)
    assert len(id_reqs) == len(ood_reqs) == 6
    assert all(r["item_id"].startswith("drift-demo-new-") for r in ood_reqs)
    assert all(r["item"].get("title") for r in ood_reqs)
    json.dumps(ood_reqs)  # plain JSON values
    features = FeatureSpec.from_json(json.loads((artifacts.v1 / "features.json").read_text()))
    check_fields(request_models(features), [((), None, r["item"]) for r in ood_reqs])
