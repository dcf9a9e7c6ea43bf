"""Trace files, the chunk converter, forced-answer caching, and the offline commands.

Real llama.cpp recordings (tests/data/recordings, see the README there) feed the converter;
the offline commands run on synthetic traces (``bench.synthetic``) with no server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entropy_exit_integrations.core.calibration import Calibration
from entropy_exit_integrations.core.tokens import Phase
from entropy_exit_integrations.errors import EntropyExitError
from entropy_exit_integrations.lab.bench.commands import ExitAnswers
from entropy_exit_integrations.lab.bench.datasets import Problem
from entropy_exit_integrations.lab.bench.replay import TRACE_VERSION, load_traces, save_traces
from entropy_exit_integrations.lab.bench.runner import forcing_for
from entropy_exit_integrations.lab.bench.synthetic import synthetic_traces
from entropy_exit_integrations.lab.bench.traces import ForcedCache, convert_chunks
from entropy_exit_integrations.lab.cli import main

RECORDINGS = Path(__file__).resolve().parent.parent / "data" / "recordings"


def chunk_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (RECORDINGS / name).open() if line.strip()]


def test_trace_rows_carry_schema_and_version(tmp_path: Path) -> None:
    traces = synthetic_traces(2, length=60, seed=1)
    traces[0].forced["10"] = {"answer": " 42", "tokens": 2, "cue": "\n\nFinal answer:"}
    path = save_traces(traces, tmp_path / "t.jsonl")
    rows = [json.loads(line) for line in path.open()]
    assert rows[0]["schema"] == "entropy-exit-trace" and rows[0]["version"] == TRACE_VERSION == 1
    assert load_traces(path) == traces
    # an unversioned row of the earlier format still reads; optional fields take defaults
    old = {k: v for k, v in rows[1].items() if k not in ("schema", "version", "messages", "model", "k")}
    minimal = {k: old[k] for k in ("problem_id", "tokens", "text", "correct")}
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(minimal) + "\n")
    again = load_traces(tmp_path / "old.jsonl")
    assert again[0].tokens == traces[1].tokens and again[0].messages is None
    assert again[1].kind == "numeric" and again[1].reference == "" and again[1].forced == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version 2"),
        ({"schema": "other"}, "schema 'other'"),
        ({"tokens": [["a", -0.1, ["a"], []]]}, "differ in length"),
        ({"correct": "no"}, "correct must be true or false \\(a JSON boolean\\), got 'no'"),
        ({"correct": 1}, "correct must be true or false .*got 1"),
        ({"correct": None}, "correct must be true or false .*got None"),
    ],
)
def test_bad_trace_rows_name_their_line(tmp_path: Path, change: dict, message: str) -> None:
    row = synthetic_traces(1, length=50)[0].to_json()
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, **change}) + "\n")
    with pytest.raises(EntropyExitError, match=f"bad.jsonl:2: .*{message}"):
        load_traces(path)
    path.write_text(json.dumps({k: v for k, v in row.items() if k != "correct"}) + "\n")
    with pytest.raises(EntropyExitError, match="missing required fields \\['correct'\\]"):
        load_traces(path)


def test_unknown_extra_fields_are_ignored(tmp_path: Path) -> None:
    trace = synthetic_traces(1, length=50)[0]
    path = tmp_path / "extra.jsonl"
    path.write_text(json.dumps({**trace.to_json(), "colour": "red", "grader_notes": {"by": "me"}}) + "\n")
    assert load_traces(path) == [trace]


def test_convert_real_llamacpp_chunks(tmp_path: Path) -> None:
    rows = chunk_rows("llamacpp_chat_top20.jsonl") + chunk_rows("llamacpp_reasoning_content_top20.jsonl")
    path = tmp_path / "chunks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = [
        Problem("p17", "What is 17 + 25? Answer briefly.", "42", "numeric"),
        Problem("p7", "What is 7 + 5? Think step by step.", "12", "numeric"),
    ]
    chat, thinking = convert_chunks(path, problems)
    entries = [
        e for r in chunk_rows("llamacpp_chat_top20.jsonl") if r.get("choices") for e in
        ((r["choices"][0].get("logprobs") or {}).get("content") or [])
    ]  # fmt: skip
    assert [t.token for t in chat.tokens] == [e["token"] for e in entries]
    assert chat.text == "17 + 25 = 32." and chat.correct is False  # the model's (wrong) answer
    assert chat.problem_id == "p17" and chat.model == "smollm2-135m-instruct" and chat.k == 20
    assert len(thinking.tokens) == 44 and all(t.phase is Phase.REASONING for t in thinking.tokens)
    assert thinking.text == "" and thinking.reasoning.startswith("\nStep 1: 7 + 5 = 12")
    assert thinking.finish_reason == "stop" and chat.finish_reason == "stop"
    with pytest.raises(EntropyExitError, match="2 streams but only 1 problems"):
        convert_chunks(path, problems[:1])


def test_convert_wrapped_chunks_and_inline_think(tmp_path: Path) -> None:
    def chunk(text: str, p: float) -> dict:
        entry = {
            "token": text,
            "logprob": -0.1,
            "top_logprobs": [{"token": text, "logprob": -0.1}, {"token": "x", "logprob": -2.4}],
        }
        return {
            "id": "s1",
            "choices": [{"index": 0, "delta": {"content": text}, "logprobs": {"content": [entry]}}],
        }

    pieces = ["<think>", "3", " and", " 4", "</think>", "The", " answer", " is", " 7", "."]
    meta = {"problem_id": "q1", "question": "3 + 4?", "reference": "7", "kind": "numeric"}
    lines = [{"chunk": chunk(text, 0.9), **meta} for text in pieces]
    path = tmp_path / "wrapped.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (trace,) = convert_chunks(path)
    phases = [t.phase for t in trace.tokens]
    assert phases[:5] == [Phase.REASONING] * 5 and phases[5:] == [Phase.ANSWER] * 5
    assert trace.text == "The answer is 7." and trace.reasoning == "3 and 4"
    assert trace.correct and trace.problem_id == "q1"


def test_cli_convert_chunks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.jsonl"
    assert main(["convert-chunks", str(RECORDINGS / "llamacpp_chat_top20.jsonl"), "--out", str(out)]) == 0
    (trace,) = load_traces(out)
    assert len(trace.tokens) == 11 and trace.reference == "" and not trace.correct
    assert "1 traces (11 tokens, 0 correct)" in capsys.readouterr().out


def test_forced_cache_round_trip_and_trace_field(tmp_path: Path) -> None:
    trace, other = synthetic_traces(2, length=60, seed=2)
    cue = forcing_for("numeric").cue
    cache = ForcedCache(tmp_path / "forced.json")
    assert cache.get(trace, 10, cue) is None
    cache.put(trace, 10, answer=" 77", tokens=3, cue=cue)
    assert cache.save() == tmp_path / "forced.json" and cache.save() is None  # nothing new
    again = ForcedCache(tmp_path / "forced.json")
    assert again.get(trace, 10, cue)["answer"] == " 77"
    assert again.get(other, 10, cue) is None  # another question
    assert again.get(trace, 11, cue) is None  # another exit point
    assert again.get(trace, 10, "\nAnswer:") is None  # another cue: another request
    again.attach([trace, other])
    assert trace.forced == {"10": {"answer": " 77", "tokens": 3, "cue": cue}} and other.forced == {}
    assert ForcedCache().get(trace, 10, cue) is not None  # read from the trace itself


def test_exit_answers_text_cache_unknown() -> None:
    (trace,) = synthetic_traces(1, length=80, accuracy=1.0, seed=4)
    answer_at = next(i for i, t in enumerate(trace.tokens) if t.token == " is") + 1  # the number
    cache = ForcedCache()
    cue = forcing_for("numeric").cue
    cache.put(trace, 6, answer=f" {trace.reference}", tokens=4, cue=cue)  # right, forced at token 5
    cache.put(trace, 11, answer=" 3", tokens=2, cue=cue)  # wrong, forced at token 10
    answers = ExitAnswers([trace], cache=cache)
    got = answers([(0, answer_at + 1), (0, 5), (0, 10), (0, 20)])
    assert got[(0, answer_at + 1)] == (True, 0)  # the answer is already in the text
    assert got[(0, 5)] == (True, 4) and got[(0, 10)] == (False, 2)
    assert got[(0, 20)] == (None, 0)
    assert answers.counts == {"in text": 1, "cached": 2, "forced": 0, "unknown": 1}


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_traces(
        synthetic_traces(24, length=120, seed=3), tmp_path_factory.mktemp("t") / "traces.jsonl"
    )


def test_cli_bench_traces_offline(
    trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    assert (
        main(["bench", "--traces", str(trace_file), "--out", str(out), "--window", "8", "--min-tokens", "8"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "skipped: gate rows: the extended step needs the model: give --base-url" in printed
    assert "(forced): needs answers forced at its exits: give --base-url" in printed
    results = json.loads((out / "results.json").read_text())
    families = {row["family"] for row in results["rules"]}
    assert {"baseline", "entropy exit", "budget cut", "DeepConf online", "fixed threshold"} <= families
    assert "gate (paper)" not in families and not any(row["forced"] for row in results["rules"])
    assert results["meta"]["n"] == 24 and results["meta"]["model"] == "synthetic"
    for name in ("results.md", "savings_vs_accuracy.png", "entropy_distributions.png", "trajectories.png"):
        assert (out / name).stat().st_size > 0


def test_cli_bench_traces_uses_cached_forced_answers(trace_file: Path, tmp_path: Path) -> None:
    from entropy_exit_integrations.lab.bench.replay import replay_rule
    from entropy_exit_integrations.lab.bench.rules import BudgetCut

    traces = load_traces(trace_file)
    cache = ForcedCache(tmp_path / "forced.json")
    cue = forcing_for("numeric").cue
    rule = BudgetCut(int(180 * 0.5))  # the budget row the bench confirms with forcing (max_tokens 180)
    right = 0
    for trace in traces:
        outcome = replay_rule(rule, trace)
        if outcome.exited:  # a forced answer for every exit: the reference, so all are right
            cache.put(trace, outcome.exit_index + 1, answer=f" {trace.reference}", tokens=5, cue=cue)
        # a cut after the full answer keeps the full run's grade; a cut before it gets the reference
        right += trace.correct if outcome.answer_complete else True
    cache.save()
    out = tmp_path / "bench"
    code = main(["bench", "--traces", str(trace_file), "--out", str(out), "--forced-cache", str(cache.path)])
    assert code == 0
    rows = {row["rule"]: row for row in json.loads((out / "results.json").read_text())["rules"]}
    forced = rows["budget 90 (forced)"]
    assert forced["forced"] and forced["accuracy"] == pytest.approx(right / 24)
    assert 0 < rows["budget 90"]["exits_before_answer"] < 24
    # forcing cost 5 tokens where the cut came before the answer (after it, the text holds it)
    assert forced["tokens"] == rows["budget 90"]["tokens"] + 5 * rows["budget 90"]["exits_before_answer"]


def test_cli_calibrate_traces_gate_and_stream(trace_file: Path, tmp_path: Path, capsys) -> None:
    gate = tmp_path / "gate.json"
    assert main(["calibrate", "--traces", str(trace_file), "--risk", "0.1", "--out", str(gate)]) == 0
    printed = capsys.readouterr().out
    cal = Calibration.load(gate)
    assert cal.kind == "sequence" and cal.method == "risk" and cal.risk is not None and cal.n == 24
    assert "risk control (10% harmful exits at 90% confidence" in printed and "P(verdict strong)" in printed
    stream = tmp_path / "stream.json"
    args = ["calibrate", "--traces", str(trace_file), "--aggregation", "window", "--window", "8"]
    assert main([*args, "--min-tokens", "8", "--out", str(stream)]) == 0
    printed = capsys.readouterr().out
    cal = Calibration.load(stream)
    assert cal.kind == "stream" and (cal.aggregation, cal.window, cal.min_tokens) == ("window", 8, 8)
    assert cal.risk is not None and cal.risk.risk == 0.05
    assert "no --base-url to ask): each counts as a harmful exit" in printed
    assert not (trace_file.parent / "traces.forced.json").exists()  # nothing was forced: nothing written


RECORDED = Path(__file__).resolve().parent.parent / "data" / "traces" / "smollm2_arithmetic_12.jsonl"


def test_offline_commands_on_a_real_recorded_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SmolLM2 traces recorded by the embedded server (see tests/data/traces/README.md)."""
    traces = load_traces(RECORDED)
    assert len(traces) == 12 and sum(t.correct for t in traces) == 4
    assert {t.model for t in traces} == {"smollm2-135m-instruct"} and all(t.messages for t in traces)
    profile = tmp_path / "profile.json"
    assert main(["calibrate", "--traces", str(RECORDED), "--out", str(profile)]) == 0
    cal = Calibration.load(profile)
    assert (cal.n, cal.correct.n, cal.incorrect.n, cal.model) == (12, 4, 8, "smollm2-135m-instruct")
    assert cal.verdict != "strong"  # 4 right answers can never make it strong
    out = tmp_path / "bench"
    args = ["bench", "--traces", str(RECORDED), "--profile", str(profile), "--out", str(out)]
    assert main([*args, "--window", "8", "--min-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    assert "bench took" in printed
    results = json.loads((out / "results.json").read_text())
    rows = {row["rule"]: row for row in results["rules"]}
    baseline = rows["no exit (baseline)"]
    assert baseline["accuracy"] == pytest.approx(4 / 12)
    assert baseline["tokens"] == sum(len(t.tokens) for t in traces)
    calibrated = next(row for name, row in rows.items() if name.startswith("stream exit calibrated"))
    assert calibrated["threshold"] == pytest.approx(cal.tau)
    assert results["meta"]["max_tokens"] == 48


def _rows(traces: list) -> list[dict]:
    return [t.to_json() for t in traces]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _nan_tokens(row: dict, every: int = 1) -> dict:
    nan = float("nan")
    tokens = [
        [t[0], nan, t[2], [nan] * len(t[3]), *t[4:]] if i % every == 0 else t
        for i, t in enumerate(row["tokens"])
    ]
    return {**row, "tokens": tokens}


def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0], captured.out


def test_cli_refuses_a_string_correct_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows(synthetic_traces(6, length=60, seed=2))
    rows[3]["correct"] = "no"
    path = _write(tmp_path / "t.jsonl", rows)
    line, _ = _cli_error(["calibrate", "--traces", str(path), "--out", str(tmp_path / "p.json")], capsys)
    assert f"{path}:4: correct must be true or false (a JSON boolean), got 'no'" in line
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("right", [True, False])
def test_cli_refuses_a_one_class_file(
    right: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{**row, "correct": right} for row in _rows(synthetic_traces(6, length=60, seed=2))]
    path = _write(tmp_path / "t.jsonl", rows)
    for extra in ([], ["--risk", "0.1"], ["--method", "deepconf"], ["--aggregation", "window"]):
        line, out = _cli_error(
            ["calibrate", "--traces", str(path), *extra, "--out", str(tmp_path / "p.json")], capsys
        )
        assert f"all 6 calibration examples are {'correct' if right else 'wrong'}" in line
        assert "AUROC" not in out and not (tmp_path / "p.json").exists()


def test_cli_all_nan_logprobs_are_refused_without_an_auroc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces = synthetic_traces(6, length=60, seed=5)
    rows = [_nan_tokens(row) for row in _rows(traces)]
    path = _write(tmp_path / "broken.jsonl", rows)
    line, out = _cli_error(["calibrate", "--traces", str(path), "--out", str(tmp_path / "p.json")], capsys)
    assert f"trace 1 ({traces[0].problem_id}): none of its" in line and "usable logprobs" in line
    assert "AUROC" not in out and "tau" not in out


def test_cli_some_nan_logprobs_are_counted_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows(synthetic_traces(8, length=60, seed=6))
    rows[0] = _nan_tokens(rows[0], every=5)
    path = _write(tmp_path / "some.jsonl", rows)
    profile = tmp_path / "p.json"
    assert main(["calibrate", "--traces", str(path), "--out", str(profile)]) == 0
    out = capsys.readouterr().out
    assert "warning: " in out and "watched tokens had no usable logprobs" in out
    assert "unknown tokens: " in out
    cal = Calibration.load(profile)
    assert cal.unknown_tokens > 0 and all(v is None or v == v for v in cal.taus.values())  # no NaN
