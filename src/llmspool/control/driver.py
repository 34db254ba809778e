"""Drivers carry out the control loop's decisions: how many workers of a model run, and where.

The policy (:mod:`llmspool.control.policy`) is the same for every driver; a driver only knows how
to make a count true. :class:`LocalDriver` starts and stops ``llmspool worker`` processes on this
machine (through the :class:`~llmspool.control.supervisor.Supervisor`); the Kubernetes driver
(:mod:`llmspool.control.kubernetes`) scales one Deployment per model.
"""

from __future__ import annotations

import socket
from typing import Protocol

from llmspool.control.supervisor import Supervisor
from llmspool.shared.config import ModelConfig
from llmspool.shared.registry import WorkerInfo


class Driver(Protocol):
    """Makes a model's worker count true."""

    name: str

    async def scale(self, model: ModelConfig, workers: int, live: list[WorkerInfo]) -> None:
        """Run ``workers`` workers of ``model`` (``live``: its registered workers now)."""

    async def restart(self, model: ModelConfig) -> None:
        """Replace ``model``'s workers by fresh ones without losing requests."""

    async def remove(self, model: str) -> None:
        """Stop every worker of a model that left the models file."""


class LocalDriver:
    """Worker processes on this machine, supervised."""

    name = "local"

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.host = socket.gethostname()

    async def scale(self, model: ModelConfig, workers: int, live: list[WorkerInfo]) -> None:
        self.supervisor.set_desired(model.name, workers, model.max_workers)
        self.supervisor.set_ready(model.name, {w.pid for w in live if w.host == self.host})

    async def restart(self, model: ModelConfig) -> None:
        self.supervisor.restart(model.name)

    async def remove(self, model: str) -> None:
        self.supervisor.set_desired(model, 0, 0)
