"""``python -m entropy_exit_integrations.local``: make sure the server binary and model exist.

Builds ``llama-server`` into the cache if it is missing (about 9 minutes on 2 cores, once),
installs/verifies the model, prints both paths; ``--check`` also starts the server once and
prints its URL and start-up time. Exit code 0 on success, 1 with a message on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import ServerError
from .binary import ensure_server_binary
from .model import ensure_model
from .server import LocalServer


def main(argv: list[str] | None = None) -> int:
    """Ensure binary + model (and optionally start the server once); print what was found."""
    parser = argparse.ArgumentParser(prog="python -m entropy_exit_integrations.local", description=__doc__)
    parser.add_argument("--no-build", action="store_true", help="fail instead of building a missing binary")
    parser.add_argument("--check", action="store_true", help="also start the server once and stop it")
    args = parser.parse_args(argv)
    progress = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    try:
        binary = ensure_server_binary(build_if_missing=not args.no_build, progress=progress)
        model = ensure_model(progress=progress)
        print(f"llama-server: {binary}")
        print(f"model: {model}")
        if args.check:
            started = time.perf_counter()
            with LocalServer(binary=binary, model_path=model, parallel=1, progress=progress) as server:
                seconds = time.perf_counter() - started
                print(f"server: {server.base_url} model={server.model} ready in {seconds:.2f} s")
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
