"""EntropyGate: the paper's protocol as a reusable piece, over the openai helpers.

Run a first reasoning pass and measure its sequence entropy (mean token entropy, bits, the same
monitor code as everywhere else). If it is ``<= tau`` the model is confident and its answer is
returned; otherwise the *extended step* runs and its answer is returned:

* ``Refine()``: a second round that shows the model its first attempt and asks it to check it;
* ``Vote(samples=4)``: more samples, combined by entropy-weighted voting (weight ``2**-H``);
* ``BiggerBudget(factor=4)``: the same question again with a larger ``max_tokens``.

Every result reports the tokens it used against always running the extended step (the protocol
without the gate). When the gate passes, the extended step's cost is not observed: it is
estimated from the extended steps this gate has run so far (or ``expected_extended_tokens``).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .core.answers import extract_math_answer
from .core.calibration import Calibration, sequence_entropy
from .core.policy import ExitPolicy
from .errors import PolicyError


def _default_extract(text: str) -> str:
    return (extract_math_answer(text) or text.strip()).strip()


@dataclass(frozen=True)
class Refine:
    """Second round: the first attempt goes back as an assistant turn, then this instruction."""

    instruction: str = (
        "Check your reasoning above step by step, fix any mistake, and state the final answer again."
    )
    max_tokens: int | None = None


@dataclass(frozen=True)
class Vote:
    """More samples (the first pass counts as one), entropy-weighted majority over their answers."""

    samples: int = 4
    temperature: float = 0.7
    extract: Callable[[str], str] = _default_extract


@dataclass(frozen=True)
class BiggerBudget:
    """Ask again with ``max_tokens`` multiplied by ``factor``."""

    factor: float = 4.0


ExtendedStep = Refine | Vote | BiggerBudget


@dataclass
class GateResult:
    """What one gated call returned and cost."""

    text: str
    passed: bool
    entropy: float | None
    tau: float
    first: Any
    extended: list[Any] = field(default_factory=list)
    first_tokens: int = 0
    extended_tokens: int = 0
    estimated_extended_tokens: float | None = None

    @property
    def tokens_used(self) -> int:
        return self.first_tokens + self.extended_tokens

    @property
    def tokens_always_extended(self) -> float | None:
        """Tokens the ungated protocol (first pass + extended step, always) would have used."""
        if not self.passed:
            return float(self.tokens_used)
        if self.estimated_extended_tokens is None:
            return None
        return self.first_tokens + self.estimated_extended_tokens

    @property
    def tokens_saved(self) -> float | None:
        always = self.tokens_always_extended
        return None if always is None else always - self.tokens_used

    def to_dict(self) -> dict[str, Any]:
        """The gate's report as plain JSON-ready data (the first pass's report included)."""
        names = "passed entropy tau first_tokens extended_tokens tokens_used tokens_always_extended"
        data = {name: getattr(self, name) for name in [*names.split(), "tokens_saved"]}
        return {**data, "first_report": self.first.report.to_dict()}


def _tokens(result: Any) -> int:
    return int(result.report.tokens_generated)


def weighted_vote(answers: list[str], entropies: list[float | None]) -> str:
    """The answer with the largest total weight ``2**-H`` (unknown entropy weighs 1/1024)."""
    weights: dict[str, float] = defaultdict(float)
    for answer, entropy in zip(answers, entropies):
        weights[answer] += 2.0 ** -(entropy if entropy is not None else 10.0)
    return max(weights, key=lambda a: (weights[a], -answers.index(a)))


class EntropyGate:
    """Gate the extended step on the first pass's sequence entropy.

    Args:
        tau: threshold in bits, or a sequence ``Calibration`` (its tau, risk-controlled when it
            was made with ``risk=``; refused when its verdict is "no signal" unless
            ``allow_weak=True``, as ``ExitPolicy.from_calibration`` does, and when it was made
            for a streaming policy).
        extended: the extended step (``Refine()``, ``Vote()``, ``BiggerBudget()``).
        top_k: candidates per token to request.
        expected_extended_tokens: cost of the extended step for savings before any was observed.
    """

    def __init__(
        self,
        tau: float | Calibration,
        extended: ExtendedStep | None = None,
        *,
        top_k: int = 20,
        allow_weak: bool = False,
        expected_extended_tokens: float | None = None,
    ) -> None:
        if isinstance(tau, Calibration):
            if tau.kind != "sequence":
                raise PolicyError(
                    f"this calibration's threshold is for a streaming policy ({tau.policy_shape()}); "
                    "the gate compares the whole generation's mean entropy: use a calibration made "
                    "with calibrate() on sequence entropies"
                )
            policy = ExitPolicy.from_calibration(
                tau, allow_weak=allow_weak, aggregation="mean", top_k=min(top_k, tau.k)
            )
            self.tau = policy.threshold
        else:
            self.tau = float(tau)
            policy = ExitPolicy(threshold=0.0, top_k=top_k)
        self.record_policy = ExitPolicy(threshold=0.0, min_tokens=0, top_k=policy.top_k)
        self.extended = extended or Refine()
        self._lock = threading.Lock()
        self._extended_seen: list[int] = []
        self._expected = expected_extended_tokens

    @property
    def expected_extended_tokens(self) -> float | None:
        with self._lock:
            if self._extended_seen:
                return sum(self._extended_seen) / len(self._extended_seen)
        return self._expected

    def run(self, client: Any, **create_kwargs: Any) -> GateResult:
        """One gated call; ``create_kwargs`` go to ``client.chat.completions.create``."""
        from .openai import stream_chat

        first = stream_chat(client, policy=self.record_policy, **create_kwargs)
        entropy = sequence_entropy(first.tokens, k=self.record_policy.top_k)
        if entropy is not None and entropy <= self.tau:
            return GateResult(
                first.text,
                True,
                entropy,
                self.tau,
                first,
                first_tokens=_tokens(first),
                estimated_extended_tokens=self.expected_extended_tokens,
            )
        text, runs = self.extend(client, first, entropy, create_kwargs)
        spent = sum(_tokens(r) for r in runs)
        with self._lock:
            self._extended_seen.append(spent)
        return GateResult(text, False, entropy, self.tau, first, runs, _tokens(first), spent, float(spent))

    __call__ = run

    def extend(
        self, client: Any, first: Any, entropy: float | None, create_kwargs: dict[str, Any]
    ) -> tuple[str, list[Any]]:
        """Run the extended step after ``first``; returns the final text and the runs it made."""
        from .openai import stream_chat

        step, policy = self.extended, self.record_policy
        if isinstance(step, Refine):
            messages = [
                *create_kwargs["messages"],
                {"role": "assistant", "content": first.text},
                {"role": "user", "content": step.instruction},
            ]
            kwargs = {**create_kwargs, "messages": messages}
            if step.max_tokens is not None:
                kwargs["max_tokens"] = step.max_tokens
            second = stream_chat(client, policy=policy, **kwargs)
            return second.text, [second]
        if isinstance(step, BiggerBudget):
            budget = int(create_kwargs.get("max_tokens") or 256)
            kwargs = {**create_kwargs, "max_tokens": max(budget + 1, int(budget * step.factor))}
            second = stream_chat(client, policy=policy, **kwargs)
            return second.text, [second]
        runs, texts, entropies = [], [first.text], [entropy]
        for index in range(max(step.samples - 1, 1)):
            kwargs = {**create_kwargs, "temperature": step.temperature}
            if "seed" in kwargs:
                kwargs["seed"] = int(kwargs["seed"]) + index + 1
            run = stream_chat(client, policy=policy, **kwargs)
            runs.append(run)
            texts.append(run.text)
            entropies.append(sequence_entropy(run.tokens, k=policy.top_k))
        winner = weighted_vote([step.extract(t) for t in texts], entropies)
        for text in texts:
            if step.extract(text) == winner:
                return text, runs
        return winner, runs


def entropy_gate(
    client: Any, *, tau: float | Calibration, extended: ExtendedStep | None = None, **create_kwargs: Any
) -> GateResult:
    """One-shot form of ``EntropyGate(tau, extended).run(client, **create_kwargs)``."""
    return EntropyGate(tau, extended).run(client, **create_kwargs)
