"""What a benchmark run is configured with, and the calibrated policy it runs.

Shared by the ``bench`` command and the probe replay (``bench.probes``), which import it from
here rather than from each other.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from entropy_exit_integrations.core.calibration import Calibration
from entropy_exit_integrations.core.policy import ExitPolicy
from entropy_exit_integrations.gate import Refine

__all__ = ["BenchOptions", "Log", "chosen_policy"]

Log = Callable[[str], None]


@dataclass
class BenchOptions:
    """Knobs of a benchmark run beyond the request settings."""

    window: int = 16
    min_tokens: int = 16
    sweep: int = 8
    live: bool = True
    budgets: tuple[float, ...] = (0.25, 0.5, 0.75)
    deepconf_keep: tuple[float, ...] = (0.9, 0.1)
    fixed_bits: float = 0.15
    extended: Any = field(default_factory=Refine)


def chosen_policy(profile: Calibration, options: BenchOptions, log: Log) -> ExitPolicy:
    """The calibrated policy: a streaming profile's own shape, or a sequence profile's mean."""
    extra: dict[str, Any] = {}
    if profile.kind == "sequence":
        extra = {"aggregation": "mean", "min_tokens": options.min_tokens}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy = ExitPolicy.from_calibration(profile, allow_weak=True, **extra)
    for warning in caught:
        log(f"warning: {warning.message}")
    return policy
