"""A fresh clone, with nothing beside it, passes the unit tests that need the datasets.

The committed HEAD is cloned into an empty temporary directory and pytest runs there, with this
interpreter (no reinstall): the clone is the working directory and first on ``PYTHONPATH``, and
the test checks that the package imported is the clone's, not this checkout's editable install.
``ENTROPY_EXIT_DATA`` is removed from the environment, so only the committed package data can
serve the datasets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDS_DATA = [
    "tests/unit_tests/test_graders.py",
    "tests/unit_tests/test_bench_replay.py",
    "tests/unit_tests/test_bench_traces.py",
]


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)
def test_a_clone_with_nothing_beside_it_passes_the_data_tests(tmp_path: Path) -> None:
    head = _git("rev-parse", "HEAD", cwd=ROOT)
    clone = tmp_path / "empty" / "clone"
    clone.parent.mkdir()
    _git("clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone), cwd=tmp_path)
    _git("checkout", "--quiet", head, cwd=clone)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["clone"]
    env = {k: v for k, v in os.environ.items() if k not in ("ENTROPY_EXIT_DATA", "PYTHONPATH")}
    env["PYTHONPATH"] = str(clone)
    probe = subprocess.run(
        [sys.executable, "-c", "import entropy_exit_integrations as m; print(m.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).resolve().is_relative_to(clone.resolve()), probe.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(clone),
            *NEEDS_DATA,
        ],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1]
