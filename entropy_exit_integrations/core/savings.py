"""What an exit saved: one report per generation, a ledger over many."""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ..errors import AuditBoundExceeded, EntropyExitWarning, PolicyError
from .audit import AuditSummary
from .calibration import clopper_pearson_upper
from .monitor import EntropyMonitor

Ended = Literal["server_done", "we_closed", "broken"]
"""How a generation's stream ended: the server finished it, this package closed it, or it broke."""
UsageSource = Literal["server", "client"]

TRACE_POINTS = 64
"""Entropy trace points kept in a report (the full trace is downsampled to this many)."""


@dataclass(frozen=True)
class EntropySummary:
    """Per-token entropy statistics of one generation (bits; unknown tokens excluded)."""

    known_tokens: int
    mean: float | None
    minimum: float | None
    maximum: float | None
    trace: tuple[float | None, ...]
    """Downsampled trace: mean entropy of consecutive blocks of tokens, None for all-unknown."""

    @classmethod
    def from_trace(cls, trace: Iterable[float], points: int = TRACE_POINTS) -> EntropySummary:
        values = list(trace)
        known = [v for v in values if not math.isnan(v)]
        blocks: list[float | None] = []
        if values:
            size = max(1, math.ceil(len(values) / points))
            for start in range(0, len(values), size):
                block = [v for v in values[start : start + size] if not math.isnan(v)]
                blocks.append(round(sum(block) / len(block), 4) if block else None)
        return cls(
            known_tokens=len(known),
            mean=sum(known) / len(known) if known else None,
            minimum=min(known) if known else None,
            maximum=max(known) if known else None,
            trace=tuple(blocks),
        )


