"""EntropyMonitor: the streaming state machine that decides when to stop."""

from __future__ import annotations

import functools
import warnings
from array import array
from collections import deque
from typing import NamedTuple

from ..errors import EntropyExitWarning, LogprobsFormatError
from .entropy import (
    ONE_LIVE_BITS,
    POSITIVE_TOLERANCE,
    fast_renormalised_bits,
    live_candidates,
    max_entropy_bits,
    token_entropy,
)
from .policy import ExitPolicy
from .tokens import Phase, TokenLogprob

_NAN = float("nan")


class Decision(NamedTuple):
    """The monitor's verdict after a token.

    Attributes:
        should_exit: True once the policy says the model is confident; stays True.
        reason: ``"confident"`` on exit; otherwise why not yet: ``"warming_up"`` (under
            ``min_tokens`` or the window is not full), ``"uncertain"``, ``"patience"``
            (confident, waiting for more in a row), ``"unknown"`` (token had no logprobs),
            ``"not_watched"`` (a phase the policy ignores).
        token_index: 0-based index of the token this decision was made at, over all tokens seen.
        entropy: the aggregate entropy in bits, or None before any watched token.
    """

    should_exit: bool
    reason: str
    token_index: int
    entropy: float | None


class EntropyMonitor:
    """Feed tokens in order; ``observe`` says when to stop. O(1) amortised per token.

    Unknown tokens count in the aggregate as maximally uncertain and reset ``patience``, so
    missing or broken data can only delay an exit, never cause one. A token is unknown when:

    * it has no candidates;
    * fewer than two of its candidates are *live* (finite, above the -9999 sentinel), under the
      renormalised estimator, whatever the live one's value: one candidate always reads as 0
      bits (plus rounding noise: ``[-1.3e-164, -9999]`` reads 1.9e-164 bits), which says nothing
      about the alternatives (``core.entropy.live_candidates``, ``ONE_LIVE_BITS``);
    * its logprobs are malformed: a NaN or clearly positive candidate, or a NaN or clearly
      positive *sampled* logprob even when its top list is fine (a provider that garbles the
      one number it is sure of is not trusted for the rest).

    Malformed data is the one documented behaviour for bad data: never an exception, an unknown
    token, and one ``EntropyExitWarning`` per monitor (so per stream). "Maximally uncertain" is
    ``log2(top_k + 1)`` bits, the largest entropy a token can have under this policy (its
    ``top_k`` candidates plus a sampled token from outside them); a known token with more
    candidates than that is capped there, so no token ever reads as less certain than an
    unknown one.

    >>> from entropy_exit_integrations import ExitPolicy, TokenLogprob
    >>> monitor = EntropyMonitor(ExitPolicy(threshold=0.5, min_tokens=2))
    >>> sure = TokenLogprob("4", -0.01, ("4", "5"), (-0.01, -5.0))
    >>> [monitor.observe(sure).should_exit for _ in range(3)]
    [False, True, True]
    """

    def __init__(self, policy: ExitPolicy) -> None:
        self.policy = policy
        self._unknown_bits = max_entropy_bits(policy.top_k + 1)
        self._renormalised = not policy.tail_aware
        self._alpha = 2.0 / (policy.window + 1)
        self._entropy = functools.partial(token_entropy, tail_aware=policy.tail_aware)
        self.reset()

    def reset(self) -> None:
        """Forget everything; ready for a new generation."""
        self.trace = array("d")
        self.tokens_seen = 0
        self.watched = 0
        self.unknown_tokens = 0
        self.malformed_tokens = 0
        self.reasoning_tokens = 0
        self.max_k = 0
        self._sum = 0.0
        self._window: deque[float] = deque(maxlen=self.policy.window)
        self._window_sum = 0.0
        self._ema: float | None = None
        self._streak = 0
        self._watch_phase: Phase | None = self._initial_watch_phase()
        self._warned_fallback = False
        self.decision = Decision(False, "warming_up", -1, None)

    def _initial_watch_phase(self) -> Phase | None:
        if self.policy.phase == "answer":
            return Phase.ANSWER
        if self.policy.phase == "both":
            return None
        return Phase.REASONING

    @property
    def exited(self) -> bool:
        return self.decision.should_exit

    def observe(self, token: TokenLogprob) -> Decision:
        """Account for one token and return the decision after it (sticky once it exits)."""
        index = self.tokens_seen
        self.tokens_seen = index + 1
        _, logprob, _, top, phase = token
        if phase is Phase.REASONING:
            self.reasoning_tokens += 1
        k = len(top)
        if k > self.max_k:
            self.max_k = k
        bits: float | None = None
        if logprob is not None and not logprob <= POSITIVE_TOLERANCE:  # NaN fails <= too
            self._malformed(LogprobsFormatError("logprob", f"sampled token's logprob is {logprob!r}"))
        elif k:
            try:
                # The renormalised fast path first (no call layers: this runs per token).
                bits = fast_renormalised_bits(top) if self._renormalised else None
                if bits is None:
                    bits = self._entropy(top)
            except LogprobsFormatError as error:
                self._malformed(error)
            else:
                if bits is None:
                    pass
                elif bits < ONE_LIVE_BITS:  # rare: a near-certain token, or one live candidate
                    if self._renormalised and live_candidates(top) < 2:
                        bits = None
                elif bits > self._unknown_bits:
                    bits = self._unknown_bits
        if bits is None:
            self.unknown_tokens += 1
            self.trace.append(_NAN)
        else:
            self.trace.append(bits)
        decision = self.decision
        if decision.should_exit:
            return decision
        if phase is not self._watch_phase and not self._watches(phase):
            self.decision = Decision(False, "not_watched", index, decision.entropy)
        else:
            self.decision = self._decide(index, bits)
        return self.decision

    def _malformed(self, error: LogprobsFormatError) -> None:
        self.malformed_tokens += 1
        if self.malformed_tokens == 1:
            warnings.warn(
                f"{error}: the token counts as unknown (bad logprobs can only delay an exit)",
                EntropyExitWarning,
                stacklevel=4,
            )

    def _watches(self, phase: Phase) -> bool:
        watch = self._watch_phase
        if watch is None or phase is watch:
            return True
        if watch is Phase.REASONING and phase is Phase.ANSWER and self.reasoning_tokens == 0:
            # The model has no reasoning phase: fall back to watching its answer.
            if self.policy.phase == "reasoning" and not self._warned_fallback:
                warnings.warn(
                    "ExitPolicy(phase='reasoning') but the model emitted no reasoning tokens; "
                    "watching the answer instead",
                    EntropyExitWarning,
                    stacklevel=3,
                )
                self._warned_fallback = True
            self._watch_phase = Phase.ANSWER
            return True
        return False

    def _decide(self, index: int, bits: float | None) -> Decision:
        value = self._unknown_bits if bits is None else bits
        policy = self.policy
        self.watched += 1
        if policy.aggregation == "mean":
            self._sum += value
            aggregate = self._sum / self.watched
            ready = True
        elif policy.aggregation == "window":
            if len(self._window) == policy.window:
                self._window_sum -= self._window[0]
            self._window.append(value)
            self._window_sum += value
            aggregate = self._window_sum / len(self._window)
            ready = len(self._window) == policy.window
        else:
            ema = self._ema
            aggregate = value if ema is None else ema + self._alpha * (value - ema)
            self._ema = aggregate
            ready = True
        if bits is None:
            self._streak = 0
            return Decision(False, "unknown", index, aggregate)
        if not ready or self.watched < policy.min_tokens:
            self._streak = 0
            return Decision(False, "warming_up", index, aggregate)
        if aggregate >= policy.threshold:
            self._streak = 0
            return Decision(False, "uncertain", index, aggregate)
        self._streak += 1
        if self._streak < policy.patience:
            return Decision(False, "patience", index, aggregate)
        return Decision(True, "confident", index, aggregate)
