"""`entropy-exit bench --table` on the embedded model, killed half-way (SIGTERM) and resumed: nothing
is asked twice.

Three proofs: the bench's own request journal (``requests.jsonl``, one line per request sent, with a
digest of the request) has no digest twice over both runs; every trace and every cached answer is
there once; and the server's own counter of generated tokens (``llamacpp:tokens_predicted_total``
from ``/metrics``) grew by exactly the tokens of the traces, answers and extended steps the files
hold, so no request was paid twice. A third run asks nothing.
"""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

N, TRAIN_N = 6, 4


def _predicted(server: Any) -> float:
    root = server.base_url.rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/metrics", timeout=10) as response:
        text = response.read().decode()
    return next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("llamacpp:tokens_predicted_total")
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def test_bench_table_killed_and_resumed_asks_nothing_twice(llama_server: Any, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cli = Path(sys.executable).with_name("entropy-exit")
    command = [
        str(cli),
        "bench",
        "--table",
        "--base-url",
        llama_server.base_url,
        "--model",
        llama_server.model,
        "--dataset",
        "arithmetic",
        "--n",
        str(N),
        "--train-n",
        str(TRAIN_N),
        "--max-tokens",
        "32",
        "--periods",
        "8,16",
        "--headroom-every",
        "4",
        "--concurrency",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    before = _predicted(llama_server)
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while len(_lines(out / "traces.jsonl")) < 1 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    printed = first.communicate(timeout=120)[0]
    assert first.returncode == 130, printed  # stopped cleanly (interrupted), not finished
    recorded = len(_lines(out / "traces.jsonl"))
    assert 1 <= recorded < N, printed  # killed half-way through the test traces
    killed_requests = len(_lines(out / "requests.jsonl"))

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{recorded} already in" in second.stdout
    journal = _lines(out / "requests.jsonl")
    assert len(journal) > killed_requests
    twice = [d for d, c in collections.Counter(r["digest"] for r in journal).items() if c > 1]
    assert not twice, f"asked twice: {twice}"
    traces, train = _lines(out / "traces.jsonl"), _lines(out / "train_traces.jsonl")
    assert sorted(t["problem_id"] for t in traces) == sorted({t["problem_id"] for t in traces})
    assert len(traces) == N and len(train) == TRAIN_N
    entries = json.loads((out / "forced.json").read_text())["entries"]
    asked = [e for e in entries.values() if e.get("same_request_as") is None]
    extended = (
        json.loads((out / "gate_extended.json").read_text()) if (out / "gate_extended.json").exists() else {}
    )
    kinds = collections.Counter(r["kind"] for r in journal)
    assert kinds["answer"] == len(asked)
    # the server generated exactly what the files hold: nothing was paid for twice. A trace's
    # count is the server's own (its usage block): llama.cpp streams no logprobs for a token that
    # ends inside a UTF-8 character, so the logprob entries can be fewer than the tokens.
    assert all(t["server_tokens"] >= len(t["tokens"]) > 0 for t in traces + train)
    generated = (
        sum(t["server_tokens"] for t in traces + train)
        + sum(int(e["tokens"]) for e in asked)
        + sum(int(e["tokens"]) for e in extended.values())
    )
    assert _predicted(llama_server) - before == generated
    table = (out / "table.md").read_text()
    assert table.startswith("| rule |") and "Dynasor probes every 8, k=2" in table
    headroom = (out / "headroom.md").read_text()
    labelled = (
        "upper bound, probe cost not charged" in headroom and "probe grid, probe cost charged" in headroom
    )
    assert labelled or "none to measure" in headroom  # (the labels are checked on Qwen's table too)

    third = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stdout + third.stderr
    assert len(_lines(out / "requests.jsonl")) == len(journal)  # a third run asks nothing
    assert (out / "table.md").read_text() == table
