"""results.json and the Markdown table of a benchmark run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .replay import RuleSummary


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


NOTES = (
    "Entropies are renormalised top-k estimates (k = 20 candidates per token), a truncated view of "
    "the model's distribution. Greedy decoding: replayed rules stop on the same tokens a live run "
    'would; "forced" rows ran one short live request per exit to ask for the answer. "saved" counts '
    'every token not generated; "saved (kept)" only tokens saved on questions whose answer did not '
    "get worse, so a rule cannot look good by losing answers. Gate rows compare with always running "
    'the extended step. "wall s" sums request times (requests overlap with --concurrency); "est" '
    "rows scale the recorded trace's time by the tokens used."
)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}%"


def markdown_table(
    rows: Sequence[RuleSummary], *, title: str = "", meta: dict[str, Any] | None = None
) -> str:
    """One line per rule: accuracy, tokens, saved %, exits and what they cost, wall time."""
    lines = [f"# {title or 'entropy-exit benchmark'}", ""]
    for key, value in (meta or {}).items():
        lines.append(f"- {key}: {value}")
    if meta:
        lines.append("")
    head = (
        "rule",
        "family",
        "versus",
        "tau/param",
        "accuracy",
        "baseline acc",
        "tokens",
        "saved",
        "saved (kept)",
        "exits",
        "exits before answer",
        "recovered by forcing",
        "answers lost",
        "wall s",
        "verdict",
    )
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        wall = (
            ""
            if r.wall_time_s is None
            else f"{r.wall_time_s:.1f}{'' if r.extra.get('wall_measured') else ' est'}"
        )
        cells = (
            r.rule,
            r.family,
            r.extra.get("versus", "no exit"),
            "" if r.threshold is None else f"{r.threshold:.3g}",
            f"{r.accuracy:.1%}",
            f"{r.baseline_accuracy:.1%}",
            str(r.tokens),
            _pct(r.saved_pct),
            _pct(r.saved_kept_pct),
            str(r.exits),
            str(r.exits_before_answer),
            "" if r.recovered_by_forcing is None else str(r.recovered_by_forcing),
            f"{r.answers_lost} (+{r.answers_gained} gained)",
            wall,
            r.verdict,
        )
        lines.append("| " + " | ".join(cells) + " |")
    notes = truncation_notes(rows)
    if notes:
        lines += ["", *notes]
    lines += ["", NOTES, ""]
    return "\n".join(lines)


def truncation_notes(rows: Sequence[RuleSummary]) -> list[str]:
    """One line per row whose gain over no exit comes from forcing answers the budget truncated."""
    return [f"- note: *{r.rule}*: {r.truncation_note}" for r in rows if r.truncation_note]


def summary_dict(row: RuleSummary) -> dict[str, Any]:
    data = asdict(row)
    data["verdict"] = row.verdict
    data["truncation_note"] = row.truncation_note
    return data


def write_results(
    out_dir: str | Path,
    rows: Sequence[RuleSummary],
    *,
    meta: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "rules": [summary_dict(r) for r in rows], **(extra or {})}
    json_path = out / "results.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path = out / "results.md"
    md_path.write_text(markdown_table(rows, meta=meta))
    return json_path, md_path
