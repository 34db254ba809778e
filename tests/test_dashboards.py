"""The compose/ Prometheus config and Grafana dashboards: valid, and only existing metrics."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from llmspool.producer.queue_metrics import ModelQueues, QueueCollector, StreamStats
from llmspool.shared.metrics import ApiMetrics, WorkerMetrics
from tests.dashboards import COMPOSE, DASHBOARDS, exposed_names, expressions, load
from tests.dashboards import referenced_metrics as referenced


def _exposition() -> str:
    """What the API's and a worker's /metrics expose, built in process."""
    api = ApiMetrics(["m"])
    streams = (StreamStats("requests", 3, 1, 1, 0.5), StreamStats("batch", 0, 0, 0, 0.0))
    queues = QueueCollector([ModelQueues("m", streams, dead=0, workers=1, desired=2)])
    worker = WorkerMetrics("m", frames=lambda: 0, tokens=lambda: 0, running=lambda: 0, capacity=4)
    text = generate_latest(api.registry) + generate_latest(worker.registry)
    registry = CollectorRegistry()
    registry.register(queues)
    return (text + generate_latest(registry)).decode()


def test_dashboards_are_valid_grafana_json() -> None:
    assert DASHBOARDS, "no dashboard in compose/grafana/dashboards"
    for path in DASHBOARDS:
        dashboard = load(path)
        assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        for panel in dashboard["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]
        for expr in expressions(dashboard):
            assert Counter(expr)["("] == Counter(expr)[")"], expr
            assert Counter(expr)["{"] == Counter(expr)["}"], expr
            used = set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval", "__interval"}
            assert used <= variables, (expr, used - variables)


def test_dashboard_queries_are_valid_promql() -> None:
    promql = pytest.importorskip("promql_parser")
    for path in DASHBOARDS:
        for expr in expressions(load(path)):
            concrete = expr.replace("$__rate_interval", "1m").replace("$model_name", ".*")
            try:
                promql.parse(concrete)
            except ValueError as exc:
                pytest.fail(f"{path.name}: {expr!r} is not PromQL: {exc}")


def test_dashboards_refer_only_to_exposed_metrics() -> None:
    names = referenced()
    assert {"llmspool:time_to_first_token_seconds_bucket", "llmspool:queue_depth"} <= names
    missing = names - exposed_names(_exposition())
    assert not missing, f"dashboards use metrics nothing exposes: {sorted(missing)}"


def test_prometheus_and_provisioning_files_parse() -> None:
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert {"llmspool-api", "llmspool-workers"} <= jobs
    provisioning = COMPOSE / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert sources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((provisioning / "dashboards" / "llmspool.yml").read_text())
    assert providers["providers"][0]["options"]["path"]
