"""observe_many: k observations in one step, the same as k calls of observe."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from llmspool.shared.metrics import observe_many


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_equals_repeated_observe() -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    buckets = [0.001, 0.01, 0.1]
    a = Histogram("itl", "x", ["model"], buckets=buckets, registry=one).labels("m")
    b = Histogram("itl", "x", ["model"], buckets=buckets, registry=many).labels("m")
    for value, count in ((0.0005, 3), (0.05, 7), (5.0, 2), (0.01, 1)):
        for _ in range(count):
            a.observe(value)
        observe_many(b, value, count)
    assert _samples(one) == _samples(many)
