"""Calibrate the threshold on your model, then benchmark every exit rule against accuracy.

    python cookbook/calibrate_and_bench.py                  # embedded server, small n
    python cookbook/calibrate_and_bench.py --base-url http://GPU-HOST:8000/v1 --model Qwen/Qwen3-8B \\
        --dataset gsm8k --n-calibration 32 --n-bench 200

The same two steps as ``entropy-exit calibrate`` and ``entropy-exit bench``, run in one process:
prints the calibration verdict and the benchmark table, and asserts both wrote their outputs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from entropy_exit_integrations.lab.cli import main as entropy_exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the embedded one)")
    parser.add_argument("--model")
    parser.add_argument("--dataset", default="arithmetic")
    parser.add_argument("--n-calibration", type=int, default=8)
    parser.add_argument("--n-bench", type=int, default=8)
    parser.add_argument("--out", default=None, help="output directory (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="entropy-exit-bench-"))
    endpoint = ["--base-url", args.base_url] if args.base_url else []
    if args.model:
        endpoint += ["--model", args.model]
    common = [*endpoint, "--dataset", args.dataset, "--no-progress", "--max-tokens", "48"]
    profile = out / "profile.json"
    code = entropy_exit(["calibrate", *common, "--n", str(args.n_calibration), "--out", str(profile)])
    assert code == 0 and profile.exists(), "calibrate failed"
    code = entropy_exit(
        ["bench", *common, "--n", str(args.n_bench), "--profile", str(profile), "--out", str(out / "bench")]
    )
    assert code == 0, "bench failed"
    results = json.loads((out / "bench" / "results.json").read_text())
    print((out / "bench" / "results.md").read_text())
    assert results, "bench wrote no results"
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
