"""The README's Qwen tables (0.5B and 1.5B) rebuild byte for byte through the CLI from the
committed artifacts (``benchmarks/reproduce_table.sh``: offline, no model, about 10 s a table on
2 cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reproduce_qwen_tables_are_identical() -> None:
    tables = sorted(path.parent.name for path in (ROOT / "benchmarks" / "results").glob("*/table.md"))
    assert "qwen_gsm8k" in tables
    cli = Path(sys.executable).with_name("entropy-exit")
    env = {**os.environ, "ENTROPY_EXIT": str(cli) if cli.exists() else "entropy-exit"}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "reproduce_table.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("identical:") == len(tables), done.stdout
    assert done.stdout.count("upper bound, probe cost not charged") == len(tables)
    assert done.stdout.count("probe grid, probe cost charged") == len(tables)
