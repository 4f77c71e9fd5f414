"""The Grafana dashboard and provisioning, and the metric names that the dashboard and the
alert rules use, checked against the exposition of a real Metrics() instance."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from tests.deploy.promql import (
    DASHBOARD,
    ROOT,
    dashboard_exprs,
    exposed_names,
    is_exposed,
    iter_panels,
    metric_names,
    recorded_names,
    rule_exprs,
    unknown_names,
)
from worker.metrics import Metrics

GRAFANA = ROOT / "deploy" / "grafana"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def exposed() -> dict[str, str]:
    registry = CollectorRegistry()
    Metrics(registry, models=("bert", "roberta"), strategy="soft_vote")
    return exposed_names(generate_latest(registry).decode())


def test_dashboard_has_uid_and_panels(dashboard: dict[str, Any]) -> None:
    """The dashboard JSON loads, with a stable uid and panels."""
    assert dashboard["uid"] == "fusion-worker"
    assert len(list(iter_panels(dashboard["panels"]))) >= 10


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    """Every panel (rows included) has an id, and no two share one."""
    ids = [panel["id"] for panel in iter_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))


def test_every_panel_and_target_has_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    """Every panel and every query names the provisioned Prometheus datasource by uid."""
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    for panel in iter_panels(dashboard["panels"]):
        assert panel["datasource"]["uid"] == provisioned["uid"], panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == provisioned["uid"], panel["title"]


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    """Panels fit the 24-column grid and no two cover the same cell."""
    cells: dict[tuple[int, int], str] = {}
    for panel in iter_panels(dashboard["panels"]):
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_datasource_points_at_the_compose_prometheus() -> None:
    """The provisioned datasource is Prometheus at http://prometheus:9090."""
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = doc["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"


def test_dashboard_provider_loads_files() -> None:
    """The dashboard provider reads JSON files from a directory."""
    doc = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "fusion-worker.yml").read_text()
    )
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


def test_dashboard_metrics_are_exposed(exposed: dict[str, str]) -> None:
    """Every metric name in a dashboard query is exposed by Metrics()."""
    assert unknown_names(dashboard_exprs(), exposed) == {}


def test_rule_metrics_are_exposed(exposed: dict[str, str]) -> None:
    """Every metric name in an alert or recording rule is exposed by Metrics(), recorded by
    another rule, or made by Prometheus (up)."""
    assert unknown_names(rule_exprs(), exposed, known=recorded_names()) == {}


def test_template_variable_metric_is_exposed(
    dashboard: dict[str, Any], exposed: dict[str, str]
) -> None:
    """The instance variable reads label values of an exposed metric."""
    (variable,) = dashboard["templating"]["list"]
    assert variable["definition"] == "label_values(fusion_build_info, instance)"
    assert "fusion_build_info" in exposed


@pytest.mark.parametrize(
    "needle",
    [
        "fusion_events_total",
        "fusion_results_total",
        "histogram_quantile(0.5, sum by (le) (rate(fusion_join_latency_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(fusion_join_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(fusion_join_latency_seconds_bucket",
        "histogram_quantile(0.95, sum by (model, le) (rate(fusion_model_arrival_delay",
        "fusion_model_missing_total",
        "fusion_model_disagreement_total",
        "sum by (topic, partition) (fusion_consumer_lag",
        "sum by (reason) (rate(fusion_dlq_total",
        "fusion_pending_requests",
    ],
)
def test_dashboard_shows(needle: str) -> None:
    """The dashboard has a query for each view an operator needs."""
    assert any(needle in expr for expr in dashboard_exprs()), needle


# -- the extractor itself ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('up{job="fusion-worker"} == 0', {"up"}),
        (
            "histogram_quantile(0.95, sum by (le, model) "
            '(rate(fusion_x_seconds_bucket{instance=~"$instance"}[$__rate_interval])))',
            {"fusion_x_seconds_bucket"},
        ),
        (
            "sum by (job) (rate(a_total[5m])) / ignoring (model) group_left sum(rate(b_total[5m]))",
            {"a_total", "b_total"},
        ),
        ("a > 1e3 and b offset 5m unless bool_metric", {"a", "b", "bool_metric"}),
        ('label_replace(x, "dst", "$1", "src", "(.*)")', {"x"}),
        ("deriv(sum by (job) (lag)[10m:1m]) > 0 or vector(0)", {"lag"}),
        ("sum(rate(x[5m])) by (le) # trailing comment naming y", {"x"}),
        ("fusion:consumer_lag:sum > 0x10", {"fusion:consumer_lag:sum"}),
        ("a @ start() + b @ 1609746000", {"a", "b"}),
    ],
)
def test_metric_names_extraction(expr: str, names: set[str]) -> None:
    """Metric names are found; functions, keywords, labels, strings, numbers, durations
    and Grafana variables are not."""
    assert metric_names(expr) == names


identifier = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(
    lambda s: s not in {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
)


@given(
    name=identifier,
    label=identifier,
    func=st.sampled_from(["rate", "increase", "irate", "delta"]),
    agg=st.sampled_from(["sum", "max", "avg", "count"]),
    value=st.text(alphabet="ab_c$ {}[]()", max_size=10),
)
def test_one_metric_in_any_wrapping_is_found(
    name: str, label: str, func: str, agg: str, value: str
) -> None:
    """A metric wrapped in a function, an aggregation with grouping labels, a matcher with
    any string value and a range is found alone."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    expr = f'{agg} by ({label}) ({func}({name}{{{label}="{escaped}"}}[5m])) > 0.5'
    assert metric_names(expr) == {name}


def test_histogram_suffixes_resolve_only_for_histograms() -> None:
    """_bucket/_sum/_count resolve to an exposed histogram; not to a counter or gauge."""
    exposed = {"h_seconds": "histogram", "g": "gauge", "s": "summary"}
    assert is_exposed("h_seconds_bucket", exposed)
    assert is_exposed("h_seconds_count", exposed)
    assert is_exposed("s_sum", exposed)
    assert not is_exposed("s_bucket", exposed)
    assert not is_exposed("g_count", exposed)
    assert not is_exposed("h_seconds_total", exposed)


def test_a_renamed_metric_is_reported() -> None:
    """A name the worker does not expose is reported with the expressions using it."""
    exposed = exposed_names("# TYPE fusion_a_total counter\nfusion_a_total 1.0\n")
    assert unknown_names(["rate(fusion_a_total[1m]) + fusion_b"], exposed) == {
        "fusion_b": ["rate(fusion_a_total[1m]) + fusion_b"]
    }
