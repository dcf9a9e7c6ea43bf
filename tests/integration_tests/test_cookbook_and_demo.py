"""Every cookbook script and the demo run to the end against the embedded server.

Each script asserts something about its own result (an exit happened, a report was produced);
here they run as a user would run them, in a subprocess, pointed at the session's server.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "cookbook").glob("*.py"))


def run(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_every_recipe_is_covered() -> None:
    assert {
        "openai_stream.py",
        "langchain_chain.py",
        "langchain_agent.py",
        "llamaindex_llm.py",
        "llamaindex_agent.py",
        "calibrate_and_bench.py",
        "otel_console.py",
        "production_audit.py",
    } <= set(SCRIPTS)
    assert (ROOT / "cookbook" / "vllm_gpu_server.md").exists()


#: Options that keep a script's outputs in the test's temporary directory (pytest removes it).
OUTPUTS = {"calibrate_and_bench.py": "--out", "production_audit.py": "--out"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_cookbook_script_runs(script: str, llama_server, tmp_path) -> None:
    keep_out = [OUTPUTS[script], str(tmp_path / "out")] if script in OUTPUTS else []
    args = ["--base-url", llama_server.base_url, "--model", llama_server.model, *keep_out]
    done = run([f"cookbook/{script}", *args])
    # Each script asserts its own result (see above): exit code 0 says those assertions held.
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_demo_prints_the_savings_table_and_writes_the_plot(llama_server, tmp_path) -> None:
    done = run(
        [
            "-m", "entropy_exit_integrations.lab.cli", "demo",
            "--base-url", llama_server.base_url, "--model", llama_server.model,
            "--n-calibration", "6", "--n-test", "3", "--max-tokens", "64", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verdict:" in done.stdout
    assert "entropy exit vs baseline" in done.stdout
    assert "starting the embedded" not in done.stdout  # a --base-url run starts nothing
    last = done.stdout.strip().splitlines()[-1]  # the verdict: n, intervals, where savings came from
    assert last.startswith("n=3: accuracy no exit ") and "(95% CI " in last
    assert "on answers the no-exit run got right" in last and "on answers already wrong" in last
    assert (tmp_path / "entropy_trajectories.png").stat().st_size > 10_000
    assert (tmp_path / "profile.json").exists()
