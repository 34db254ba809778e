"""The registry on etcd (v3 API, through the ``aetcd`` client): for a company that already runs
etcd as its service registry, so that the workers show up where its other services do.

``LLMSPOOL_REGISTRY_URL=etcd://[user:password@]host:2379/prefix`` selects it. Each worker is one
key, ``<prefix>/workers/<worker id>``, holding its entry as JSON and attached to a lease of
``registry_ttl`` seconds that the worker's heartbeat keeps alive; a worker that dies without
deregistering vanishes when its lease expires. The prefix (``/llmspool`` when the URL names none)
keeps deployments that share an etcd apart::

    etcdctl get --prefix /llmspool/workers/      # live workers, one JSON entry each
    etcdctl watch --prefix /llmspool/workers/    # registrations and departures as they happen

When etcd cannot be reached every call raises :class:`RegistryUnavailable` after at most
``timeout`` seconds; the gRPC channel reconnects by itself once etcd is back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from llmspool.shared.errors import ConfigError, RegistryUnavailable
from llmspool.shared.registry.base import (
    TTL_SECONDS,
    Registry,
    RegistryEvent,
    WorkerInfo,
    by_model_and_age,
)

try:
    import aetcd
    from aetcd.rpc import AioRpcError
except ImportError as exc:  # pragma: no cover - the etcd extra is installed in tests
    raise ConfigError(
        "LLMSPOOL_REGISTRY_URL names etcd, whose client is not installed: "
        "pip install 'llmspool[etcd]'"
    ) from exc

T = TypeVar("T")

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/llmspool"
#: Seconds one etcd call may take before the registry counts as unreachable.
CALL_TIMEOUT = 3.0
#: gRPC's reconnect backoff grows to two minutes by default: keep it short, so a worker
#: re-registers within seconds of etcd coming back.
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
}
_FAILURES = (aetcd.ClientError, AioRpcError, TimeoutError, OSError)


@dataclass(frozen=True)
class EtcdAddress:
    """What an ``etcd://`` URL names."""

    host: str
    port: int
    prefix: str
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> EtcdAddress:
        parts = urlsplit(url)
        if parts.scheme != "etcd" or not parts.hostname:
            raise ConfigError(f"not an etcd URL (etcd://host:2379/prefix): {url!r}")
        prefix = "/" + parts.path.strip("/") if parts.path.strip("/") else DEFAULT_PREFIX
        return cls(
            host=parts.hostname,
            port=parts.port or DEFAULT_PORT,
            prefix=prefix,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def workers_prefix(self) -> bytes:
        """The key prefix under which every worker of this deployment registers."""
        return f"{self.prefix}/workers/".encode()

    def worker_key(self, worker_id: str) -> bytes:
        return self.workers_prefix() + worker_id.encode()


class EtcdRegistry(Registry):
    """Workers as keys under one lease each, in an etcd cluster."""

    def __init__(
        self, address: EtcdAddress, ttl: float = TTL_SECONDS, timeout: float = CALL_TIMEOUT
    ) -> None:
        super().__init__(ttl)
        self.address = address
        self.name = f"etcd at {address.host}:{address.port}, prefix {address.prefix}"
        self.timeout = timeout
        self._client: Any = aetcd.Client(
            host=address.host,
            port=address.port,
            username=address.username,
            password=address.password,
            timeout=timeout,  # gRPC takes float seconds
            options=_CHANNEL_OPTIONS,
        )
        #: the lease of each worker this process registered
        self._leases: dict[str, int] = {}

    @classmethod
    def from_url(cls, url: str, ttl: float = TTL_SECONDS) -> EtcdRegistry:
        return cls(EtcdAddress.parse(url), ttl)

    async def register(self, info: WorkerInfo) -> None:
        lease = await self._call(self._client.lease(math.ceil(self.ttl)))
        self._leases[info.id] = int(lease.id)
        await self._put(info)

    async def heartbeat(self, info: WorkerInfo) -> None:
        lease_id = self._leases.get(info.id)
        try:
            if lease_id is not None and await self._keep_alive(lease_id):
                await self._put(info)
                return
        except RegistryUnavailable:
            # the next beat starts from a fresh lease: the old one may expire meanwhile (its key
            # moves to the new lease with the next put; the old lease then holds nothing)
            self._leases.pop(info.id, None)
            raise
        await self.register(info)  # the lease expired (a long partition) or etcd lost it

    async def deregister(self, worker_id: str) -> None:
        lease_id = self._leases.pop(worker_id, None)
        if lease_id is not None:
            await self._call(self._client.revoke_lease(lease_id))
        await self._call(self._client.delete(self.address.worker_key(worker_id)))

    async def live_workers(self, model: str | None = None) -> list[WorkerInfo]:
        _, workers = await self._snapshot()
        return by_model_and_age(list(workers.values()), model)

    async def watch(self) -> AsyncIterator[RegistryEvent]:
        """etcd's own watch on the prefix, from the revision of a first snapshot on."""
        revision, known = await self._snapshot()
        for worker_id, info in known.items():
            yield RegistryEvent(kind="put", worker_id=worker_id, worker=info)
        stream = await self._call(
            self._client.watch_prefix(self.address.workers_prefix(), start_revision=revision + 1)
        )
        try:
            async for event in self._events(stream, known):
                yield event
        finally:
            await asyncio.shield(self._cancel(stream))

    async def close(self) -> None:
        await asyncio.wait_for(self._client.close(), self.timeout)

    # ------------------------------------------------------------------ etcd calls

    async def _put(self, info: WorkerInfo) -> None:
        info.last_beat = time.time()
        value = info.model_dump_json().encode()
        key = self.address.worker_key(info.id)
        await self._call(self._client.put(key, value, lease=self._leases[info.id]))

    async def _keep_alive(self, lease_id: int) -> bool:
        """Refresh a lease; False when etcd no longer knows it."""
        reply = await self._call(self._client.refresh_lease(lease_id))
        return reply is not None and int(reply.TTL) > 0

    async def _snapshot(self) -> tuple[int, dict[str, WorkerInfo]]:
        """The store's revision and every entry under the prefix at that revision."""
        result = await self._call(self._client.get_prefix(self.address.workers_prefix()))
        workers = {}
        for kv in result:
            info = WorkerInfo.model_validate_json(kv.value)
            workers[info.id] = info
        return int(result.header.revision), workers

    async def _events(
        self, stream: Any, known: dict[str, WorkerInfo]
    ) -> AsyncIterator[RegistryEvent]:
        start = len(self.address.workers_prefix())
        try:
            async for event in stream:
                worker_id = bytes(event.kv.key)[start:].decode()
                if event.kind == "PUT":
                    info = WorkerInfo.model_validate_json(event.kv.value)
                    known[worker_id] = info
                    yield RegistryEvent(kind="put", worker_id=worker_id, worker=info)
                else:
                    last = known.pop(worker_id, None)
                    yield RegistryEvent(kind="delete", worker_id=worker_id, worker=last)
        except _FAILURES as exc:
            raise self._unavailable(exc) from exc
        raise self._unavailable(ConnectionError("the watch stream ended"))

    async def _cancel(self, stream: Any) -> None:
        try:
            await asyncio.wait_for(stream.cancel(), self.timeout)
        except (*_FAILURES, asyncio.CancelledError):
            pass  # the stream is gone with the connection

    async def _call(self, call: Awaitable[T]) -> T:
        """Await one etcd call; an unreachable etcd becomes :class:`RegistryUnavailable`."""
        try:
            return await asyncio.wait_for(call, self.timeout)
        except _FAILURES as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> RegistryUnavailable:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return RegistryUnavailable(f"the worker registry ({self.name}) is unreachable: {detail}")
