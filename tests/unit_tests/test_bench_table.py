"""`entropy-exit bench --table` without a model: bad input is one line with exit code 2 before any
request; an offline rebuild from traces and a complete cache asks nothing; truncation notes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entropy_exit_integrations.lab.bench import commands
from entropy_exit_integrations.lab.bench.replay import Outcome, load_traces, summarise
from entropy_exit_integrations.lab.bench.report import truncation_notes
from entropy_exit_integrations.lab.cli import main

RECORDED = Path(__file__).resolve().parent.parent / "data" / "traces" / "smollm2_arithmetic_12.jsonl"


@pytest.fixture(autouse=True)
def no_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "connect", lambda *a, **k: pytest.fail("must fail before any request"))


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return code, lines[0]


def test_offline_needs_traces(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, line = run(["bench", "--table", "--offline", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--offline needs --traces" in line


def test_bad_budgets(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = ["bench", "--table", "--traces", str(RECORDED), "--budgets", "8,x", "--out", str(tmp_path)]
    code, line = run(args, capsys)
    assert code == 2 and "--budgets 8,x" in line


def test_missing_seq_profile(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = ["bench", "--table", "--traces", str(RECORDED), "--seq-profile", str(tmp_path / "nope.json")]
    code, line = run([*args, "--out", str(tmp_path)], capsys)
    assert code == 2 and "--seq-profile" in line and "nope.json" in line


def test_offline_with_missing_answers_names_the_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["bench", "--table", "--offline", "--traces", str(RECORDED), "--length-quantiles", "none"]
    args += ["--forced-cache", str(tmp_path / "empty.json"), "--out", str(tmp_path / "out")]
    code, line = run(args, capsys)
    assert code == 2 and "--base-url" in line and "--forced-cache" in line
    assert "Traceback" not in line


def test_truncation_note_only_for_gains_on_truncated_runs() -> None:
    traces = load_traces(RECORDED)[:2]
    for trace, reason in zip(traces, ("length", "stop")):
        trace.finish_reason = reason
        trace.correct = False
    gained = [Outcome(t.problem_id, True, 3, 4, True, False, False, "7", 2, False) for t in traces[:1]] + [
        Outcome(traces[1].problem_id, False, None, len(traces[1].tokens), False, False, True)
    ]
    row = summarise("budget cut 4", "budget cut", gained, traces, forced=True)
    assert row.extra["gained_from_truncated"] == 1 and row.truncation_note
    assert row.verdict == "gains by forcing truncated answers"
    assert truncation_notes([row]) and "budget cut 4" in truncation_notes([row])[0]
    json.dumps(row.extra)
    plain = summarise("no exit", "baseline", [gained[1]], traces[1:])
    assert plain.truncation_note is None and truncation_notes([plain]) == []


class _Answer:
    def __init__(self, content: str) -> None:
        from types import SimpleNamespace

        self.choices = [SimpleNamespace(message=SimpleNamespace(content=content))]
        self.usage = SimpleNamespace(completion_tokens=3)


class _Client:
    """Answers every forcing request with the question's reference answer, and counts them."""

    base_url = "http://stub/v1"

    def __init__(self, references: dict[str, str]) -> None:
        from types import SimpleNamespace

        self.references = references
        self.asked = 0
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, **kwargs: object) -> _Answer:
        self.asked += 1
        question = next(m["content"] for m in kwargs["messages"] if m["role"] == "user")  # type: ignore[index,union-attr]
        return _Answer(f" {self.references[question]}")


def test_headroom_upper_bound_is_labelled_and_not_below_the_grid(tmp_path: Path) -> None:
    from entropy_exit_integrations.lab.bench.probes import (
        ProbeAnswers,
        headroom,
        headroom_bound,
        headroom_text,
    )
    from entropy_exit_integrations.lab.bench.runner import RunConfig
    from entropy_exit_integrations.lab.bench.table import _ask_headroom
    from entropy_exit_integrations.lab.bench.traces import ForcedCache

    traces = [t for t in load_traces(RECORDED) if len(t.tokens) > 12][:4]
    for t in traces:
        t.correct = True
    client = _Client({t.question: t.reference for t in traces})
    config = RunConfig(model="stub", concurrency=1, progress=False)
    answers = ProbeAnswers(ForcedCache(tmp_path / "c.json"), client=client, config=config)
    grid = headroom(traces, answers, every=8)
    _ask_headroom(traces, answers, 2, config, lambda _: None)
    bound = headroom_bound(traces, answers)
    assert client.asked > 0 and bound["right"] == len(traces)
    assert bound["max_saving_on_right_pct"] >= grid["max_saving_on_right_pct"] > 0
    text = headroom_text(grid, bound)
    assert "upper bound, probe cost not charged" in text and "probe grid, probe cost charged" in text
    asked = client.asked
    _ask_headroom(traces, answers, 2, config, lambda _: None)  # all cached: nothing asked again
    assert client.asked == asked
