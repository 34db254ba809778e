"""The autoscaling policy: how many workers a model should have, from its backlog history.

One pure function (:func:`decide`) that every driver uses — the local supervisor and the
Kubernetes driver alike::

    wanted(b)  = clamp(ceil(b / target_per_worker), min_workers, max_workers)
    desired    = max(wanted(b) for every sample within scale_down_window)   # up at once,
                                                                            # down when stable
    desired    = max(desired, 1)  while any backlog was seen within idle_window (then 0 is allowed)
    desired    = pin              when an operator pinned a count

``backlog`` is a model's undelivered plus in-flight entries over its streams (consumer-group lag
plus pending, as KEDA reads them), so running generations keep their workers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from llmspool.shared.config import ModelConfig


@dataclass(frozen=True)
class ScalePolicy:
    """The bounds and windows of one model's pool."""

    min_workers: int
    max_workers: int
    target_per_worker: int
    scale_down_window: float
    idle_window: float

    @classmethod
    def of(cls, model: ModelConfig, *, offline: bool = False) -> ScalePolicy:
        """The policy of ``model``; an offline model may go down to zero once drained."""
        return cls(
            min_workers=0 if offline else model.min_workers,
            max_workers=model.max_workers,
            target_per_worker=model.target_per_worker,
            scale_down_window=model.autoscale.scale_down_window,
            idle_window=model.autoscale.idle_window,
        )

    @property
    def horizon(self) -> float:
        """How far back a decision looks."""
        return max(self.scale_down_window, self.idle_window)


@dataclass(frozen=True)
class Sample:
    """The backlog seen at one moment."""

    at: float
    backlog: int


def wanted(policy: ScalePolicy, backlog: int) -> int:
    """Workers for ``backlog`` right now, within the bounds."""
    raw = math.ceil(max(backlog, 0) / policy.target_per_worker)
    return min(max(raw, policy.min_workers), policy.max_workers)


def desired_workers(policy: ScalePolicy, samples: Iterable[Sample], now: float) -> int:
    """Workers for the backlog history ``samples`` (the newest counts even if it is late)."""
    history = list(samples)
    if not history:
        return policy.min_workers
    latest = history[-1]
    stable = [s for s in history if now - s.at <= policy.scale_down_window]
    desired = max(wanted(policy, s.backlog) for s in [*stable, latest])
    if desired == 0 and _busy_within(history, now, policy.idle_window):
        desired = min(1, policy.max_workers)
    return desired


def decide(policy: ScalePolicy, samples: Iterable[Sample], now: float, pin: int | None) -> int:
    """The workers a model should run: the operator's pin, else the policy's answer."""
    if pin is not None:
        return max(0, min(pin, policy.max_workers))
    return desired_workers(policy, samples, now)


def _busy_within(samples: list[Sample], now: float, window: float) -> bool:
    return any(s.backlog > 0 and now - s.at <= window for s in samples)


class History:
    """The backlog samples of one model, kept as far back as its policy looks."""

    def __init__(self) -> None:
        self.samples: deque[Sample] = deque()

    def add(self, sample: Sample, horizon: float) -> None:
        self.samples.append(sample)
        while self.samples and sample.at - self.samples[0].at > horizon:
            self.samples.popleft()
