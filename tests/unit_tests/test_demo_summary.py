"""The demo's last line and plot data, from made-up rows (no server)."""

from __future__ import annotations

from typing import Any

from entropy_exit_integrations.core.policy import ExitPolicy
from entropy_exit_integrations.lab.bench.datasets import Problem
from entropy_exit_integrations.lab.demo import DemoRow, summary_line


def row(answer: str, baseline: str, exit_text: str, base: int, used: int, exited: bool) -> DemoRow:
    tokens: list[list[Any]] = [["x", -0.1, ["x", "y"], [-0.1, -2.4], "answer"]] * (used - 1)
    report = {
        "exited": exited,
        "exit_token_index": used - 2 if exited else None,
        "tokens_generated": used,
        "forced_answer_tokens": 1 if exited else 0,
        "aggregate_entropy": 0.5,
    }
    return DemoRow(Problem("p", "q?", answer, "numeric"), baseline, base, exit_text, report, tokens)


def test_last_line_gives_n_intervals_and_where_the_savings_came_from() -> None:
    rows = [
        row("7", "The answer is 7.", "The answer is 7.", 60, 30, True),  # right, kept right
        row("8", "The answer is 3.", "The answer is 3.", 64, 20, True),  # already wrong
        row("9", "The answer is 9.", "The answer is 9.", 50, 50, False),
    ]
    line = summary_line(rows)
    assert line.startswith("n=3: accuracy no exit 2/3 (95% CI 21%-94%), with exit 2/3 (95% CI 21%-94%)")
    assert "tokens 174 -> 100 (forced answers included), saved 74 = 42.5%" in line
    assert "exits 2/3: 1 on answers the no-exit run got right (1 kept right, 30 tokens saved)" in line
    assert "1 on answers already wrong (0 made right, 44 tokens saved)" in line
    assert "n=3 shows the mechanism, it does not measure a saving" in line and "\n" not in line


def test_all_exits_on_wrong_answers_are_called_out() -> None:
    line = summary_line([row("8", "The answer is 3.", "The answer is 3.", 64, 20, True)])
    assert "0 on answers the no-exit run got right" in line
    assert "no exit was tested on a right answer" in line


def test_curve_is_indexed_by_the_traces_own_tokens() -> None:
    demo_row = row("7", "The answer is 7.", "The answer is 7.", 60, 30, True)
    curve = demo_row.curve(ExitPolicy(threshold=1.0, aggregation="mean"))
    assert len(curve) == len(demo_row.exit_tokens) == 29  # one point per monitored token
    assert all(value is not None and value > 0 for value in curve)
