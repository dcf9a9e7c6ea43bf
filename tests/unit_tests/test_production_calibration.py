"""`entropy-exit calibrate --traces` on a trace sink's files (label answer_changed).

The sink is written by the library itself: ``MonitoredCall`` driven over a scripted transport
(no server), audited calls, full generations and calls an exit cut. The forced answers the
calibration needs come from the traces (the audits'), else from a stub client.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from entropy_exit_integrations import AuditRule, ExitOptions, ExitPolicy, PolicyError, TraceSink
from entropy_exit_integrations.core.calibration import (
    ANSWER_CHANGED,
    Calibration,
    ExitAnswer,
    StreamExample,
    calibrate_stream,
)
from entropy_exit_integrations.driver import drive
from entropy_exit_integrations.engine import MonitoredCall, RequestSpec
from entropy_exit_integrations.lab import cli
from entropy_exit_integrations.lab.bench.answers import AnswerChangedAnswers
from entropy_exit_integrations.lab.bench.traces import read_trace_files
from entropy_exit_integrations.providers import parse_chat_chunk

SHAPE = {"aggregation": "window", "window": 4, "min_tokens": 3}


def chunk(text: str, low: float = -9.0, finish: str | None = None) -> dict[str, Any]:
    top = [{"token": text, "logprob": -0.01}, {"token": "~", "logprob": low}]
    entry = {"token": text, "logprob": -0.01, "top_logprobs": top}
    content = {"content": [entry]} if text else None
    return {
        "choices": [{"index": 0, "delta": {"content": text}, "logprobs": content, "finish_reason": finish}]
    }


def main_stream(n: int, low: float) -> list[dict[str, Any]]:
    """n confident word tokens (entropy set by ``low``), then the final answer and the end."""
    return [*(chunk(" w", low) for _ in range(n)), chunk(" 42", low), chunk("", finish="stop")]


class Scripted:
    """The main stream, then the short answer for whatever the engine asks (forcing, audit)."""

    def __init__(self, main: list[dict[str, Any]], short: str) -> None:
        self.main, self.short = main, [chunk(short), chunk("", finish="stop")]
        self.parts = parse_chat_chunk

    def open(self, spec: RequestSpec) -> Iterator[dict[str, Any]]:
        return iter(self.main if spec.role == "main" else self.short)

    def close(self, stream: Any) -> None:
        pass


def serve(sink: Any, question: str, *, low: float, audit: bool, exits: bool, short: str = " 42") -> Any:
    # threshold 0 monitors only: the call runs to its end (a full generation, no audit)
    policy = ExitPolicy(threshold=1.5 if exits else 0.0, **SHAPE)  # type: ignore[arg-type]
    options = ExitOptions(
        policy=policy, audit=AuditRule(rate=1.0) if audit else None, force_answer=True, trace_sink=sink
    )
    call = MonitoredCall(
        options, fields={"model": "m", "max_tokens": 50}, messages=[{"role": "user", "content": question}]
    )
    *_, last = drive(call, Scripted(main_stream(12, low), short))
    return last.result


@pytest.fixture
def sink_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    """24 calls through one rotating sink: 8 audited, 12 run to the end unmonitored, 4 cut."""
    path = tmp_path / "prod.jsonl"
    sink = TraceSink(path, max_bytes=12_000, backups=3)
    for i in range(24):
        low = -6.0 - (i % 5)
        if i % 6 == 5:
            serve(sink, f"q{i}", low=low, audit=False, exits=True)  # an exit cut it
        elif i % 3 == 0:
            serve(sink, f"q{i}", low=low, audit=True, exits=True)  # audited: read to the end
        else:
            serve(sink, f"q{i}", low=low, audit=False, exits=False)
    files = [path, *sorted(tmp_path.glob("prod.jsonl.*"))]
    assert len(files) > 1, "the sink was meant to rotate"
    return path, files


def stub_client(answer: str) -> Any:
    asked: list[Any] = []

    def create(**request: Any) -> Any:
        asked.append(request)
        message = SimpleNamespace(content=answer)
        return SimpleNamespace(
            choices=[SimpleNamespace(message=message)], usage=SimpleNamespace(completion_tokens=2)
        )

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)), base_url="")
    client.asked = asked
    return client


def calibrate_cli(
    monkeypatch: pytest.MonkeyPatch, client: Any, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.setattr(cli, "_maybe_connect", lambda args: contextlib.nullcontext((client, "m")))
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_sink_files_read_as_production_traces_without_the_cut_calls(sink_files) -> None:
    _, files = sink_files
    loaded = read_trace_files(files)
    assert loaded.production and len(loaded.traces) == 20
    assert loaded.skipped == {"ended we_closed": 4}
    assert "4 cut calls (ended we_closed: not full generations)" in loaded.describe_skipped()
    assert all(t.correct and t.reference == t.text for t in loaded.traces)
    assert sum(bool(t.forced) for t in loaded.traces) == 8  # the audits' forced answers


def test_cli_recalibrates_from_the_sink_and_its_rotated_files(
    sink_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, files = sink_files
    client = stub_client(" 42")  # the exit's forced answer is the run's: harmless
    profile = tmp_path / "profile.json"
    argv = ["calibrate", "--traces", *map(str, files), "--risk", "0.2", "--out", str(profile)]
    argv += ["--window", "4", "--min-tokens", "3", "--no-progress"]
    code, out, err = calibrate_cli(monkeypatch, client, argv, capsys)
    assert code == 0, err
    assert "read 20 traces (" in out and "skipped 4 cut calls (ended we_closed" in out
    assert "production traces calibrate a streaming policy: aggregation=window" in out
    assert "conservative" in out and "turns a wrong answer into a right one" in out
    assert "in the traces" in out  # the audits' forced answers were used
    cal = Calibration.load(profile)
    assert cal.label == ANSWER_CHANGED and cal.one_class and cal.usable
    assert cal.risk is not None and cal.risk.threshold is not None and cal.risk.harmful == 0
    policy = ExitPolicy.from_calibration(cal)  # no one-class refusal for this label
    assert policy.threshold == cal.tau and policy.aggregation == "window" and policy.window == 4
    assert (path.parent / "prod.forced.json").exists() or not client.asked  # forced answers cached


def test_a_changed_answer_is_harmful_and_no_threshold_qualifies(
    sink_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = sink_files
    # audits answered " 42" in the traces, but every other exit point now answers " 41"
    profile = tmp_path / "profile.json"
    argv = ["calibrate", "--traces", str(path), "--risk", "0.05", "--out", str(profile)]
    argv += ["--aggregation", "window", "--window", "4", "--min-tokens", "3", "--no-progress"]
    argv += ["--forced-cache", str(tmp_path / "cache.json")]
    code, out, err = calibrate_cli(monkeypatch, stub_client(" 41"), argv, capsys)
    assert code == 0, err
    assert "rotated file of the same sink) exists and was not given" in out
    cal = Calibration.load(profile)
    assert cal.label == ANSWER_CHANGED and not cal.usable and cal.risk is not None
    assert cal.risk.threshold is None
    with pytest.raises(PolicyError, match="found no threshold"):
        ExitPolicy.from_calibration(cal)


def test_only_cut_calls_are_refused_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cut.jsonl"
    for i in range(3):
        serve(str(path), f"q{i}", low=-8.0, audit=False, exits=True)
    argv = ["calibrate", "--traces", str(path), "--risk", "0.05", "--out", str(tmp_path / "p.json")]
    code, _, err = calibrate_cli(monkeypatch, None, argv, capsys)
    assert code == 2
    assert "holds no full generations (3 cut calls (ended we_closed: not full generations))" in err


def test_graded_one_class_files_are_still_refused_and_the_error_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "graded.jsonl"
    serve(str(path), "q", low=-8.0, audit=False, exits=False)
    row = json.loads(path.read_text())
    for key in ("label", "ended"):
        row.pop(key)
    path.write_text("".join(json.dumps({**row, "problem_id": f"p{i}"}) + "\n" for i in range(6)))
    argv = ["calibrate", "--traces", str(path), "--out", str(tmp_path / "p.json")]
    code, _, err = calibrate_cli(monkeypatch, None, argv, capsys)
    assert code == 2 and "all 6 calibration examples are correct" in err
    assert "not for the risk that an exit changes the run's own answer" in err


def test_mixed_labels_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    serve(str(path), "q", low=-8.0, audit=False, exits=False)
    row = json.loads(path.read_text())
    row.pop("label")
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    with pytest.raises(Exception, match="mix production traces"):
        read_trace_files([path])


def test_calibrate_stream_refuses_a_wrong_trace_under_answer_changed(sink_files) -> None:
    _, files = sink_files
    traces = read_trace_files(files).traces[:4]
    examples = [StreamExample(t.tokens, index != 3) for index, t in enumerate(traces)]
    policy = ExitPolicy(threshold=0.0, **SHAPE)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="correct by construction"):
        calibrate_stream(
            examples, policy, lambda pairs: {p: ExitAnswer(True) for p in pairs}, label=ANSWER_CHANGED
        )


def test_the_resolver_compares_against_the_runs_own_answer(sink_files) -> None:
    _, files = sink_files
    traces = read_trace_files(files).traces
    answers = AnswerChangedAnswers(traces)  # no client: only the traces' forced answers
    audited = next(i for i, t in enumerate(traces) if t.forced)
    kept = int(next(iter(traces[audited].forced)))
    plain = next(i for i, t in enumerate(traces) if not t.forced)
    got = answers([(audited, kept - 1), (plain, 3)])
    assert got[(audited, kept - 1)].correct is True and got[(plain, 3)].correct is None
    assert answers.counts["in the traces"] == 1 and answers.counts["unknown"] == 1
