"""Manifests for clusters that run KEDA: per model, a worker Deployment and a ScaledObject.

KEDA's ``redis-streams`` scaler reads the same numbers as llmspool's own policy. Each model gets
three triggers per work stream (requests, batch): ``streamLength`` (XLEN) of the stream's
waiting room ``<stream>:waiting`` — the jobs waiting for their tenant's turn, which is where
new work lies (shared/tenants.py) — and, on the stream itself with its group ``workers``,
``lagCount`` (entries added to the stream directly: requeued dead jobs) and
``pendingEntriesCount`` (jobs being generated, so running work keeps its pods). With
``activationLagCount`` 0, KEDA activates a trigger whose figure is above 0, so one waiting job
wakes a pool from zero. The HPA takes the largest of them, so KEDA sizes a pool by
max(waiting, lag, pending)/target where llmspool's own control loop uses
(waiting + lag + pending)/target. ``cooldownPeriod`` is the idle window (to zero),
the HPA's scale-down stabilization window is the model's ``scale_down_window``, and the pods'
``terminationGracePeriodSeconds`` covers ``drain_timeout`` so a scaled-down pod finishes its jobs.

Field names follow KEDA's documentation of the redis-streams scaler (keda.sh/docs/scalers/
redis-streams) and of ScaledObject (keda.sh/docs/concepts/scaling-deployments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llmspool.control.kubernetes import DEFAULT_PREFIX, deployment_name
from llmspool.shared import keys
from llmspool.shared.config import Config, ModelConfig

#: Seconds a pod gets on top of drain_timeout to hand back what it holds and deregister.
GRACE_MARGIN = 15


@dataclass(frozen=True)
class ClusterOptions:
    """Where the manifests point: namespace, image, Redis, and the models file."""

    namespace: str = "default"
    image: str = "llmspool:latest"
    redis_address: str = "redis:6379"
    redis_secret: str = "llmspool-redis"
    models_configmap: str = "llmspool-models"
    prefix: str = DEFAULT_PREFIX
    drain_timeout: float = 30.0


#: A Kubernetes object (or part of one), written out as YAML: its shape is Kubernetes' API.
Manifest = dict[str, Any]


def manifests(config: Config, options: ClusterOptions) -> list[Manifest]:
    """A Deployment and a ScaledObject for every model of ``config``."""
    documents: list[Manifest] = []
    for model in config.models:
        documents.append(deployment(model, options))
        documents.append(scaled_object(model, options))
    return documents


def _labels(model: ModelConfig, options: ClusterOptions) -> dict[str, str]:
    name = deployment_name(model.name, options.prefix)
    return {"app.kubernetes.io/name": "llmspool-worker", "app.kubernetes.io/instance": name}


def deployment(model: ModelConfig, options: ClusterOptions) -> Manifest:
    """The worker Deployment of ``model``: surge one pod when rolling, drain on termination."""
    name = deployment_name(model.name, options.prefix)
    labels = _labels(model, options)
    env = [
        {
            "name": "LLMSPOOL_REDIS_URL",
            "valueFrom": {"secretKeyRef": {"name": options.redis_secret, "key": "url"}},
        },
        {"name": "LLMSPOOL_CONFIG", "value": "/etc/llmspool/llmspool.toml"},
        {"name": "LLMSPOOL_DRAIN_TIMEOUT", "value": str(options.drain_timeout)},
    ]
    container = {
        "name": "worker",
        "image": options.image,
        "args": ["worker", "--model", model.name],
        "env": env,
        "volumeMounts": [{"name": "models", "mountPath": "/etc/llmspool", "readOnly": True}],
    }
    pod = {
        "terminationGracePeriodSeconds": math.ceil(options.drain_timeout) + GRACE_MARGIN,
        "containers": [container],
        "volumes": [{"name": "models", "configMap": {"name": options.models_configmap}}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": options.namespace, "labels": labels},
        "spec": {
            "replicas": model.min_workers,
            "selector": {"matchLabels": dict(labels)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }


def scaled_object(model: ModelConfig, options: ClusterOptions) -> Manifest:
    """The KEDA ScaledObject of ``model``: waiting, lag and pending triggers on both of its
    streams."""
    name = deployment_name(model.name, options.prefix)
    scale_down = {"stabilizationWindowSeconds": math.ceil(model.autoscale.scale_down_window)}
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": options.namespace},
        "spec": {
            "scaleTargetRef": {"name": name},
            "pollingInterval": max(1, math.ceil(model.autoscale.tick)),
            "cooldownPeriod": math.ceil(model.autoscale.idle_window),
            "minReplicaCount": model.min_workers,
            "maxReplicaCount": model.max_workers,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": scale_down}}},
            "triggers": triggers(model, options),
        },
    }


def triggers(model: ModelConfig, options: ClusterOptions) -> list[Manifest]:
    """``redis-streams`` triggers, three per work stream; KEDA wants every value as a string."""
    target = str(model.target_per_worker)
    result = []
    for stream in keys.model_streams(model.name):
        address = {"address": options.redis_address}
        group = {**address, "stream": stream, "consumerGroup": keys.GROUP}
        waiting = {**address, "stream": keys.waiting(stream), "streamLength": target}
        kind = _kind(stream)
        result += [
            _trigger(f"{kind}-waiting", {**waiting, "activationLagCount": "0"}),
            _trigger(f"{kind}-lag", {**group, "lagCount": target, "activationLagCount": "0"}),
            _trigger(f"{kind}-pending", {**group, "pendingEntriesCount": target}),
        ]
    return result


def _trigger(name: str, metadata: dict[str, str]) -> dict[str, Any]:
    return {"type": "redis-streams", "name": name, "metadata": metadata}


def _kind(stream: str) -> str:
    return stream.rsplit(":", 1)[-1]


def render(documents: list[Manifest]) -> str:
    """Multi-document YAML, for ``kubectl apply -f -``."""
    import yaml

    return str(yaml.safe_dump_all(documents, sort_keys=False))
