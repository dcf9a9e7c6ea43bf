"""The README's Qwen table rebuilds byte for byte through the CLI from the committed artifacts
(``benchmarks/reproduce_qwen_table.sh``: offline, no model, about 10 s on 2 cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reproduce_qwen_table_is_identical() -> None:
    cli = Path(sys.executable).with_name("entropy-exit")
    env = {**os.environ, "ENTROPY_EXIT": str(cli) if cli.exists() else "entropy-exit"}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "reproduce_qwen_table.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "identical:" in done.stdout
    assert "upper bound, probe cost not charged" in done.stdout
    assert "probe grid, probe cost charged" in done.stdout
