"""The control plane's model registry: which workers serve which model, right now.

Workers write it (register, heartbeat, deregister); the command line, the admin API, the
console, ``/v1/models``, the metrics and the autoscaler read it — all through
:class:`~llmspool.shared.registry.base.Registry`. It lives in ``shared`` because the API and the
workers use it as much as the control plane does.

Implementations, chosen by ``LLMSPOOL_REGISTRY_URL``:

- unset: :class:`~llmspool.shared.registry.redis.RedisRegistry`, hashes with a TTL in the
  queue's own Redis (the default);
- ``etcd://host:2379/prefix``: :class:`~llmspool.shared.registry.etcd.EtcdRegistry`, keys under
  leases in an existing etcd.

Another service registry (Consul, Nacos, ...) is one more module implementing
:class:`Registry` and one more line in :data:`SCHEMES` (docs/control-plane.md).
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from redis.asyncio import Redis

from llmspool.shared.errors import ConfigError
from llmspool.shared.registry.base import (
    TTL_SECONDS,
    Registry,
    RegistryEvent,
    WorkerInfo,
    changes,
)
from llmspool.shared.registry.redis import RedisRegistry
from llmspool.shared.settings import Settings

__all__ = [
    "SCHEMES",
    "TTL_SECONDS",
    "RedisRegistry",
    "Registry",
    "RegistryEvent",
    "WorkerInfo",
    "changes",
    "open_registry",
]

#: URL scheme -> ``module:class`` of the registry it selects; the class has
#: ``from_url(url, ttl)``. Imported only when selected, so its client is needed only then.
SCHEMES = {
    "etcd": "llmspool.shared.registry.etcd:EtcdRegistry",
}


def open_registry(settings: Settings, redis: Redis) -> Registry:
    """The registry ``settings`` name: the one in ``redis`` unless ``registry_url`` is set."""
    url = settings.registry_url
    if not url:
        return RedisRegistry(redis, settings.registry_ttl)
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        known = ", ".join(f"{name}://" for name in SCHEMES)
        raise ConfigError(f"LLMSPOOL_REGISTRY_URL: unknown registry {url!r} (known: {known})")
    module, _, name = SCHEMES[scheme].partition(":")
    cls = getattr(importlib.import_module(module), name)
    registry: Registry = cls.from_url(url, settings.registry_ttl)
    return registry
