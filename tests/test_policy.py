"""The autoscaling policy: every bound and window."""

from __future__ import annotations

import pytest

from llmspool.control.policy import History, Sample, ScalePolicy, decide, desired_workers, wanted
from llmspool.shared.config import ModelConfig

POLICY = ScalePolicy(
    min_workers=0, max_workers=3, target_per_worker=4, scale_down_window=10, idle_window=30
)


def samples(*pairs: tuple[float, int]) -> list[Sample]:
    return [Sample(at, backlog) for at, backlog in pairs]


@pytest.mark.parametrize(
    ("backlog", "workers"), [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (12, 3), (500, 3)]
)
def test_wanted_is_ceil_of_backlog_over_target_clamped(backlog: int, workers: int) -> None:
    assert wanted(POLICY, backlog) == workers


def test_min_workers_is_a_floor() -> None:
    policy = ScalePolicy(2, 5, 4, 10, 30)
    assert wanted(policy, 0) == 2
    assert desired_workers(policy, [], now=0) == 2
    assert desired_workers(policy, samples((0, 0)), now=100) == 2


def test_max_workers_is_a_ceiling_even_when_pinned() -> None:
    assert desired_workers(POLICY, samples((0, 10_000)), now=0) == 3
    assert decide(POLICY, [], now=0, pin=7) == 3
    assert decide(POLICY, samples((0, 100)), now=0, pin=1) == 1
    assert decide(POLICY, samples((0, 100)), now=0, pin=0) == 0


def test_scale_up_is_immediate() -> None:
    history = samples((0, 0), (1, 0), (2, 12))
    assert desired_workers(POLICY, history, now=2) == 3


def test_scale_down_waits_for_the_stabilization_window() -> None:
    history = samples((0, 12), (1, 4), (5, 4))
    assert desired_workers(POLICY, history, now=5) == 3  # 12 seen 5 s ago, window 10 s
    assert desired_workers(POLICY, history, now=10) == 3
    assert desired_workers(POLICY, history, now=10.5) == 1  # only the 4s are recent


def test_to_zero_only_after_the_idle_window() -> None:
    history = samples((0, 3), (12, 0), (20, 0))
    assert desired_workers(POLICY, history, now=20) == 1  # down window passed, idle has not
    assert desired_workers(POLICY, history, now=30) == 1
    assert desired_workers(POLICY, history, now=30.1) == 0


def test_idle_window_never_exceeds_max() -> None:
    policy = ScalePolicy(0, 0, 1, 0, 30)
    assert desired_workers(policy, samples((0, 5)), now=1) == 0


def test_zero_stays_zero_without_backlog() -> None:
    assert desired_workers(POLICY, samples((0, 0), (1, 0)), now=1) == 0


def test_short_windows_scale_down_quickly() -> None:
    policy = ScalePolicy(0, 3, 1, 0, 0)
    assert desired_workers(policy, samples((0, 3), (1, 1)), now=1) == 1
    assert desired_workers(policy, samples((0, 3), (1, 0)), now=1) == 0


def test_newest_sample_counts_even_if_late() -> None:
    assert desired_workers(POLICY, samples((0, 12)), now=1000) == 3


def test_offline_model_may_reach_zero_despite_min_workers() -> None:
    model = ModelConfig(name="m", backend="fake", min_workers=2, max_workers=4, max_concurrency=8)
    assert ScalePolicy.of(model).min_workers == 2
    offline = ScalePolicy.of(model, offline=True)
    assert offline.min_workers == 0 and offline.target_per_worker == 8


def test_target_per_worker_defaults_to_max_concurrency_and_is_configurable() -> None:
    model = ModelConfig(name="m", backend="fake", max_concurrency=6)
    assert model.target_per_worker == 6
    assert model.autoscale.tick <= 1.0
    tuned = ModelConfig.model_validate(
        {"name": "m", "backend": "fake", "autoscale": {"target_per_worker": 2, "idle_window": 5}}
    )
    assert tuned.target_per_worker == 2 and ScalePolicy.of(tuned).idle_window == 5


def test_history_keeps_only_the_horizon() -> None:
    history = History()
    for t in range(100):
        history.add(Sample(float(t), t), horizon=30)
    assert history.samples[0].at == 69 and history.samples[-1].at == 99
