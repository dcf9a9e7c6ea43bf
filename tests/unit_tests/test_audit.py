"""Sampled audits of exits (AuditRule), the live bound (SavingsLedger.audit) and trace sinks.

The engine is driven over scripted transports: mechanics only, no model entropy involved.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import beta

from entropy_exit_integrations import (
    AuditBoundExceeded,
    AuditRule,
    EntropyExitWarning,
    ExitOptions,
    ExitPolicy,
    PolicyError,
    SavingsLedger,
    TraceSink,
)
from entropy_exit_integrations.core.audit import same_final_answer
from entropy_exit_integrations.core.calibration import clopper_pearson_upper
from entropy_exit_integrations.driver import adrive, drive
from entropy_exit_integrations.engine import MonitoredCall, RequestSpec
from entropy_exit_integrations.providers import parse_chat_chunk

EAGER = ExitPolicy(threshold=1.0, min_tokens=3)
BUDGET = 50


def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    top = [{"token": text, "logprob": -0.001}, {"token": "~", "logprob": -9.0}]
    entry = {"token": text, "logprob": -0.001, "top_logprobs": top}
    content = {"content": [entry]} if text else None
    return {
        "choices": [{"index": 0, "delta": {"content": text}, "logprobs": content, "finish_reason": finish}]
    }


def main_stream(n: int = 10, answer: str = " 42") -> list[dict[str, Any]]:
    """n confident word tokens, then the final answer and the end."""
    return [*(chunk(" w") for _ in range(n)), chunk(answer), chunk("", finish="stop")]


def forced(answer: str) -> list[dict[str, Any]]:
    return [chunk(answer), chunk("", finish="stop")]


class Scripted:
    """Streams per role, in order: the main stream, then whatever the engine asks for."""

    def __init__(self, main: list[dict[str, Any]], short: list[dict[str, Any]]) -> None:
        self.scripts = {"main": main, "short": short}
        self.specs: list[RequestSpec] = []
        self.read: dict[str, int] = {"main": 0}
        self.parts = parse_chat_chunk

    def open(self, spec: RequestSpec) -> Iterator[dict[str, Any]]:
        self.specs.append(spec)
        return self._stream(spec.role, self.scripts["main" if spec.role == "main" else "short"])

    def _stream(self, role: str, script: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in script:
            if role == "main":
                self.read["main"] += 1
            yield item

    def close(self, stream: Any) -> None:
        stream.close()


class AsyncScripted(Scripted):
    async def open(self, spec: RequestSpec) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        self.specs.append(spec)
        script = self.scripts["main" if spec.role == "main" else "short"]

        async def stream() -> AsyncIterator[dict[str, Any]]:
            for item in script:
                if spec.role == "main":
                    self.read["main"] += 1
                yield item

        return stream()

    async def close(self, stream: Any) -> None:  # type: ignore[override]
        await stream.aclose()


def call_with(rule: AuditRule | None, ledger: SavingsLedger | None = None, sink: Any = None) -> MonitoredCall:
    options = ExitOptions(policy=EAGER, audit=rule, ledger=ledger, force_answer=True, trace_sink=sink)
    return MonitoredCall(
        options, fields={"model": "m", "max_tokens": BUDGET}, messages=[{"role": "user", "content": "q"}]
    )


def run(call: MonitoredCall, transport: Scripted) -> Any:
    *_, last = drive(call, transport)
    return last.result


def test_an_audited_exit_reads_to_the_end_and_asks_the_forced_answer_at_the_decision() -> None:
    transport = Scripted(main_stream(), forced(" 42"))
    result = run(call_with(AuditRule(rate=1.0)), transport)
    report = result.report
    assert [spec.role for spec in transport.specs] == ["main", "audit"]
    assert transport.read["main"] == len(main_stream())  # read to its natural end
    assert not report.exited and report.ended == "server_done" and report.tokens_saved_vs_budget == 0
    assert report.audited and report.audit_harmful is False
    assert report.audit_exit_answer.endswith("42") and report.audit_answer == " w" * 10 + " 42"
    # decided at token 3 (min_tokens): 11 main tokens, 3 read, 1 forced -> 7 would have been saved
    assert report.audit_tokens == 1 and report.audit_would_save == 11 - 3 - 1
    assert report.tokens_generated == 11 + 1  # the audit's forced answer is a cost
    audit_request = transport.specs[1]
    assert audit_request.fields["max_tokens"] == 64 and "tools" not in audit_request.fields
    assert audit_request.messages[-1]["content"].endswith("Final answer:")  # the prefix at the decision
    assert result.text == " w" * 10 + " 42" and result.forced_answer is None


def test_a_harmful_audit_is_one_whose_answer_differs() -> None:
    report = run(call_with(AuditRule(rate=1.0)), Scripted(main_stream(answer=" 42"), forced(" 41"))).report
    assert report.audited and report.audit_harmful is True


def test_a_custom_comparison_decides() -> None:
    rule = AuditRule(rate=1.0, compare=lambda exit_answer, full: True)
    report = run(call_with(rule), Scripted(main_stream(answer=" 42"), forced(" 41"))).report
    assert report.audit_harmful is False


def test_rate_zero_changes_nothing() -> None:
    transport = Scripted(main_stream(), forced(" 42"))
    result = run(call_with(AuditRule(rate=0.0)), transport)
    plain = run(call_with(None), Scripted(main_stream(), forced(" 42")))
    assert result.report.exited and not result.report.audited
    assert [spec.role for spec in transport.specs] == ["main", "forcing"]
    assert result.report.tokens_generated == plain.report.tokens_generated
    assert result.text == plain.text


def test_the_ledger_bounds_the_harm_and_counts_savings_on_exits_only() -> None:
    ledger = SavingsLedger()
    for answer in (" 42", " 41", " 42", " 42"):  # one harmful audit of four
        run(call_with(AuditRule(rate=1.0), ledger), Scripted(main_stream(answer=" 42"), forced(answer)))
    for _ in range(2):  # two exits
        run(call_with(None, ledger), Scripted(main_stream(), forced(" 42")))
    summary = ledger.audit(confidence=0.95)
    assert summary.audited == 4 and summary.harmful == 1 and summary.harm_rate == 0.25
    assert summary.harm_upper_bound == pytest.approx(beta.ppf(0.95, 2, 3), rel=1e-6)
    assert summary.exits == 2
    exits = [r for r in ledger.reports if r.exited]
    assert summary.tokens_saved == sum(r.tokens_saved_vs_budget for r in exits) > 0
    assert summary.audit_tokens == 4 and summary.net_tokens_saved == summary.tokens_saved - 4
    assert summary.net_saved_fraction == pytest.approx(summary.net_tokens_saved / (6 * BUDGET))
    assert "1 harmful of 4 audited" in str(summary)
    assert ledger.summary()["audited"] == 4 and ledger.summary()["audit_harmful"] == 1


@pytest.mark.parametrize(("harmful", "audited"), [(0, 1), (0, 30), (1, 10), (3, 40), (7, 7), (12, 500)])
def test_clopper_pearson_is_the_beta_quantile(harmful: int, audited: int) -> None:
    expected = 1.0 if harmful == audited else beta.ppf(0.95, harmful + 1, audited - harmful)
    assert clopper_pearson_upper(harmful, audited, 0.95) == pytest.approx(expected, rel=1e-6)
    assert clopper_pearson_upper(0, 0, 0.95) == 1.0


def test_default_comparison_is_the_final_number_else_the_text() -> None:
    assert same_final_answer("so it is 1,200.", "The answer is 1200")
    assert not same_final_answer("41", "42")
    assert same_final_answer("Paris.", "So the capital is Paris")
    assert not same_final_answer("Lyon", "So the capital is Paris")
    assert not same_final_answer("", "")


def test_bad_rules_and_ledgers_are_refused() -> None:
    with pytest.raises(PolicyError, match="rate"):
        AuditRule(rate=1.5)
    with pytest.raises(TypeError, match="audit"):
        ExitOptions(policy=EAGER, audit=0.5)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="on_bound_exceeded"):
        SavingsLedger(risk=0.05, on_bound_exceeded="ignore")


@pytest.mark.parametrize("action", ["warn", "raise", "callable"])
def test_a_harmful_audit_past_the_risk_acts(action: str) -> None:
    seen: list[Any] = []
    ledger = SavingsLedger(risk=0.05, on_bound_exceeded=seen.append if action == "callable" else action)
    harmless = Scripted(main_stream(answer=" 42"), forced(" 42"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a harmless audit never acts
        run(call_with(AuditRule(rate=1.0), ledger), harmless)
    harmful = Scripted(main_stream(answer=" 42"), forced(" 41"))
    if action == "warn":
        with pytest.warns(EntropyExitWarning, match="may exceed 5.0%"):
            run(call_with(AuditRule(rate=1.0), ledger), harmful)
    elif action == "raise":
        with pytest.raises(AuditBoundExceeded) as raised:
            run(call_with(AuditRule(rate=1.0), ledger), harmful)
        assert raised.value.summary.harmful == 1
    else:
        run(call_with(AuditRule(rate=1.0), ledger), harmful)
        assert len(seen) == 1 and seen[0].harmful == 1 and seen[0].harm_upper_bound > 0.05


def test_32_concurrent_tasks_at_half_rate_count_exactly() -> None:
    ledger = SavingsLedger()
    rule = AuditRule(rate=0.5, seed=7)
    transports = [
        AsyncScripted(main_stream(answer=" 42"), forced(" 41" if i % 3 == 0 else " 42")) for i in range(32)
    ]

    async def one(transport: AsyncScripted) -> None:
        async for _ in adrive(call_with(rule, ledger), transport):
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(one(t) for t in transports))

    asyncio.run(main())
    audited = [t for t in transports if any(spec.role == "audit" for spec in t.specs)]
    harmful = [t for t in audited if t.scripts["short"][0]["choices"][0]["delta"]["content"] == " 41"]
    summary = ledger.audit()
    assert 0 < len(audited) < 32  # sampled, not all or nothing
    assert summary.audited == len(audited) and summary.harmful == len(harmful)
    assert summary.exits == 32 - len(audited) and len(ledger) == 32


def test_the_trace_sink_writes_every_call_with_the_audit(tmp_path: Path) -> None:
    path = tmp_path / "prod.jsonl"
    run(call_with(AuditRule(rate=1.0), sink=str(path)), Scripted(main_stream(), forced(" 41")))
    run(call_with(None, sink=str(path)), Scripted(main_stream(), forced(" 42")))
    audited, exited = (json.loads(line) for line in path.read_text().splitlines())
    assert audited["schema"] == "entropy-exit-trace" and audited["version"] == 1
    assert audited["label"] == "answer_changed" and audited["correct"] is True
    assert audited["reference"] == audited["text"] == " w" * 10 + " 42"
    assert len(audited["tokens"]) == 11 and len(audited["tokens"][0][2]) == 2  # top-k kept
    assert audited["ended"] == "server_done" and audited["usage"]["completion_tokens"] == 12
    assert audited["audit"]["decision_index"] == 2 and audited["audit"]["harmful"] is True
    assert audited["forced"] == {"3": {"answer": " 41", "tokens": 1, "cue": "\n\nFinal answer:"}}
    assert (
        exited["ended"] == "we_closed"
        and "audit" not in exited
        and exited["problem_id"] == audited["problem_id"]
    )


def test_the_trace_sink_is_thread_safe_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    sink = TraceSink(path, max_bytes=2000, backups=50)
    record = {"x": "y" * 80}

    def write() -> None:
        for _ in range(50):
            sink(record)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    files = [path, *sorted(tmp_path.glob("calls.jsonl.*"))]
    lines = [line for f in files for line in f.read_text().splitlines()]
    assert len(lines) == 400 and all(json.loads(line) == record for line in lines)
    assert len(files) > 1 and all(f.stat().st_size <= 2000 for f in files)
    assert math.ceil(400 * len(lines[0]) / 2000) <= len(files)


def test_a_failing_sink_never_breaks_the_call() -> None:
    def broken(record: dict[str, Any]) -> None:
        raise OSError("disk full")

    assert run(call_with(None, sink=broken), Scripted(main_stream(), forced(" 42"))).report.exited
