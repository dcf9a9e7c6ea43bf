"""Bad input to every ``entropy-exit`` command: one line on stderr naming the path/URL and the fix,
exit code 2, no traceback unless ``--debug``; checks that can run before any request do."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_exit_integrations import __version__
from entropy_exit_integrations.core.calibration import Calibration
from entropy_exit_integrations.lab.bench import commands
from entropy_exit_integrations.lab.bench.replay import load_traces
from entropy_exit_integrations.lab.cli import main

RECORDED = Path(__file__).resolve().parent.parent / "data" / "traces" / "smollm2_arithmetic_12.jsonl"
CHUNKS = Path(__file__).resolve().parent.parent / "data" / "recordings" / "llamacpp_chat_top20.jsonl"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and the one line on stderr (fails when stderr holds more than one line)."""
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return code, lines[0]


@pytest.fixture
def no_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach a model fails the test."""
    monkeypatch.setattr(commands, "connect", lambda *a, **k: pytest.fail("must fail before any request"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entropy_exit_integrations.lab.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_version() -> None:
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"entropy-exit {__version__}"


def test_serve_port_out_of_range_is_one_line_exit_2() -> None:
    done = cli("serve", "--port", "99999")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "entropy-exit serve: error: argument --port: 99999 is not a port number (1-65535) "
        "(see `entropy-exit serve --help`)"
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["calibrate", "--n", "2"], "argument --n: 2 is too small (at least 4)"),
        (["calibrate", "--risk", "1.5"], "argument --risk: 1.5 must be between 0 and 1"),
        (["bench", "--concurrency", "0"], "argument --concurrency: 0 is too small (at least 1)"),
        (["demo", "--n-calibration", "3"], "argument --n-calibration: 3 is too small (at least 4)"),
        (["setup", "--jobs", "two"], "argument --jobs: 'two' is not a whole number"),
    ],
)
def test_out_of_range_options_are_refused_before_anything(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str], no_requests: None
) -> None:
    code, line = run(args, capsys)
    assert code == 2 and needle in line and line.startswith(f"entropy-exit {args[0]}: error:")


def test_calibrate_needs_four_questions_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_requests: None
) -> None:
    small = tmp_path / "three.jsonl"
    small.write_text(
        "".join(json.dumps({"question": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(3))
    )
    code, line = run(["calibrate", "--dataset", str(small), "--n", "16"], capsys)
    assert code == 2 and f"--dataset {small} has 3 questions; calibration needs at least 4" in line


@pytest.mark.parametrize(
    ("command", "option", "fix"),
    [
        (["bench", "--traces"], "--traces", "entropy-exit calibrate --save-traces"),
        (["calibrate", "--traces"], "--traces", "entropy-exit convert-chunks"),
        (["bench", "--profile"], "--profile", "entropy-exit calibrate --out"),
        (["calibrate", "--dataset"], "--dataset", "arithmetic, gsm8k, math500, aime24"),
        (["bench", "--dataset"], "--dataset", "JSONL file with question and answer"),
        (["bench", "--model-file"], "--model-file", "entropy-exit setup --model qwen2.5-coder-0.5b"),
        (["convert-chunks", "--out", "x.jsonl"], "chunks file", "chat.completion.chunk objects"),
    ],
)
def test_missing_files_name_the_path_and_the_fix(
    command: list[str],
    option: str,
    fix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_requests: None,
) -> None:
    missing = tmp_path / "missing.jsonl"
    code, line = run([*command, str(missing)], capsys)
    assert code == 2
    assert f"{option} {missing}: no such file" in line and fix in line
    assert "Traceback" not in line


def test_files_that_are_not_what_the_option_wants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_requests: None
) -> None:
    code, line = run(["bench", "--traces", str(tmp_path)], capsys)
    assert code == 2 and f"--traces {tmp_path} is a directory, not a file" in line
    code, line = run(["bench", "--traces", str(RECORDED), "--profile", str(RECORDED)], capsys)
    assert code == 2 and f"--profile {RECORDED} is not a calibration profile" in line
    not_json = tmp_path / "profile.json"
    not_json.write_text('{"tau": 1.0,\n  oops}\n')
    code, line = run(["calibrate", "--traces", str(not_json)], capsys)
    assert code == 2 and f"--traces {not_json}: {not_json}:1: not JSON" in line
    assert "schema entropy-exit-trace" in line
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, line = run(["calibrate", "--traces", str(binary)], capsys)
    assert code == 2 and "not a JSON-lines file" in line


def test_gzip_files_are_read_transparently(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packed = tmp_path / "traces.jsonl.gz"
    packed.write_bytes(gzip.compress(RECORDED.read_bytes()))
    assert load_traces(packed) == load_traces(RECORDED)
    plain, zipped = tmp_path / "plain.json", tmp_path / "zipped.json"
    assert main(["calibrate", "--traces", str(RECORDED), "--out", str(plain)]) == 0
    assert main(["calibrate", "--traces", str(packed), "--out", str(zipped)]) == 0
    assert Calibration.load(plain) == Calibration.load(zipped)
    chunks = tmp_path / "chunks.jsonl.gz"
    chunks.write_bytes(gzip.compress(CHUNKS.read_bytes()))
    out = tmp_path / "converted.jsonl.gz"  # written compressed too
    assert main(["convert-chunks", str(chunks), "--out", str(out)]) == 0
    assert out.read_bytes()[:2] == b"\x1f\x8b" and load_traces(out)
    capsys.readouterr()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("model", [[], ["--model", "m"]])
def test_unreachable_base_url_names_it_and_the_fix(
    model: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    args = ["calibrate", "--base-url", url, *model, "--n", "4", "--no-progress", "--retries", "0"]
    code, line = run([*args, "--out", str(tmp_path / "p.json")], capsys)
    assert code == 2
    assert f"cannot connect to --base-url {url}" in line
    assert "check --base-url" in line and "entropy-exit serve" in line
    assert not (tmp_path / "p.json").exists()


def test_no_traceback_unless_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(commands, "bench_traces", broken)
    code, line = run(["bench", "--traces", str(RECORDED), "--no-live"], capsys)
    assert code == 1
    assert line == (
        "entropy-exit bench: error: RuntimeError: something inside broke "
        "(run again with --debug for the traceback)"
    )
    for args in (["--debug", "bench"], ["bench", "--debug"]):
        assert main([*args, "--traces", str(RECORDED), "--no-live"]) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "something inside broke" in err
