"""Time ``entropy-exit bench --traces`` and ``calibrate --traces`` on synthetic traces (no model).

Writes N synthetic traces of about L tokens (``bench.synthetic.synthetic_traces``: 20 candidates
per token, a made-up entropy pattern; they say nothing about any model) into a temporary
directory, then runs, in one process, each command ``--repeat`` times and prints the wall time:

* ``bench --traces``                       (every rule replayed, tables and plots written);
* ``calibrate --traces``                   (sequence threshold, verdict, power table);
* ``calibrate --traces --aggregation window`` (streaming calibration; no forced answers exist,
  so exits whose answer is not in the text count as harmful, as the command says).

    python benchmarks/offline_traces.py [--n 60] [--length 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from entropy_exit_integrations.lab.bench.replay import save_traces
from entropy_exit_integrations.lab.bench.synthetic import synthetic_traces
from entropy_exit_integrations.lab.cli import main as entropy_exit


def timed(args: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = entropy_exit(args)
        times.append(time.perf_counter() - started)
        assert code == 0, args
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        traces = synthetic_traces(args.n, length=args.length)
        path = save_traces(traces, Path(tmp) / "traces.jsonl")
        tokens = sum(len(t.tokens) for t in traces)
        print(f"{len(traces)} synthetic traces, {tokens} tokens, {path.stat().st_size / 1e6:.1f} MB")
        runs = {
            "bench --traces": ["bench", "--traces", str(path), "--out", f"{tmp}/bench"],
            "calibrate --traces": ["calibrate", "--traces", str(path), "--out", f"{tmp}/p.json"],
            "calibrate --traces --aggregation window": [
                "calibrate",
                "--traces",
                str(path),
                "--aggregation",
                "window",
                "--out",
                f"{tmp}/s.json",
            ],
        }
        for name, command in runs.items():
            times = timed(command, args.repeat)
            print(f"{name:<42} best {min(times):5.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
