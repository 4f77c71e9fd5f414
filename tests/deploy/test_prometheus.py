"""The Prometheus scrape config and rules: promtool accepts them, and promtool's rule unit
tests (deploy/prometheus/rules.test.yml) prove the alerts fire on synthetic series and
stay silent otherwise."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.promql import ROOT, rules

PROMETHEUS = ROOT / "deploy" / "prometheus"
# The alerts whose firing and silence rules.test.yml must cover.
TESTED_ALERTS = (
    "FusionWorkerDown",
    "FusionDeadLetterRateHigh",
    "FusionModelMissingOften",
    "FusionModelAccuracyLow",
)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install it with `make promtool` "
            "(scripts/install-promtool.sh; Debian/Ubuntu package `prometheus`)"
        )
    return path


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_config_is_valid(promtool: str) -> None:
    """promtool check config accepts prometheus.yml (and the rule file it loads)."""
    proc = run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_are_valid(promtool: str) -> None:
    """promtool check rules accepts rules.yml."""
    proc = run(promtool, "check", "rules", "deploy/prometheus/rules.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    """promtool test rules: each alert fires on its synthetic series with the expected
    labels and annotations, and stays silent on the healthy series."""
    proc = run(promtool, "test", "rules", "deploy/prometheus/rules.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scrape_config_targets_the_compose_worker() -> None:
    """Job fusion-worker scrapes worker:9400 and loads rules.yml relative to the config."""
    doc = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert doc["rule_files"] == ["rules.yml"]
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "fusion-worker"]
    assert job["static_configs"][0]["targets"] == ["worker:9400"]


@pytest.mark.parametrize("rule", [r for r in rules() if "alert" in r], ids=lambda r: r["alert"])
def test_alert_says_how_bad_and_what_to_do(rule: dict[str, Any]) -> None:
    """Every alert waits a `for:` duration, has a severity and a summary and description."""
    assert rule.get("for"), rule["alert"]
    assert rule["labels"]["severity"] in ("critical", "warning")
    assert rule["annotations"]["summary"]
    assert len(rule["annotations"]["description"]) > 80


@pytest.mark.parametrize("alert", TESTED_ALERTS)
def test_unit_tests_cover_firing_and_silence(alert: str) -> None:
    """rules.test.yml expects the alert to fire somewhere and to be silent somewhere."""
    doc = yaml.safe_load((PROMETHEUS / "rules.test.yml").read_text())
    cases = [
        case
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == alert
    ]
    assert any(case["exp_alerts"] for case in cases), f"{alert} never expected to fire"
    assert any(not case["exp_alerts"] for case in cases), f"{alert} never expected silent"
