"""ExitPolicy warns about a threshold that exits on every call: at or above log2(top_k) bits."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import pytest

from entropy_exit_integrations import EntropyExitWarning, EntropyMonitor, ExitPolicy, TokenLogprob


def _quiet(**kwargs: object) -> ExitPolicy:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return ExitPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("threshold", [100.0, 5.0, math.log2(20)])
def test_a_threshold_at_or_above_log2_top_k_warns(threshold: float) -> None:
    with pytest.warns(EntropyExitWarning, match=r"log2\(20\).*every call exits") as caught:
        ExitPolicy(threshold=threshold)
    assert len(caught) == 1
    assert caught[0].filename == __file__  # points at the caller's line, not at the dataclass


@pytest.mark.parametrize(
    ("top_k", "tail_aware", "ceiling"),
    [(5, False, math.log2(5)), (2, False, 1.0), (5, True, math.log2(6)), (1, True, 1.0)],
)
def test_the_ceiling_follows_top_k_and_the_estimator(top_k: int, tail_aware: bool, ceiling: float) -> None:
    _quiet(threshold=ceiling - 1e-9, top_k=top_k, tail_aware=tail_aware)
    with pytest.warns(EntropyExitWarning, match=f"{top_k} candidates"):
        ExitPolicy(threshold=ceiling, top_k=top_k, tail_aware=tail_aware)


def test_ordinary_and_monitor_only_thresholds_do_not_warn() -> None:
    _quiet(threshold=1.0)
    _quiet(threshold=4.3)  # just under log2(20) = 4.32
    _quiet(threshold=0.0)  # monitor only: never exits
    _quiet(threshold=3.0, top_k=1)  # one candidate is read as unknown: nothing is measured
    _quiet(threshold=2.0, top_k=5, tail_aware=True)
    policy = _quiet(threshold=1.0)
    _quiet(**policy.to_dict())
    ExitPolicy.from_json(policy.to_json())


def test_replace_and_from_dict_warn_too() -> None:
    policy = _quiet(threshold=1.0)
    with pytest.warns(EntropyExitWarning):
        replace(policy, threshold=10.0)
    with pytest.warns(EntropyExitWarning):
        ExitPolicy.from_dict({**policy.to_dict(), "top_k": 2})  # log2(2) = 1 bit


def test_the_warning_is_right_the_flattest_tokens_exit() -> None:
    """The flattest top-20 a token can have still reads under a log2(20) + eps threshold."""
    with pytest.warns(EntropyExitWarning):
        policy = ExitPolicy(threshold=math.log2(20) + 1e-6, min_tokens=3)
    flat = TokenLogprob("a", math.log(1 / 20), tuple("abcdefghijklmnopqrst"), (math.log(1 / 20),) * 20)
    monitor = EntropyMonitor(policy)
    assert [monitor.observe(flat).should_exit for _ in range(4)] == [False, False, True, True]
