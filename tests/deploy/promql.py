"""Metric names used by PromQL expressions (dashboard, alert rules) versus the names a
worker exposes: the check that a renamed metric breaks a test rather than a dashboard.

Importable on its own, so that an integration test can run the same check against a
scrape of a running worker:

    missing = unknown_names(dashboard_exprs(DASHBOARD), exposed_names(scraped_text))
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "fusion-worker.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"

# Series Prometheus makes itself for every target; no worker exposes them.
PROMETHEUS_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)

# Words that can stand where a metric name could, without parentheses after them.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "group_left", "group_right"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
# by (a, b), without (...), on (...), ignoring (...), group_left (...): label names.
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
# An identifier not inside a number (5m, 1e3, 0x1f) nor a variable ($instance); the
# optional "(" after it marks a function or an aggregation.
_IDENT = re.compile(r"(?<![\w.$:])([A-Za-z_:][\w:]*)(\s*\()?")
_HISTOGRAM_SUFFIXES = {
    "_bucket": ("histogram",),
    "_sum": ("histogram", "summary"),
    "_count": ("histogram", "summary"),
}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: every identifier that is not a function,
    an aggregation, a keyword, a label name, a string, a duration or a variable."""
    text = _STRING.sub('""', expr)
    text = _COMMENT.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def exposed_names(exposition: str) -> dict[str, str]:
    """Every name a text exposition makes queryable, with its family type: the # TYPE
    families (counters also under ``_total``) and every sample name."""
    names: dict[str, str] = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names[name] = kind
            if kind == "counter" and not name.endswith("_total"):
                names[f"{name}_total"] = kind
        elif line and not line.startswith("#"):
            sample = re.split(r"[{\s]", line, maxsplit=1)[0]
            names.setdefault(sample, "sample")
    return names


def is_exposed(name: str, exposed: dict[str, str]) -> bool:
    """True when ``name`` is exposed, directly or as the _bucket/_sum/_count series of
    an exposed histogram (or the _sum/_count of a summary)."""
    if name in exposed:
        return True
    for suffix, kinds in _HISTOGRAM_SUFFIXES.items():
        if name.endswith(suffix) and exposed.get(name.removesuffix(suffix)) in kinds:
            return True
    return False


def unknown_names(
    exprs: Iterable[str], exposed: dict[str, str], known: Iterable[str] = ()
) -> dict[str, list[str]]:
    """{metric name: [expressions using it]} for each name neither exposed, nor in
    ``known`` (recorded series), nor made by Prometheus itself."""
    allowed = set(known) | PROMETHEUS_SERIES
    unknown: dict[str, list[str]] = {}
    for expr in exprs:
        for name in sorted(metric_names(expr)):
            if name not in allowed and not is_exposed(name, exposed):
                unknown.setdefault(name, []).append(expr)
    return unknown


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_exprs(path: Path = DASHBOARD) -> list[str]:
    """The PromQL expression of every target of every panel of a dashboard."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    return [
        target["expr"]
        for panel in iter_panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    """Every rule (alert or record) of a Prometheus rule file."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_exprs(path: Path = RULES) -> list[str]:
    return [str(rule["expr"]) for rule in rules(path)]


def recorded_names(path: Path = RULES) -> set[str]:
    """The series the recording rules of ``path`` create."""
    return {rule["record"] for rule in rules(path) if "record" in rule}
