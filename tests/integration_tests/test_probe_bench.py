"""Issue 14's pipeline end to end on the embedded server, small: record, replay every row (probe
rows with live answers), table, rerun from the cache.

The full run (Qwen2.5-Coder-0.5B, 200 GSM8K questions) is ``entropy-exit bench --table``; it
is not a test. Here SmolLM2 answers 4 arithmetic questions with a 40-token budget (about 30 s
on 2 otherwise idle cores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entropy_exit_integrations.core.calibration import Calibration
from entropy_exit_integrations.lab.bench.commands import calibrate_traces
from entropy_exit_integrations.lab.bench.datasets import load_dataset
from entropy_exit_integrations.lab.bench.probes import ProbeAnswers, bench_rows, headline_table
from entropy_exit_integrations.lab.bench.runner import RunConfig, record_traces
from entropy_exit_integrations.lab.bench.traces import ForcedCache

SMALL = {
    "gate_quantiles": ((0.5, 2), (0.9, 2)),
    "periods": (8, 16),
    "agrees": (2, 3),
    "budgets": (8, 16),
    "probe_tokens": 8,
}


def test_probe_bench_end_to_end_and_cached_rerun(llama_server: Any, tmp_path: Path) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=llama_server.base_url, api_key="sk-no-key", max_retries=0)
    config = RunConfig(model=llama_server.model, max_tokens=40, concurrency=2, progress=False)
    traces = record_traces(client, load_dataset("arithmetic", n=4), config)
    train = record_traces(client, load_dataset("arithmetic", split="train", n=4), config)
    profile: Calibration = calibrate_traces(train, log=lambda _: None)
    cache_path = tmp_path / "forced.json"
    answers = ProbeAnswers(ForcedCache(cache_path), client=client, config=config)
    rows, per_question = bench_rows(
        traces, profile=profile, answers=answers, train_traces=train, log=lambda _: None, **SMALL
    )
    ids = [t.problem_id for t in traces]
    names = [r.rule for r in rows]
    assert names[0] == "no exit"
    assert sum("Dynasor probes" in n for n in names) == 4
    assert sum("entropy-gated probes" in n for n in names) == 2
    assert any(n.startswith("DeepConf") for n in names) and "fixed 0.15 bits" in names
    assert any(n.startswith("budget cut") for n in names) and any(n.startswith("stream exit") for n in names)
    # every row on the same questions, in the same order
    assert set(per_question) == set(names)
    assert all([q["id"] for q in per_question[n]] == ids for n in names)
    assert all(r.n == len(traces) for r in rows)
    # probe rows pay for their probes: tokens = generated prefix + every probe's tokens
    probe_rows = [r for r in rows if "probes" in r.family]
    for row in probe_rows:
        generated = sum(q["tokens"] for q in per_question[row.rule])
        assert row.tokens == generated
        assert row.extra["probe_tokens"] <= row.tokens
        assert (row.extra["probes"] > 0) == (row.extra["probe_tokens"] > 0)  # a probe costs tokens
    periodic = [r for r in probe_rows if r.family.startswith("Dynasor")]
    assert any(r.extra["probes"] > 0 and r.extra["probe_tokens"] > 0 for r in periodic)
    assert answers.requests > 0 and cache_path.exists()
    table = headline_table(rows)
    assert sum(line.startswith("|") for line in table.splitlines()) == len(rows) + 2 and "[" in table
    # a row whose gain over no exit is forced answers on runs the 40-token budget truncated says so
    noted = [r.rule for r in rows if r.truncation_note]
    assert all(f"*{rule}*" in table for rule in noted)
    assert all(r.answers_gained > r.answers_lost for r in rows if r.truncation_note)
    # a rerun over the saved cache asks the server nothing and gives the same rows
    again = ProbeAnswers(ForcedCache(cache_path), client=None, config=config)
    rows2, per_question2 = bench_rows(
        traces, profile=profile, answers=again, train_traces=train, log=lambda _: None, **SMALL
    )
    assert again.requests == 0 and again.hits > 0
    assert per_question2 == per_question
    assert [(r.rule, r.tokens, r.accuracy) for r in rows2] == [(r.rule, r.tokens, r.accuracy) for r in rows]
