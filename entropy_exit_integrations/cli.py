"""The ``entropy-exit`` command line.

Each subcommand is one ``_add_<name>_parser(subparsers)`` that registers its options and sets
``func=_run_<name>``, plus that ``_run_<name>(args) -> int``, which imports what it needs
lazily (so ``entropy-exit --help`` stays fast and needs no optional dependency). To add a
command, write the pair and append the adder to ``_PARSERS``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import EntropyExitError

Subparsers = Any  # argparse's _SubParsersAction is private


def _add_serve_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the embedded llama.cpp server (SmolLM2-135M) until Ctrl-C",
        description="Start llama.cpp's llama-server with the default model on a loopback port, print its "
        "OpenAI-compatible base URL and model id, and serve until Ctrl-C. Builds the server into the cache "
        "the first time (about 9 minutes on 2 cores).",
    )
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama.cpp decides)")
    parser.add_argument("--ctx-size", type=int, default=4096, help="context size per slot (default: 4096)")
    parser.add_argument("--parallel", type=int, default=2, help="slots = streams served at once (default: 2)")
    parser.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from .local import LocalServer

    server = LocalServer(
        port=args.port, host=args.host, threads=args.threads, ctx_size=args.ctx_size, parallel=args.parallel
    )
    # SIGTERM and SIGINT (even if inherited as ignored, e.g. from a background shell job) stop cleanly.
    previous = {sig: signal.signal(sig, _raise_keyboard_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with server:
            print(f"base URL: {server.base_url}")
            print(f"model:    {server.model}")
            print(f"log:      {server.log_path}")
            print("serving; press Ctrl-C to stop", flush=True)
            while server.is_running or server.external:
                time.sleep(0.5)
            print(f"error: llama-server exited unexpectedly; last log lines:\n{server.log_tail()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


#: Registered subcommands, in help order.
_PARSERS: list[Callable[[Subparsers], None]] = [_add_serve_parser]


def build_parser() -> argparse.ArgumentParser:
    """The ``entropy-exit`` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="entropy-exit", description="Entropy-based early exit for LLM generations."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _PARSERS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``entropy-exit``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EntropyExitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
