"""What every registry does: the entry a worker registers, and the small interface behind which
the Redis and etcd registries (and any other service registry) sit."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from typing import Literal

from pydantic import BaseModel

#: Seconds a worker stays registered without a heartbeat, unless settings say otherwise.
TTL_SECONDS = 10.0
#: A worker beats this many times per TTL, so one or two lost beats do not unregister it.
BEATS_PER_TTL = 5


class WorkerInfo(BaseModel):
    """A registry entry. New fields need a default: older readers ignore fields they do not
    know, newer readers fill in what an older worker did not write."""

    id: str
    model: str
    backend: str
    host: str
    pid: int
    capacity: int
    in_flight: int = 0
    #: tokens the engine generated since start, aborted jobs included (where it counts them)
    engine_tokens: int = 0
    #: requests the engine itself runs, as of its last step (backends that report it: vllm);
    #: else the jobs this worker runs
    engine_running: int = 0
    started: float
    last_beat: float = 0.0
    state: str = "serving"
    #: ``host:port`` of the worker's own /metrics ("" when it serves none).
    metrics: str = ""
    #: The engine's context length in tokens (0: it did not say).
    max_model_len: int = 0

    def to_mapping(self) -> dict[str, str]:
        return {name: str(value) for name, value in self.model_dump().items()}


class RegistryEvent(BaseModel):
    """A change seen by :meth:`Registry.watch`: a worker registered or updated its entry
    (``put``), or its entry went away (``delete``: deregistered, or its lease/TTL ran out)."""

    kind: Literal["put", "delete"]
    worker_id: str
    #: the entry (for ``delete``: the last one seen; None when it was never seen)
    worker: WorkerInfo | None


class Registry(ABC):
    """Where live workers announce themselves and everyone else finds them.

    A worker :meth:`register`\\ s once, :meth:`heartbeat`\\ s every :attr:`heartbeat_interval`
    seconds (which also writes its changing fields: in-flight jobs, state) and
    :meth:`deregister`\\ s when it stops; an entry whose heartbeats stop disappears after
    :attr:`ttl` seconds. Calls raise :class:`~llmspool.shared.errors.RegistryUnavailable`
    (or, for the Redis registry, Redis' own connection errors) when the registry cannot be
    reached.
    """

    #: how messages name this registry ("Redis", "etcd at host:2379, prefix /llmspool")
    name: str = "registry"

    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self.ttl = ttl

    @property
    def heartbeat_interval(self) -> float:
        return self.ttl / BEATS_PER_TTL

    @abstractmethod
    async def register(self, info: WorkerInfo) -> None:
        """Add ``info``, alive for :attr:`ttl` seconds unless a heartbeat follows."""

    @abstractmethod
    async def heartbeat(self, info: WorkerInfo) -> None:
        """Keep ``info`` alive and write its current fields; registers it again if the
        registry lost it meanwhile (its lease expired, or the registry was restarted empty)."""

    @abstractmethod
    async def deregister(self, worker_id: str) -> None:
        """Remove a worker's entry now."""

    @abstractmethod
    async def live_workers(self, model: str | None = None) -> list[WorkerInfo]:
        """Every registered worker (of ``model``, when given), by model, then age."""

    async def watch(self) -> AsyncIterator[RegistryEvent]:
        """The registered workers (as ``put`` events), then every change as it happens, until
        the registry cannot be reached (the error is raised; a new watch starts over).

        This default polls :meth:`live_workers` once per heartbeat interval; a registry with
        change notifications (etcd) overrides it."""
        known: dict[str, WorkerInfo] = {}
        while True:
            current = {w.id: w for w in await self.live_workers()}
            for event in changes(known, current):
                yield event
            known = current
            await asyncio.sleep(self.heartbeat_interval)

    async def close(self) -> None:  # noqa: B027 - optional: the Redis registry holds nothing
        """Let go of connections this registry opened (not those it was handed)."""


def changes(
    before: Mapping[str, WorkerInfo], after: Mapping[str, WorkerInfo]
) -> list[RegistryEvent]:
    """The events that turn ``before`` into ``after``."""
    events = [
        RegistryEvent(kind="put", worker_id=wid, worker=info)
        for wid, info in after.items()
        if before.get(wid) != info
    ]
    events += [
        RegistryEvent(kind="delete", worker_id=wid, worker=info)
        for wid, info in before.items()
        if wid not in after
    ]
    return events


def by_model_and_age(workers: list[WorkerInfo], model: str | None) -> list[WorkerInfo]:
    """``workers`` of ``model`` (all when None), ordered as :meth:`Registry.live_workers` is."""
    chosen = [w for w in workers if model is None or w.model == model]
    return sorted(chosen, key=lambda w: (w.model, w.started))
