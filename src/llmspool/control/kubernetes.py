"""The Kubernetes driver: the control loop scales one worker Deployment per model.

For clusters that do not run KEDA: ``llmspool controller --namespace NS`` runs the same control
loop (and policy) as ``llmspool serve``, and makes each decision true by setting the replicas of
the Deployment ``llmspool-worker-<model>`` through the Deployment's scale subresource. A rolling
restart stamps the pod template, as ``kubectl rollout restart`` does; the Deployment's own
rollout strategy and termination grace period let old pods drain.

Needs the ``kubernetes`` client: ``pip install 'llmspool[kubernetes]'``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import ConfigError
from llmspool.shared.registry import WorkerInfo

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "llmspool-worker"
#: The annotation ``kubectl rollout restart`` sets; changing it rolls the pods.
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
#: A replica count is written again after this long, in case someone else changed it.
RESYNC_SECONDS = 30.0


class AppsApi(Protocol):
    """The calls of ``kubernetes.client.AppsV1Api`` this driver makes."""

    def patch_namespaced_deployment_scale(self, name: str, namespace: str, body: Any) -> Any: ...

    def patch_namespaced_deployment(self, name: str, namespace: str, body: Any) -> Any: ...


def deployment_name(model: str, prefix: str = DEFAULT_PREFIX) -> str:
    """A DNS-1123 name for ``model``'s Deployment: lower case, ``[a-z0-9-]``, at most 63."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-") or "model"
    return f"{prefix}-{slug}"[:63].rstrip("-")


class KubernetesDriver:
    """Sets replicas of one Deployment per model."""

    name = "kubernetes"

    def __init__(self, apps: AppsApi, namespace: str, prefix: str = DEFAULT_PREFIX) -> None:
        self.apps = apps
        self.namespace = namespace
        self.prefix = prefix
        self.written: dict[str, tuple[int, float]] = {}

    @classmethod
    def from_environment(cls, namespace: str, prefix: str = DEFAULT_PREFIX) -> KubernetesDriver:
        """In a pod: its service account; elsewhere: the kubeconfig (as kubectl)."""
        try:
            from kubernetes import client, config
        except ImportError:
            raise ConfigError(
                "the kubernetes driver needs the kubernetes client: "
                "pip install 'llmspool[kubernetes]'"
            ) from None
        try:  # the kubernetes client ships no type annotations
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls(client.AppsV1Api(), namespace, prefix)

    def deployment(self, model: str) -> str:
        return deployment_name(model, self.prefix)

    async def scale(self, model: ModelConfig, workers: int, live: list[WorkerInfo]) -> None:
        await self._set_replicas(model.name, workers)

    async def restart(self, model: ModelConfig) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        name = self.deployment(model.name)
        await asyncio.to_thread(self.apps.patch_namespaced_deployment, name, self.namespace, body)
        log.info("rolling restart of deployment %s/%s", self.namespace, name)

    async def remove(self, model: str) -> None:
        await self._set_replicas(model, 0)

    async def _set_replicas(self, model: str, replicas: int) -> None:
        name = self.deployment(model)
        now = time.monotonic()
        last = self.written.get(name)
        if last is not None and last[0] == replicas and now - last[1] < RESYNC_SECONDS:
            return
        body = {"spec": {"replicas": replicas}}
        await asyncio.to_thread(
            self.apps.patch_namespaced_deployment_scale, name, self.namespace, body
        )
        self.written[name] = (replicas, now)
        if last is None or last[0] != replicas:
            log.info("deployment %s/%s → %d replicas", self.namespace, name, replicas)
