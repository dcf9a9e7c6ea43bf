"""Answer probes: ask the model for its answer mid-stream, stop once consecutive answers agree.

Two rules in one shape, for live calls (the engine) and for replays of recorded traces (bench):

* **entropy-gated** (``every=None``, this package's rule): a probe is sent when the policy says
  "confident" or, with ``gate``, when its aggregate entropy falls below that looser bound. The
  cheap signal decides *when* to pay for a probe; the probes decide *whether* to stop.
* **periodic** (``every=N``, Dynasor-CoT style): a probe every N tokens, whatever the entropy.

Either way the stream stops only when ``agree`` consecutive probes give the same answer, and that
answer is the result. Probe tokens are a cost that every report counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import PolicyError
from .monitor import Decision

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class ProbeRule:
    """When to probe the answer, and how many probes must agree before the stream stops.

    Args:
        every: probe every this many tokens (periodic); None for entropy-gated probes.
        gate: entropy-gated: also probe when the policy's aggregate entropy is at or below this
            many bits (looser than the policy's threshold); None probes only when the policy
            says "confident".
        agree: consecutive probes that must give the same answer to stop.
        min_tokens: no probe before this many tokens.
        min_gap: tokens between two probes (entropy-gated; periodic probes are ``every`` apart).
        max_probes: probes per call at most; after that the stream runs on unprobed.
        max_tokens: a probe's budget.
        require_number: an answer without a digit counts as no answer (it agrees with nothing):
            for numeric questions, where a model may answer a probe with the prompt's template
            ("The answer is N.") and such echoes would "agree" (Dynasor-CoT discards probes
            without a valid answer the same way).
    """

    every: int | None = None
    gate: float | None = None
    agree: int = 2
    min_tokens: int = 16
    min_gap: int = 16
    max_probes: int = 8
    max_tokens: int = 24
    require_number: bool = False

    def __post_init__(self) -> None:
        for name, low in (
            ("agree", 1),
            ("min_tokens", 0),
            ("min_gap", 1),
            ("max_probes", 1),
            ("max_tokens", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PolicyError(f"ProbeRule.{name} must be an integer >= {low}, got {value!r}")
        if self.every is not None and (
            isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1
        ):
            raise PolicyError(f"ProbeRule.every must be a positive integer or None, got {self.every!r}")
        if self.gate is not None and not self.gate >= 0:
            raise PolicyError(f"ProbeRule.gate must be >= 0 bits or None, got {self.gate!r}")

    @property
    def name(self) -> str:
        if self.every is not None:
            return f"probe every {self.every}, k={self.agree}"
        gate = "" if self.gate is None else f" <= {self.gate:g} bits"
        return f"entropy-gated probe{gate}, k={self.agree}"


def answer_key(text: str) -> str | None:
    """What two probe answers must share to agree: the last number, else the normalised text."""
    numbers = _NUMBER.findall(text.replace("$", ""))
    if numbers:
        value = numbers[-1].replace(",", "")
        return value[:-2] if value.endswith(".0") else value
    words = " ".join(text.lower().split()).strip(" .!?:;\"'")
    return words or None


def same_answer(a: str, b: str) -> bool:
    """Two probe answers agree (an empty answer agrees with nothing)."""
    key = answer_key(a)
    return key is not None and key == answer_key(b)


class ProbeState:
    """One call's probes: whether one is due, and whether the answers agree.

    >>> state = ProbeState(ProbeRule(every=4, agree=2, min_tokens=0))
    >>> [state.due(i, Decision(False, "uncertain", i, 2.0)) for i in range(4)]
    [False, False, False, True]
    >>> state.record(3, "42"), state.record(7, "The answer is 42.")
    (False, True)
    """

    def __init__(self, rule: ProbeRule) -> None:
        self.rule = rule
        self.probes = 0
        self.answers: list[str] = []
        self.agreed: str | None = None
        self._last = -rule.min_gap  # token index of the last probe

    def due(self, token_index: int, decision: Decision) -> bool:
        """A probe should be sent after token ``token_index`` (0-based)."""
        rule = self.rule
        if self.agreed is not None or self.probes >= rule.max_probes or token_index + 1 < rule.min_tokens:
            return False
        if rule.every is not None:
            return (token_index + 1) % rule.every == 0
        if token_index - self._last < rule.min_gap:
            return False
        entropy = decision.entropy
        return decision.should_exit or (
            rule.gate is not None
            and entropy is not None
            and decision.reason != "warming_up"
            and entropy <= rule.gate
        )

    def record(self, token_index: int, answer: str) -> bool:
        """The answer of the probe sent after ``token_index``; True once enough agree in a row."""
        self.probes += 1
        self._last = token_index
        if self.rule.require_number and not any(c.isdigit() for c in answer):
            answer = ""  # no number, no answer: it agrees with nothing
        self.answers.append(answer)
        tail = self.answers[-self.rule.agree :]
        if len(tail) == self.rule.agree and all(same_answer(tail[0], other) for other in tail[1:]):
            if self.rule.agree > 1 or answer_key(answer) is not None:
                self.agreed = answer
        return self.agreed is not None
