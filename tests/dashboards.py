"""Reading the compose/ dashboards: which metrics they refer to, and what /metrics exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

COMPOSE = Path(__file__).resolve().parent.parent / "compose"
DASHBOARDS = sorted((COMPOSE / "grafana" / "dashboards").glob("*.json"))
_METRIC = re.compile(r"llmspool:[A-Za-z0-9_:]+")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def referenced_metrics() -> set[str]:
    """Every llmspool metric name the dashboards' queries (and variables) use."""
    names: set[str] = set()
    for path in DASHBOARDS:
        dashboard = load(path)
        for expr in expressions(dashboard):
            names |= set(_METRIC.findall(expr))
        for var in dashboard.get("templating", {}).get("list", []):
            names |= set(_METRIC.findall(json.dumps(var.get("query", ""))))
    return names


def exposed_names(text: str) -> set[str]:
    """Family and sample names on a /metrics page (a family without samples still counts)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        names |= {sample.name for sample in family.samples}
    return names
