"""Recorded traces and the offline replay of exit rules over them.

A ``Trace`` is one full greedy generation (never cut) with every token's top-k logprobs. Under
greedy decoding a live run with an exit rule produces the same tokens up to its exit, so replaying
the rule over the trace gives its exit point and its prefix for free: many thresholds are compared
at no extra model cost. What replay cannot know is what a forced answer would say; that needs one
short live request per exit (``runner.force_answers``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from entropy_exit_integrations.core.calibration import sequence_entropy
from entropy_exit_integrations.core.tokens import Phase, TokenLogprob
from entropy_exit_integrations.errors import EntropyExitError
from entropy_exit_integrations.traces import TRACE_SCHEMA, TRACE_VERSION, token_to_json

from .files import json_lines, open_for_writing
from .graders import extract_math_answer, grade, last_number
from .rules import Rule


def token_from_json(row: Sequence[Any]) -> TokenLogprob:
    if not isinstance(row, (list, tuple)) or len(row) not in (4, 5):
        raise ValueError(f"a token is [text, logprob, [top tokens], [top logprobs], phase], got {row!r}")
    if len(row[2]) != len(row[3]):
        raise ValueError(f"top tokens and top logprobs differ in length: {row!r}")
    phase = Phase(row[4]) if len(row) == 5 else Phase.ANSWER
    logprob = None if row[1] is None else float(row[1])
    return TokenLogprob(str(row[0]), logprob, tuple(row[2]), tuple(float(v) for v in row[3]), phase)


@dataclass
class Trace:
    """One recorded generation of one problem (one line of a trace file).

    ``forced`` holds answers forced after an exit, keyed by the number of tokens kept (the
    exit's token index + 1): ``{"answer": text, "tokens": n, "cue": cue}``.

    ``server_tokens`` is the server's own count of the tokens it generated (its usage block),
    None when it sent none. It can exceed ``len(tokens)``: llama.cpp streams no logprobs for a
    token that ends inside a UTF-8 character (its text arrives with the next token's).
    """

    problem_id: str
    question: str
    reference: str
    kind: str
    text: str
    finish_reason: str
    tokens: list[TokenLogprob]
    correct: bool
    wall_time_s: float
    reasoning: str = ""
    model: str | None = None
    k: int | None = None
    max_tokens: int | None = None
    messages: list[dict[str, Any]] | None = None
    forced: dict[str, dict[str, Any]] = field(default_factory=dict)
    server_tokens: int | None = None

    @functools.cached_property
    def entropy(self) -> float | None:
        """Sequence entropy (mean over watched tokens, bits), by the live monitor."""
        return sequence_entropy(self.tokens)

    def prefix(self, exit_index: int) -> str:
        """Text generated up to and including token ``exit_index``."""
        return "".join(t.token for t in self.tokens[: exit_index + 1])

    def split_prefix(self, exit_index: int) -> tuple[str, str]:
        """(reasoning, answer) text generated up to and including token ``exit_index``."""
        kept = self.tokens[: exit_index + 1]
        reasoning = "".join(t.token for t in kept if t.phase is Phase.REASONING)
        return reasoning, "".join(t.token for t in kept if t.phase is not Phase.REASONING)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema": TRACE_SCHEMA, "version": TRACE_VERSION}
        data.update({f.name: getattr(self, f.name) for f in fields(self)})
        data["tokens"] = [token_to_json(t) for t in self.tokens]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trace:
        """A trace from one JSON row: schema version 1, or the unversioned rows of older files."""
        values = dict(data)
        schema, version = values.pop("schema", TRACE_SCHEMA), values.pop("version", 0)
        if schema != TRACE_SCHEMA or not isinstance(version, int) or version > TRACE_VERSION:
            raise ValueError(
                f"not a trace this version reads: schema {schema!r} version {version!r} "
                f"(this package reads {TRACE_SCHEMA!r} up to version {TRACE_VERSION})"
            )
        missing = [name for name in ("problem_id", "tokens", "text", "correct") if name not in values]
        if missing:
            raise ValueError(f"missing required fields {missing}")
        known = {f.name for f in fields(cls)}
        for name in set(values) - known:  # fields of a newer writer, or the user's own: ignored
            del values[name]
        if not isinstance(values["correct"], bool):
            raise ValueError(
                f"correct must be true or false (a JSON boolean), got {values['correct']!r}; "
                "grade the answer and write true or false"
            )
        values.setdefault("question", "")
        values.setdefault("reference", "")
        values.setdefault("kind", "numeric")
        values.setdefault("finish_reason", "stop")
        values.setdefault("wall_time_s", 0.0)
        values["tokens"] = [token_from_json(row) for row in values["tokens"]]
        values["forced"] = {str(n): dict(entry) for n, entry in (values.get("forced") or {}).items()}
        return cls(**values)


def save_traces(traces: Iterable[Trace], path: str | Path) -> Path:
    """Write traces as JSONL (schema ``entropy-exit-trace``, version 1; gzip when the name ends in
    ``.gz``); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open_for_writing(target) as handle:
        for trace in traces:
            handle.write(json.dumps(trace.to_json()) + "\n")
    return target


def load_traces(path: str | Path) -> list[Trace]:
    """Read a trace file (plain or gzip); a malformed line raises ``EntropyExitError`` naming it."""
    traces = []
    for number, row in json_lines(path):
        try:
            if not isinstance(row, dict):
                raise ValueError("a trace must be a JSON object")
            traces.append(Trace.from_json(row))
        except (ValueError, TypeError, KeyError) as error:
            raise EntropyExitError(f"{path}:{number}: {error}") from error
    return traces


def answer_of(kind: str, text: str) -> str | None:
    """The answer a grader would read from the text (for "was the answer complete at the exit")."""
    answer = extract_math_answer(text)
    return last_number(answer or "") if kind == "numeric" and answer else answer


@dataclass
class Outcome:
    """One rule on one trace."""

    problem_id: str
    exited: bool
    exit_index: int | None
    tokens_used: int
    correct: bool
    baseline_correct: bool
    answer_complete: bool
    """The prefix already held the full run's final answer (no forcing needed)."""
    forced_answer: str | None = None
    forced_tokens: int = 0
    recovered: bool | None = None
    """Forcing ran and the outcome matches the full run's (None: no forcing)."""


def outcome_at(trace: Trace, index: int | None) -> Outcome:
    """The outcome of stopping ``trace`` after token ``index`` (None: never stopped), unforced."""
    if index is None or index >= len(trace.tokens) - 1:
        return Outcome(trace.problem_id, False, None, len(trace.tokens), trace.correct, trace.correct, True)
    prefix = trace.prefix(index)
    complete = answer_of(trace.kind, prefix) == answer_of(trace.kind, trace.text)
    return Outcome(
        trace.problem_id,
        True,
        index,
        index + 1,
        grade(trace.kind, prefix, trace.reference),
        trace.correct,
        complete,
    )


def replay_rule(rule: Rule, trace: Trace) -> Outcome:
    """Where the rule stops on this trace, and the prefix's graded answer (no forcing)."""
    return outcome_at(trace, rule.exit_index(trace.tokens))


@dataclass
class RuleSummary:
    """Accuracy and tokens of one rule over every trace, with the honest accounting of savings."""

    rule: str
    family: str
    n: int
    accuracy: float
    baseline_accuracy: float
    tokens: int
    baseline_tokens: int
    saved_pct: float
    saved_kept_pct: float
    """Tokens saved only on questions whose graded outcome did not get worse, in % of baseline."""
    exits: int
    exits_before_answer: int
    recovered_by_forcing: int | None
    answers_lost: int
    answers_gained: int
    forced: bool = False
    wall_time_s: float | None = None
    threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def truncation_note(self) -> str | None:
        """Set when the row's gain over no exit comes from forcing answers that the token budget
        had truncated (the full run hit ``max_tokens`` before answering), not from the signal."""
        truncated = int(self.extra.get("gained_from_truncated", 0))
        net = self.answers_gained - self.answers_lost
        if net <= 0 or truncated == 0 or 2 * truncated < self.answers_gained:
            return None
        return (
            f"{truncated} of its {self.answers_gained} gained answers were forced on questions whose full "
            "run the token budget truncated: the gain is the forced answer, not the exit signal"
        )

    @property
    def verdict(self) -> str:
        if self.truncation_note is not None:
            return "gains by forcing truncated answers"
        if self.answers_lost > self.answers_gained and self.saved_pct > 0:
            return f"saves {self.saved_pct:.0f}% by losing {self.answers_lost - self.answers_gained} answers"
        return "keeps accuracy" if self.accuracy >= self.baseline_accuracy else "loses accuracy"


def summarise(
    rule: str,
    family: str,
    outcomes: Sequence[Outcome],
    baseline: Sequence[Trace],
    *,
    forced: bool = False,
    wall_time_s: float | None = None,
    threshold: float | None = None,
) -> RuleSummary:
    """Aggregate per-question outcomes against the baseline (no-exit) traces."""
    base_tokens = sum(len(t.tokens) for t in baseline)
    used = sum(o.tokens_used + o.forced_tokens for o in outcomes)
    kept = sum(
        len(t.tokens) - (o.tokens_used + o.forced_tokens)
        for o, t in zip(outcomes, baseline)
        if o.correct or not o.baseline_correct
    )
    exits = [o for o in outcomes if o.exited]
    n = max(len(outcomes), 1)
    truncated = sum(
        o.exit_index is not None and o.correct and not o.baseline_correct and t.finish_reason == "length"
        for o, t in zip(outcomes, baseline)
    )
    return RuleSummary(
        rule=rule,
        family=family,
        n=len(outcomes),
        accuracy=sum(o.correct for o in outcomes) / n,
        baseline_accuracy=sum(t.correct for t in baseline) / max(len(baseline), 1),
        tokens=used,
        baseline_tokens=base_tokens,
        saved_pct=100.0 * (base_tokens - used) / base_tokens if base_tokens else 0.0,
        saved_kept_pct=100.0 * kept / base_tokens if base_tokens else 0.0,
        exits=len(exits),
        exits_before_answer=sum(not o.answer_complete for o in exits),
        recovered_by_forcing=sum(bool(o.recovered) for o in exits if not o.answer_complete)
        if forced
        else None,
        answers_lost=sum(o.baseline_correct and not o.correct for o in outcomes),
        answers_gained=sum(o.correct and not o.baseline_correct for o in outcomes),
        forced=forced,
        wall_time_s=wall_time_s,
        threshold=threshold,
        extra={"gained_from_truncated": truncated} if truncated else {},
    )
