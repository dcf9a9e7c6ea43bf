"""The external-server suite (``tests/external``) runs: against the embedded server given as a URL.

Without ``ENTROPY_EXIT_EXTERNAL_URL`` that suite skips itself, so a normal run proves nothing about
it. Here it runs in a subprocess against this session's ``llama_server`` (llama.cpp, metrics on, no
reasoning template): every test must pass except the reasoning-phase ones, which must skip with
the reason that the server streams no reasoning.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PASSED_FLOOR = 34
"""Tests that pass against the embedded server (all but the 8 reasoning-phase ones)."""


def _count(summary: str, word: str) -> int:
    found = re.search(rf"(\d+) {word}", summary)
    return int(found.group(1)) if found else 0


def test_external_suite_passes_against_the_embedded_server(llama_server: Any) -> None:
    llama_server.wait_until_idle(timeout=30.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTROPY_EXIT_EXTERNAL_")}
    env.update(
        ENTROPY_EXIT_EXTERNAL_URL=llama_server.base_url, ENTROPY_EXIT_EXTERNAL_MODEL=llama_server.model
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/external", "-q", "-rfEs", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    assert run.returncode == 0, output[-6000:]
    assert _count(summary, "failed") == 0 and _count(summary, "error") == 0, summary
    assert _count(summary, "passed") >= PASSED_FLOOR, summary
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert skipped and all("no reasoning phase" in line for line in skipped), "\n".join(skipped)
    assert "no server-side stop check" not in output  # the embedded server exposes its metrics
