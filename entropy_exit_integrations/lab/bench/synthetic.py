"""Synthetic traces: for timing the offline commands and for tests, never for claims about models.

Each trace answers "What is a + b?" in a few hundred tokens: uncertain reasoning whose entropy
drifts down, now and then a calm stretch before the answer (where an entropy exit would cut too
early), then "The answer is N." and some trailing text. About ``accuracy`` of the runs are right.
Every token carries 20 candidates, so entropies are real renormalised top-20 entropies.
"""

from __future__ import annotations

import math
import random

from entropy_exit_integrations.core.tokens import TokenLogprob

from .datasets import Problem, messages_for
from .replay import Trace

__all__ = ["synthetic_traces"]


def _token(text: str, top: float, rng: random.Random, k: int = 20) -> TokenLogprob:
    """A token whose top candidate has probability ``top``, the rest decaying geometrically."""
    decay = rng.uniform(0.5, 0.8)
    weights = [decay**j for j in range(k - 1)]
    total = sum(weights)
    rest = [(1.0 - top) * w / total for w in weights]
    logprobs = [math.log(top)] + [math.log(max(p, 1e-12)) for p in rest]
    names = [text] + [f" c{j}" for j in range(k - 1)]
    return TokenLogprob(text, logprobs[0], tuple(names), tuple(logprobs))


def synthetic_traces(
    n: int = 60, *, length: int = 300, accuracy: float = 0.7, seed: int = 0, model: str = "synthetic"
) -> list[Trace]:
    """``n`` synthetic traces of about ``length`` tokens (see the module docstring)."""
    rng = random.Random(seed)
    traces = []
    for index in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        reference = a + b
        right = rng.random() < accuracy
        given = reference if right else reference + rng.choice([-10, -1, 1, 2, 10])
        size = max(40, int(rng.gauss(length, length * 0.15)))
        answer_at = int(size * rng.uniform(0.6, 0.85))
        calm_at = int(answer_at * rng.uniform(0.2, 0.6)) if rng.random() < 0.25 else None
        start = rng.uniform(0.35, 0.6) if right else rng.uniform(0.3, 0.5)
        tokens = []
        for position in range(answer_at):
            drift = start + (0.97 - start) * position / answer_at
            top = min(0.995, max(0.05, rng.gauss(drift, 0.08)))
            if calm_at is not None and calm_at <= position < calm_at + 24:
                top = rng.uniform(0.985, 0.999)
            text = f" {rng.randint(1, 99)}" if rng.random() < 0.1 else " step"
            tokens.append(_token(text, top, rng))
        answer = [" The", " answer", " is", f" {given}", "."]
        tokens += [_token(t, rng.uniform(0.97, 0.999), rng) for t in answer]
        tokens += [_token(" ok", rng.uniform(0.9, 0.9995), rng) for _ in range(size - len(tokens))]
        text = "".join(t.token for t in tokens)
        question = f"What is {a} + {b}?"

        problem = Problem(f"synthetic-{seed}-{index}", question, str(reference), "numeric")
        traces.append(
            Trace(
                problem.id,
                question,
                str(reference),
                "numeric",
                text,
                "stop",
                tokens,
                right,
                0.0,
                model=model,
                k=20,
                max_tokens=int(length * 1.5),
                messages=messages_for(problem),
            )
        )
    return traces
