import asyncio
import json
import threading

import pytest

from entropy_exit_integrations import EntropyMonitor, ExitPolicy, SavingsLedger, SavingsReport, TokenLogprob

SURE = TokenLogprob("a", -0.001, ("a", "b"), (-0.001, -9.0))
UNKNOWN = TokenLogprob("a", None, (), ())


def report_after(n_sure: int, n_unknown: int = 0, **kwargs) -> SavingsReport:
    policy = kwargs.pop("policy", ExitPolicy(threshold=0.5, min_tokens=n_sure))
    monitor = EntropyMonitor(policy)
    for _ in range(n_unknown):
        monitor.observe(UNKNOWN)
    for _ in range(n_sure):
        monitor.observe(SURE)
    return SavingsReport.from_monitor(monitor, wall_time_s=0.5, **kwargs)


def test_exit_report_counts_savings_net_of_forcing() -> None:
    report = report_after(10, max_tokens=100, forced_answer_tokens=6, ended="we_closed")
    assert report.exited and report.exit_reason == "entropy_exit" and report.exit_token_index == 9
    assert report.ended == "we_closed" and report.decision_token_index == 9
    assert report.tokens_generated == 16
    assert report.tokens_saved_vs_budget == 84
    assert report.saved_fraction == pytest.approx(0.84)
    assert report.k == 2 and report.estimator == "renormalised top-k" and not report.calibrated


def test_no_exit_saves_nothing() -> None:
    report = report_after(3, policy=ExitPolicy(threshold=0.0), max_tokens=100, finish_reason="stop")
    assert not report.exited and report.exit_reason == "stop"
    assert report.tokens_saved_vs_budget == 0 and report.exit_token_index is None


def test_confident_but_not_cut_claims_no_savings() -> None:
    # The policy said "confident" at token 9, but the stream ran to its end (a deferred stop).
    report = report_after(10, max_tokens=100, finish_reason="tool_calls", completion_tokens=95)
    assert not report.exited and report.exit_reason == "tool_calls" and report.finish_reason == "tool_calls"
    assert report.decision_token_index == 9 and report.exit_token_index is None
    assert report.tokens_saved_vs_budget == 0 and report.saved_fraction == 0.0
    assert report.tokens_generated == 95  # the server's count, not the 10 tokens seen


def test_broken_stream_report() -> None:
    report = report_after(5, policy=ExitPolicy(threshold=0.0), max_tokens=100, ended="broken")
    assert not report.exited and report.exit_reason == "interrupted" and report.ended == "broken"
    assert report.tokens_saved_vs_budget == 0


def test_expected_length_savings_and_unknowns() -> None:
    policy = ExitPolicy(
        threshold=0.5, aggregation="window", window=4, min_tokens=4, expected_tokens=40.0, calibrated_for="m"
    )
    report = report_after(4, n_unknown=2, policy=policy, ended="we_closed")
    assert report.unknown_tokens == 2 and report.calibrated
    assert report.tokens_saved_vs_expected == pytest.approx(34.0)
    assert report.saved_fraction == pytest.approx(34 / 40)
    assert report.entropy.known_tokens == 4


def test_report_round_trips_as_plain_json() -> None:
    report = report_after(10, n_unknown=1, max_tokens=50)
    data = json.loads(json.dumps(report.to_dict()))
    assert SavingsReport.from_dict(data) == report
    assert data["entropy"]["trace"][0] is None  # the unknown token's block


def test_trace_is_downsampled() -> None:
    report = report_after(1000, policy=ExitPolicy(threshold=0.0))
    assert len(report.entropy.trace) <= 64


def test_ledger_is_thread_and_task_safe() -> None:
    ledger = SavingsLedger()
    report = report_after(10, max_tokens=100, ended="we_closed")

    def add_many() -> None:
        for _ in range(500):
            ledger.record(report)

    threads = [threading.Thread(target=add_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def add_async() -> None:
        await asyncio.gather(*(asyncio.to_thread(ledger.record, report) for _ in range(100)))

    asyncio.run(add_async())
    summary = ledger.summary()
    assert summary["generations"] == 2100 and summary["exits"] == 2100
    assert summary["tokens_saved_vs_budget"] == 2100 * 90
    assert summary["saved_fraction_vs_budget"] == pytest.approx(0.9)
    assert "2100 generations, 2100 early exits" in str(ledger)