@dataclass(frozen=True)
class SavingsReport:
    """What one generation cost and what the exit saved.

    ``exited`` is a fact, not an opinion: True only when this package closed the stream before
    the model finished (``ended == "we_closed"``). A stop the policy wanted but deferred (a tool
    call, a number) that the stream outran is ``exited=False`` with the server's finish reason;
    ``decision_token_index`` still says where the policy said "confident".

    ``tokens_saved_vs_budget`` is an upper bound: it assumes the model would have used its whole
    ``max_tokens`` budget. ``tokens_saved_vs_expected`` uses the typical length measured at
    calibration and is the better estimate when known. Both are net of the tokens spent forcing
    the final answer, and both are 0 when no exit happened. ``usage_source`` says whether the
    token counts are the server's (its usage block) or counted here from the logprob entries
    (a cut stream gets no usage block unless the server streams one in every chunk, as vLLM
    does with ``continuous_usage_stats``); ``prompt_tokens_estimated`` marks a client-side estimate.
    Entropies are top-k estimates (``k`` candidates per token, ``estimator`` says which): a
    truncated view of the model's distribution.

    An audited call (``AuditRule``) is never an exit and saves nothing: ``audited`` is True,
    ``audit_exit_answer`` is the answer the exit would have forced, ``audit_answer`` the full
    run's text, ``audit_harmful`` whether they differ (None when the audit's request failed), and
    ``audit_would_save`` the tokens the exit would have saved (net of its forced answer).
    """

    exited: bool
    exit_reason: str
    exit_token_index: int | None
    tokens_generated: int
    forced_answer_tokens: int
    max_tokens: int | None
    tokens_saved_vs_budget: int | None
    expected_tokens: float | None
    tokens_saved_vs_expected: float | None
    saved_fraction: float | None
    aggregate_entropy: float | None
    threshold: float
    calibrated: bool
    k: int
    estimator: str
    unknown_tokens: int
    reasoning_tokens: int
    wall_time_s: float
    entropy: EntropySummary
    model: str | None = None
    prompt_tokens: int | None = None
    prompt_tokens_estimated: bool = False
    ended: Ended = "server_done"
    finish_reason: str | None = None
    probes: int = 0
    probe_tokens: int = 0
    usage_source: UsageSource = "client"
    decision_token_index: int | None = None
    audited: bool = False
    audit_harmful: bool | None = None
    audit_exit_answer: str | None = None
    audit_answer: str | None = None
    audit_would_save: int | None = None
    audit_tokens: int = 0

    @classmethod
    def from_monitor(
        cls,
        monitor: EntropyMonitor,
        *,
        wall_time_s: float,
        ended: Ended = "server_done",
        finish_reason: str | None = None,
        max_tokens: int | None = None,
        completion_tokens: int | None = None,
        forced_answer_tokens: int = 0,
        probe_tokens: int = 0,
        probes: int = 0,
        audit_tokens: int = 0,
        usage_source: UsageSource = "client",
        model: str | None = None,
        prompt_tokens: int | None = None,
        prompt_tokens_estimated: bool = False,
    ) -> SavingsReport:
        """Build the report of a finished, cut or broken generation from its monitor.

        Args:
            ended: how the stream ended; only ``"we_closed"`` is an exit.
            finish_reason: the server's finish reason (``"stop"``, ``"length"``...), if any.
            completion_tokens: the server's count of the main stream, when it sent one;
                otherwise the tokens the monitor saw.
            forced_answer_tokens, probe_tokens, audit_tokens: what the forcing request, the
                answer probes and an audit's forced answer generated; ``tokens_generated``
                includes them, and savings are net of them.
        """
        policy = monitor.policy
        decision = monitor.decision
        exited = ended == "we_closed"
        main = monitor.tokens_seen if completion_tokens is None else completion_tokens
        generated = main + forced_answer_tokens + probe_tokens + audit_tokens
        saved_budget: int | None = None
        saved_fraction: float | None = None
        if max_tokens is not None:
            saved_budget = max(0, max_tokens - generated) if exited else 0
            saved_fraction = saved_budget / max_tokens if max_tokens else 0.0
        expected = policy.expected_tokens
        saved_expected = None
        if expected is not None:
            saved_expected = max(0.0, expected - generated) if exited else 0.0
            if max_tokens is None:
                saved_fraction = saved_expected / expected
        if exited:
            reason = "entropy_exit"
        elif ended == "broken":
            reason = "interrupted"
        else:
            reason = finish_reason or decision.reason
        return cls(
            exited=exited,
            exit_reason=reason,
            exit_token_index=monitor.tokens_seen - 1 if exited else None,
            tokens_generated=generated,
            forced_answer_tokens=forced_answer_tokens,
            max_tokens=max_tokens,
            tokens_saved_vs_budget=saved_budget,
            expected_tokens=expected,
            tokens_saved_vs_expected=saved_expected,
            saved_fraction=saved_fraction,
            # unknown tokens read as the most uncertain to the policy; with none measured (no
            # logprobs, a pass-through call) there is no entropy to report
            aggregate_entropy=decision.entropy if monitor.tokens_seen > monitor.unknown_tokens else None,
            threshold=policy.threshold,
            calibrated=policy.is_calibrated,
            k=monitor.max_k,
            estimator="tail-aware top-k" if policy.tail_aware else "renormalised top-k",
            unknown_tokens=monitor.unknown_tokens,
            reasoning_tokens=monitor.reasoning_tokens,
            wall_time_s=wall_time_s,
            entropy=EntropySummary.from_trace(monitor.trace),
            model=model,
            prompt_tokens=prompt_tokens,
            prompt_tokens_estimated=prompt_tokens_estimated,
            ended=ended,
            finish_reason=reason if exited or ended == "broken" else finish_reason,
            probes=probes,
            probe_tokens=probe_tokens,
            usage_source=usage_source,
            decision_token_index=decision.token_index if decision.should_exit else None,
            audit_tokens=audit_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what integrations put in response metadata)."""
        data = asdict(self)
        data["entropy"]["trace"] = list(self.entropy.trace)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SavingsReport:
        """The report ``to_dict`` made, from any integration's plain data; keys that are not
        report fields (the agent middleware's ``"step"``) are context, not report, and ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        summary = dict(values.pop("entropy"))
        summary["trace"] = tuple(summary["trace"])
        return cls(entropy=EntropySummary(**summary), **values)

    def __str__(self) -> str:
        head = f"exit at token {self.exit_token_index}" if self.exited else f"no exit ({self.exit_reason})"
        if not self.exited and self.decision_token_index is not None:
            head += f", confident at token {self.decision_token_index}"
        saved = (
            f", saved {self.tokens_saved_vs_budget} of {self.max_tokens} budget"
            if self.tokens_saved_vs_budget is not None
            else ""
        )
        entropy = "n/a" if self.aggregate_entropy is None else f"{self.aggregate_entropy:.3f}"
        return (
            f"{head}: {self.tokens_generated} tokens generated{saved}; "
            f"entropy {entropy} bits vs threshold {self.threshold:g}"
            f"{'' if self.calibrated else ' (uncalibrated)'}; k={self.k}, "
            f"{self.unknown_tokens} unknown"
        )


@dataclass
class SavingsLedger:
    """Collects reports from many generations; safe to share across threads and asyncio tasks.

    Args:
        reports: the recorded reports.
        risk: with sampled audits (``AuditRule``), the highest harm rate you accept; when an
            audited exit was harmful and the upper bound on the harm rate (``audit()``) passes
            it, ``on_bound_exceeded`` acts. None: never checked.
        confidence: the confidence of that bound.
        on_bound_exceeded: ``"warn"`` (an ``EntropyExitWarning``), ``"raise"``
            (``AuditBoundExceeded``, from the call that recorded the harmful audit), or a
            callable given the ``AuditSummary`` (it may, say, swap the policy for a stricter one).
    """

    reports: list[SavingsReport] = field(default_factory=list)
    risk: float | None = None
    confidence: float = 0.95
    on_bound_exceeded: str | Callable[[AuditSummary], Any] = "warn"

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        if self.risk is not None and not 0.0 < self.risk < 1.0:
            raise PolicyError(f"SavingsLedger: risk must be between 0 and 1, got {self.risk!r}")
        if not (callable(self.on_bound_exceeded) or self.on_bound_exceeded in ("warn", "raise")):
            raise PolicyError(
                f"SavingsLedger: on_bound_exceeded must be 'warn', 'raise' or a callable, "
                f"got {self.on_bound_exceeded!r}"
            )

    def record(self, report: SavingsReport) -> None:
        with self._lock:
            self.reports.append(report)
        if report.audit_harmful and self.risk is not None:
            self._check_bound()

    def audit(self, confidence: float | None = None) -> AuditSummary:
        """The audited calls, the harmful ones, the observed rate and its exact upper bound,
        with the savings measured on the exits that were not audited (``AuditSummary``)."""
        confidence = self.confidence if confidence is None else confidence
        reports = self.snapshot()
        audits = [r for r in reports if r.audited]
        judged = [r for r in audits if r.audit_harmful is not None]  # a failed audit says nothing
        harmful = sum(bool(r.audit_harmful) for r in judged)
        exits = [r for r in reports if r.exited]
        saved = sum(r.tokens_saved_vs_budget or 0 for r in exits)
        audit_tokens = sum(r.audit_tokens for r in audits)
        budgets = [r.max_tokens for r in (*exits, *audits)]
        budget = sum(b for b in budgets if b is not None) if all(b is not None for b in budgets) else 0
        net = saved - audit_tokens
        return AuditSummary(
            audited=len(judged),
            harmful=harmful,
            harm_rate=harmful / len(judged) if judged else None,
            harm_upper_bound=clopper_pearson_upper(harmful, len(judged), confidence),
            confidence=confidence,
            exits=len(exits),
            tokens_saved=saved,
            audit_tokens=audit_tokens,
            audit_would_have_saved=sum(r.audit_would_save or 0 for r in audits),
            net_tokens_saved=net,
            net_saved_fraction=net / budget if budget else None,
        )

    def _check_bound(self) -> None:
        summary = self.audit()
        assert self.risk is not None
        if summary.harm_upper_bound <= self.risk:
            return
        action = self.on_bound_exceeded
        message = f"the harm rate of exits may exceed {self.risk:.1%}: {summary}"
        if action == "raise":
            raise AuditBoundExceeded(message, summary)
        if action == "warn":
            warnings.warn(message, EntropyExitWarning, stacklevel=4)
        elif callable(action):
            action(summary)

    def snapshot(self) -> list[SavingsReport]:
        with self._lock:
            return list(self.reports)

    def __len__(self) -> int:
        with self._lock:
            return len(self.reports)

    def summary(self) -> dict[str, Any]:
        """Totals over every recorded generation."""
        reports = self.snapshot()
        budget = [r for r in reports if r.max_tokens is not None]
        expected = [r for r in reports if r.tokens_saved_vs_expected is not None]
        budget_total = sum(r.max_tokens or 0 for r in budget)
        saved_budget = sum(r.tokens_saved_vs_budget or 0 for r in budget)
        return {
            "generations": len(reports),
            "exits": sum(r.exited for r in reports),
            "tokens_generated": sum(r.tokens_generated for r in reports),
            "forced_answer_tokens": sum(r.forced_answer_tokens for r in reports),
            "probes": sum(r.probes for r in reports),
            "audited": sum(r.audited for r in reports),
            "audit_harmful": sum(bool(r.audit_harmful) for r in reports),
            "audit_tokens": sum(r.audit_tokens for r in reports),
            "probe_tokens": sum(r.probe_tokens for r in reports),
            "budget_tokens": budget_total,
            "tokens_saved_vs_budget": saved_budget,
            "saved_fraction_vs_budget": saved_budget / budget_total if budget_total else None,
            "tokens_saved_vs_expected": sum(r.tokens_saved_vs_expected or 0.0 for r in expected)
            if expected
            else None,
            "unknown_tokens": sum(r.unknown_tokens for r in reports),
            "wall_time_s": sum(r.wall_time_s for r in reports),
        }

    def __str__(self) -> str:
        s = self.summary()
        fraction = s["saved_fraction_vs_budget"]
        share = "" if fraction is None else f" ({fraction:.1%} of {s['budget_tokens']} budget)"
        return (
            f"{s['generations']} generations, {s['exits']} early exits, "
            f"{s['tokens_generated']} tokens generated, "
            f"{s['tokens_saved_vs_budget']} saved vs budget{share}"
        )
