"""The Kubernetes driver against a stub of AppsV1Api, and the KEDA manifests against KEDA's
documented fields (keda.sh/docs/scalers/redis-streams, keda.sh/docs/reference/scaledobject-spec)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import yaml

from llmspool.control import kubernetes as k8s
from llmspool.control.keda import ClusterOptions, manifests, render
from llmspool.shared import keys
from llmspool.shared.config import parse_config

CONFIG = parse_config(
    {
        "models": [
            {
                "name": "Org/Gemma_3:270m",
                "backend": "fake",
                "max_concurrency": 4,
                "min_workers": 0,
                "max_workers": 5,
                "autoscale": {"scale_down_window": 45, "idle_window": 120, "tick": 0.5},
            }
        ]
    }
)
MODEL = CONFIG.models[0]


class StubApps:
    """Records the AppsV1Api calls made, with the client's own parameter names."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def patch_namespaced_deployment_scale(self, name: str, namespace: str, body: Any) -> None:
        self.calls.append(
            ("patch_namespaced_deployment_scale", dict(name=name, namespace=namespace, body=body))
        )

    def patch_namespaced_deployment(self, name: str, namespace: str, body: Any) -> None:
        self.calls.append(
            ("patch_namespaced_deployment", dict(name=name, namespace=namespace, body=body))
        )


def test_stub_matches_the_real_client_signatures() -> None:
    from kubernetes.client import AppsV1Api

    for method in ("patch_namespaced_deployment_scale", "patch_namespaced_deployment"):
        real = list(inspect.signature(getattr(AppsV1Api, method)).parameters)[:4]
        assert real == ["self", "name", "namespace", "body"]


def test_deployment_names_are_dns_labels() -> None:
    assert k8s.deployment_name("Org/Gemma_3:270m") == "llmspool-worker-org-gemma-3-270m"
    assert len(k8s.deployment_name("x" * 200)) == 63
    assert k8s.deployment_name("---") == "llmspool-worker-model"


async def test_scale_patches_the_scale_subresource_once_per_change() -> None:
    apps = StubApps()
    driver = k8s.KubernetesDriver(apps, "ml")
    await driver.scale(MODEL, 3, [])
    await driver.scale(MODEL, 3, [])
    await driver.scale(MODEL, 0, [])
    name = "llmspool-worker-org-gemma-3-270m"
    assert apps.calls == [
        ("patch_namespaced_deployment_scale",
         {"name": name, "namespace": "ml", "body": {"spec": {"replicas": 3}}}),
        ("patch_namespaced_deployment_scale",
         {"name": name, "namespace": "ml", "body": {"spec": {"replicas": 0}}}),
    ]  # fmt: skip


async def test_restart_stamps_the_pod_template_and_remove_scales_to_zero() -> None:
    apps = StubApps()
    driver = k8s.KubernetesDriver(apps, "ml", prefix="w")
    await driver.restart(MODEL)
    await driver.remove(MODEL.name)
    (method, args), (method2, args2) = apps.calls
    assert method == "patch_namespaced_deployment" and args["name"] == "w-org-gemma-3-270m"
    annotations = args["body"]["spec"]["template"]["metadata"]["annotations"]
    assert set(annotations) == {"kubectl.kubernetes.io/restartedAt"}
    assert method2 == "patch_namespaced_deployment_scale"
    assert args2["body"] == {"spec": {"replicas": 0}}


# KEDA's documented fields
REDIS_STREAMS_METADATA = {
    "address", "host", "port", "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup",
    "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount", "enableTLS",
    "unsafeSsl", "databaseIndex", "addressFromEnv", "hostFromEnv", "portFromEnv",
}  # fmt: skip
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}  # fmt: skip
TRIGGER_FIELDS = {"type", "metadata", "name", "useCachedMetrics", "authenticationRef", "metricType"}


@pytest.fixture
def documents() -> list[dict[str, Any]]:
    options = ClusterOptions(namespace="ml", redis_address="redis.ml:6379", drain_timeout=40)
    return list(yaml.safe_load_all(render(manifests(CONFIG, options))))


def test_scaled_object_uses_documented_fields(documents: list[dict[str, Any]]) -> None:
    deployment, scaled = documents
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC
    assert spec["scaleTargetRef"] == {"name": deployment["metadata"]["name"]}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 5)
    assert spec["cooldownPeriod"] == 120 and spec["pollingInterval"] == 1
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == {"scaleDown": {"stabilizationWindowSeconds": 45}}


def test_triggers_read_waiting_lag_and_pending_of_both_streams(
    documents: list[dict[str, Any]],
) -> None:
    triggers = documents[1]["spec"]["triggers"]
    assert len(triggers) == 6
    seen = set()
    for trigger in triggers:
        assert set(trigger) <= TRIGGER_FIELDS and trigger["type"] == "redis-streams"
        meta = trigger["metadata"]
        assert set(meta) <= REDIS_STREAMS_METADATA
        assert all(isinstance(v, str) for v in meta.values())  # KEDA metadata is strings
        assert meta["address"] == "redis.ml:6379"
        if "streamLength" in meta:  # the jobs waiting for their tenant's turn: XLEN
            assert meta["streamLength"] == "4" and meta["activationLagCount"] == "0"
            seen.add((meta["stream"], "waiting"))
            continue
        assert meta["consumerGroup"] == keys.GROUP
        if "lagCount" in meta:  # documented: activationLagCount is required with lagCount
            assert meta["lagCount"] == "4" and meta["activationLagCount"] == "0"
            seen.add((meta["stream"], "lag"))
        else:
            assert meta["pendingEntriesCount"] == "4"
            seen.add((meta["stream"], "pending"))
    streams = [keys.requests_stream("Org/Gemma_3:270m"), keys.batch_stream("Org/Gemma_3:270m")]
    assert seen == {
        *((s, kind) for s in streams for kind in ("lag", "pending")),
        *((keys.waiting(s), "waiting") for s in streams),
    }


def test_deployment_drains_on_termination_and_surges_on_rollout(
    documents: list[dict[str, Any]],
) -> None:
    deployment = documents[0]
    assert deployment["apiVersion"] == "apps/v1" and deployment["kind"] == "Deployment"
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 40
    (container,) = pod["containers"]
    assert container["args"] == ["worker", "--model", "Org/Gemma_3:270m"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMSPOOL_DRAIN_TIMEOUT"] == "40"
