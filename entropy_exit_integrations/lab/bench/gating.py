"""The paper's gate in the benchmark: the extended step run once per question, gates replayed.

The first pass is the recorded baseline trace. The extended step (``EntropyGate.extend``) runs once
for every question, so the gate at any tau, and "always extend", are computed without more calls:
a question whose first-pass entropy is ``<= tau`` keeps its first answer; the others take the
extended answer and pay for both rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from entropy_exit_integrations.gate import EntropyGate

from .datasets import Problem
from .graders import grade
from .replay import RuleSummary, Trace
from .runner import RunConfig, run_all


@dataclass(frozen=True)
class Extended:
    """The extended step's answer and cost for one question."""

    text: str
    tokens: int
    correct: bool
    wall_time_s: float


def run_extended(
    client: Any, problems: Sequence[Problem], traces: Sequence[Trace], gate: EntropyGate, config: RunConfig
) -> list[Extended]:
    """Run the gate's extended step after every recorded first pass."""
    import time

    def work(pair: tuple[Problem, Trace]) -> Extended:
        problem, trace = pair
        started = time.perf_counter()
        first = _FirstPass(trace)
        messages = {"messages": trace.messages} if trace.messages else {}
        text, runs = gate.extend(client, first, trace.entropy, config.create_kwargs(problem, **messages))
        spent = sum(int(r.report.tokens_generated) for r in runs)
        return Extended(text, spent, grade(problem.kind, text, problem.answer), time.perf_counter() - started)

    return run_all(list(zip(problems, traces)), work, config, "extended step")


class _FirstPass:
    """The bits of an ExitResult the extended step reads, from a recorded trace."""

    def __init__(self, trace: Trace) -> None:
        self.text = trace.text
        self.tokens = trace.tokens


def gate_summary(
    name: str, tau: float | None, traces: Sequence[Trace], extended: Sequence[Extended]
) -> RuleSummary:
    """The gate at ``tau`` (None: always extend) against always running the extended step."""
    always_tokens = sum(len(t.tokens) + e.tokens for t, e in zip(traces, extended))
    always_correct = [e.correct for e in extended]
    used = 0
    correct: list[bool] = []
    kept = 0
    passed = 0
    wall = 0.0
    for trace, ext in zip(traces, extended):
        entropy = trace.entropy
        gate_passes = tau is not None and entropy is not None and entropy <= tau
        passed += gate_passes
        cost = len(trace.tokens) + (0 if gate_passes else ext.tokens)
        outcome = trace.correct if gate_passes else ext.correct
        used += cost
        correct.append(outcome)
        wall += trace.wall_time_s + (0.0 if gate_passes else ext.wall_time_s)
        if outcome or not ext.correct:
            kept += len(trace.tokens) + ext.tokens - cost
    n = max(len(traces), 1)
    return RuleSummary(
        rule=name,
        family="gate (paper)" if tau is not None else "always extend",
        n=len(traces),
        accuracy=sum(correct) / n,
        baseline_accuracy=sum(always_correct) / n,
        tokens=used,
        baseline_tokens=always_tokens,
        saved_pct=100.0 * (always_tokens - used) / always_tokens if always_tokens else 0.0,
        saved_kept_pct=100.0 * kept / always_tokens if always_tokens else 0.0,
        exits=passed,
        exits_before_answer=0,
        recovered_by_forcing=None,
        answers_lost=sum(a and not c for a, c in zip(always_correct, correct)),
        answers_gained=sum(c and not a for a, c in zip(always_correct, correct)),
        wall_time_s=wall,
        threshold=tau,
        extra={"versus": "always extended", "wall_measured": True},
    )
