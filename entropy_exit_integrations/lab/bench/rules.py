"""Exit rules compared in the benchmark: ours (an ExitPolicy) and the peers' on the same model.

Each rule answers one question offline: given a recorded token trace, at which token index would
it have stopped (None: it never stops)? Entropy policies answer through ``EntropyMonitor``, the
exact code that runs live, so a replay over a greedy trace is what a live run would do.

Peer rules:

* ``BudgetCut(n)``: a fixed token budget (stop at token n).
* ``DeepConfOnline(threshold, window)``: DeepConf's online rule (Fu et al., 2025, "Deep Think
  with Confidence"): token confidence ``C = -mean(top-k logprobs)``, group confidence the mean
  over a sliding window; stop once a full window's group confidence falls *below* the threshold,
  which is a percentile of the warm-up traces' lowest group confidence. DeepConf drops such a
  trace from its vote; with a single sample the bench forces an answer from the prefix instead.
* ``fixed_entropy_rule(0.15)``: a fixed 0.15-bit sliding-window threshold, the kind of default
  some tools ship, with no calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from entropy_exit_integrations.core.calibration import live_stop_index
from entropy_exit_integrations.core.monitor import EntropyMonitor
from entropy_exit_integrations.core.policy import ExitPolicy
from entropy_exit_integrations.core.tokens import TokenLogprob


@dataclass(frozen=True)
class PolicyRule:
    """An entropy ExitPolicy (ours, or a fixed uncalibrated threshold), replayed with the monitor."""

    name: str
    policy: ExitPolicy
    family: str = "entropy exit"
    live: bool = True

    def exit_index(self, tokens: Sequence[TokenLogprob]) -> int | None:
        """The token a live run stops after: the monitor's exit, moved past a number being
        written (a live stop never cuts "48" after the "4")."""
        monitor = EntropyMonitor(self.policy)
        for token in tokens:
            if monitor.observe(token).should_exit:
                return live_stop_index(tokens, monitor.decision.token_index)
        return None

    def exit_trace(self, tokens: Sequence[TokenLogprob]) -> list[float | None]:
        """The aggregate entropy after every token (what the policy compares with its threshold)."""
        monitor = EntropyMonitor(ExitPolicy.from_dict({**self.policy.to_dict(), "threshold": 0.0}))
        return [monitor.observe(token).entropy for token in tokens]


@dataclass(frozen=True)
class BudgetCut:
    """Stop after a fixed number of tokens."""

    budget: int
    family: str = "budget cut"
    live: bool = False
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"budget {self.budget}")

    def exit_index(self, tokens: Sequence[TokenLogprob]) -> int | None:
        return self.budget - 1 if len(tokens) > self.budget else None


def token_confidences(tokens: Sequence[TokenLogprob]) -> np.ndarray:
    """DeepConf token confidence ``-mean(top-k logprobs)``; NaN for tokens without candidates."""
    return np.array([-float(np.mean(t.top_logprobs)) if t.top_logprobs else np.nan for t in tokens])


@dataclass(frozen=True)
class DeepConfOnline:
    """DeepConf's online early stop: a full window's mean confidence below the warm-up threshold."""

    threshold: float
    window: int = 32
    family: str = "DeepConf online"
    live: bool = False
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"DeepConf s={self.threshold:.2f} w={self.window}")

    def exit_index(self, tokens: Sequence[TokenLogprob]) -> int | None:
        conf = token_confidences(tokens)
        if conf.size < self.window:
            return None
        filled = np.where(np.isnan(conf), 0.0, conf)
        groups = np.convolve(filled, np.ones(self.window), mode="valid") / self.window
        below = np.flatnonzero(groups < self.threshold)
        return int(below[0]) + self.window - 1 if below.size else None


def deepconf_threshold(
    warmup: Sequence[Sequence[TokenLogprob]], *, keep: float = 0.9, window: int = 32
) -> float:
    """DeepConf's warm-up threshold: the (1 - keep) percentile of the lowest group confidences."""
    from entropy_exit_integrations.core.calibration import lowest_group_confidence

    lows = [v for v in (lowest_group_confidence(t, window) for t in warmup) if v is not None]
    return float(np.quantile(lows, 1.0 - keep)) if lows else 0.0


def fixed_entropy_rule(bits: float = 0.15, *, window: int = 16, min_tokens: int = 16) -> PolicyRule:
    """The uncalibrated fixed-threshold rule (sliding window mean below ``bits``)."""
    policy = ExitPolicy(threshold=bits, aggregation="window", window=window, min_tokens=min_tokens)
    return PolicyRule(f"fixed {bits:g} bits", policy, family="fixed threshold")


Rule = PolicyRule | BudgetCut | DeepConfOnline
