"""PNG plots of a benchmark run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .replay import RuleSummary, Trace
from .rules import PolicyRule


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def savings_vs_accuracy(rows: Sequence[RuleSummary], path: Path) -> Path:
    """Saved % of tokens against accuracy, one series per rule family."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    families: dict[tuple[str, bool], list[RuleSummary]] = defaultdict(list)
    for row in rows:
        families[(row.family, row.forced)].append(row)
    for (family, forced), items in families.items():
        items = sorted(items, key=lambda r: r.saved_pct)
        versus = row_versus(items[0])
        label = f"{family}{' (answer forced, live)' if forced else ''}{versus}"
        style = "*" if forced else "o-"
        xs, ys = [r.saved_pct for r in items], [100 * r.accuracy for r in items]
        ax.plot(xs, ys, style, label=label, alpha=0.8, markersize=11 if forced else 5)
    baseline = [r.baseline_accuracy for r in rows if r.extra.get("versus", "no exit") == "no exit"]
    if baseline:
        ax.axhline(100 * baseline[0], color="grey", linestyle="--", label="no exit")
    ax.set_xlabel("tokens saved (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("savings vs accuracy per rule")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def row_versus(row: RuleSummary) -> str:
    """Legend suffix for rows whose savings are not against the no-exit baseline."""
    versus = row.extra.get("versus", "no exit")
    return "" if versus == "no exit" else f" [vs {versus}]"


def entropy_distributions(traces: Sequence[Trace], path: Path, tau: float | None = None) -> Path:
    """Histograms of sequence entropy for correct and incorrect answers."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, correct in (("correct", True), ("incorrect", False)):
        values = [t.entropy for t in traces if t.correct is correct and t.entropy is not None]
        if values:
            ax.hist(
                values, bins=min(20, max(5, len(values) // 2)), alpha=0.55, label=f"{label} (n={len(values)})"
            )
    if tau is not None:
        ax.axvline(tau, color="black", linestyle="--", label=f"tau = {tau:.3f}")
    ax.set_xlabel("sequence entropy (bits, mean over tokens)")
    ax.set_ylabel("answers")
    ax.set_title("entropy of correct vs incorrect answers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def trajectories(traces: Sequence[Trace], rule: PolicyRule, path: Path, count: int = 4) -> Path:
    """Token entropy (and the rule's aggregate) of a few traces, the exit point marked."""
    plt = _pyplot()
    chosen = list(traces[:count])
    fig, axes = plt.subplots(len(chosen) or 1, 1, figsize=(8, 2.2 * max(len(chosen), 1)), squeeze=False)
    from entropy_exit_integrations.core.entropy import token_entropies

    for ax, trace in zip(axes[:, 0], chosen):
        k = max((len(t.top_logprobs) for t in trace.tokens), default=1)
        table = np.full((len(trace.tokens), max(k, 1)), -np.inf)
        for row, token in enumerate(trace.tokens):
            table[row, : len(token.top_logprobs)] = token.top_logprobs
        ax.plot(token_entropies(table), lw=0.8, alpha=0.6, label="token entropy")
        aggregate = [np.nan if v is None else v for v in rule.exit_trace(trace.tokens)]
        ax.plot(aggregate, lw=1.5, label=f"{rule.policy.aggregation} aggregate")
        ax.axhline(rule.policy.threshold, color="grey", linestyle=":", label="threshold")
        index = rule.exit_index(trace.tokens)
        if index is not None:
            ax.axvline(index, color="red", label=f"exit @ {index}")
        ax.set_title(f"{trace.problem_id} ({'correct' if trace.correct else 'wrong'})", fontsize=9)
        ax.set_ylabel("bits")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("token")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def savings_vs_accuracy_ci(rows: Sequence[RuleSummary], path: Path, *, title: str = "") -> Path:
    """Saved % of tokens (probe and forced-answer tokens included) against accuracy with its 95%
    Wilson interval, one marker per row, one colour per family; the no-exit accuracy and its
    interval as a band, and "no exit - 1 point" as a dotted line."""
    from .report import wilson

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    families: dict[str, list[RuleSummary]] = defaultdict(list)
    for row in rows:
        families[row.family].append(row)
    markers = iter("osD^v<>phX*")
    for family, items in families.items():
        if family == "baseline":
            continue
        xs = [r.saved_pct for r in items]
        ys = [100 * r.accuracy for r in items]
        bounds = [wilson(round(r.accuracy * r.n), r.n) for r in items]
        err = [
            [y - 100 * lo for y, (lo, _) in zip(ys, bounds)],
            [100 * hi - y for y, (_, hi) in zip(ys, bounds)],
        ]
        new = "(new)" in family
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            fmt=next(markers, "o"),
            label=family,
            capsize=3,
            markersize=9 if new else 6,
            alpha=0.9 if new else 0.7,
        )
    base = next((r for r in rows if r.family == "baseline"), None)
    if base is not None:
        lo, hi = wilson(round(base.accuracy * base.n), base.n)
        ax.axhspan(100 * lo, 100 * hi, color="grey", alpha=0.12, label="no exit, 95% CI")
        ax.axhline(100 * base.accuracy, color="grey", linestyle="--", label="no exit")
        ax.axhline(100 * base.accuracy - 1, color="grey", linestyle=":", label="no exit - 1 point")
    ax.axvline(25, color="red", linestyle=":", alpha=0.5, label="25% saved")
    ax.set_xlabel("tokens saved vs no exit (%) - probes and forced answers included")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "savings vs accuracy per rule (95% Wilson intervals)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
