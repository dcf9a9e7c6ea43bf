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
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: half the CPUs)")
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
            print(
                f"error: llama-server exited unexpectedly; last log lines:\n{server.log_tail()}",
                file=sys.stderr,
            )
            return 1
    except KeyboardInterrupt:
        print("stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _add_model_arguments(parser: argparse.ArgumentParser, *, n: int, dataset: str) -> None:
    """Options shared by ``calibrate`` and ``bench``: endpoint, model, questions, request settings."""
    parser.add_argument(
        "--base-url", default=None, help="OpenAI-compatible base URL (default: start the embedded server)"
    )
    parser.add_argument("--model", default=None, help="model id (default: the server's first model)")
    parser.add_argument("--api-key", default="sk-no-key", help="API key for the endpoint")
    parser.add_argument(
        "--dataset",
        default=dataset,
        help="arithmetic, gsm8k, math500, aime24 or a JSONL path "
        f"(default: {dataset}; SmolLM2-135M solves no GSM8K, arithmetic is its demo set)",
    )
    parser.add_argument("--n", type=int, default=n, help=f"questions (default: {n})")
    parser.add_argument(
        "--max-tokens", type=int, default=64, help="generation budget per question (default: 64)"
    )
    parser.add_argument("--system-prompt", default=None, help="override the dataset's system prompt")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight (default: 2)")
    parser.add_argument("--retries", type=int, default=3, help="retries per request (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="request and dataset seed (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--model-file",
        default=None,
        help="GGUF for the embedded server instead of SmolLM2, or 'qwen2.5-coder-0.5b' to fetch "
        "and verify the opt-in benchmark model (491 MB)",
    )


def _run_config(args: argparse.Namespace, model: str) -> Any:
    from .bench.runner import RunConfig

    return RunConfig(
        model=model,
        max_tokens=args.max_tokens,
        seed=args.seed,
        system_prompt=args.system_prompt,
        concurrency=args.concurrency,
        retries=args.retries,
        progress=not args.no_progress,
    )


def _add_calibrate_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="set the entropy threshold from a few graded questions and save a profile",
        description="Run the model on n calibration questions (train split where one exists), grade "
        "them, print per-class entropy statistics, AUROC (95%% bootstrap CI), length-only AUROC, tau per "
        "method and a verdict, and save the profile as JSON.",
    )
    _add_model_arguments(parser, n=16, dataset="arithmetic")
    parser.add_argument(
        "--method",
        default="mean",
        choices=["mean", "info", "bayes", "quantile", "deepconf"],
        help="method whose tau the profile uses (default: mean, the paper's)",
    )
    parser.add_argument("--out", default="profile.json", help="profile path (default: profile.json)")
    parser.add_argument("--traces", default=None, help="also save the recorded traces (JSONL)")
    parser.set_defaults(func=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from .bench.commands import connect, run_calibration

    with connect(args.base_url, args.model, args.api_key, args.model_file) as (client, model):
        cal = run_calibration(
            client,
            _run_config(args, model),
            dataset=args.dataset,
            n=args.n,
            method=args.method,
            seed=args.seed,
            out=args.out,
            traces_out=args.traces,
        )
    print(cal.summary())
    print(f"profile saved to {args.out}")
    return 0


def _add_bench_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure token savings against accuracy for every exit rule on one model",
        description="Record full greedy traces (top-20 logprobs), replay every rule offline (no exit, our "
        "gate and streaming exit, budget cut, DeepConf online, fixed 0.15 bits), confirm the chosen ones "
        "live with answer forcing, and write results.json, results.md and PNG plots.",
    )
    _add_model_arguments(parser, n=100, dataset="arithmetic")
    parser.add_argument("--profile", default=None, help="calibration profile from `entropy-exit calibrate`")
    parser.add_argument("--out", default="bench-out", help="output directory (default: bench-out)")
    parser.add_argument("--window", type=int, default=16, help="streaming exit window (default: 16)")
    parser.add_argument("--min-tokens", type=int, default=16, help="streaming exit min tokens (default: 16)")
    parser.add_argument("--no-live", action="store_true", help="replay only: no live confirmation runs")
    parser.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from .bench.commands import BenchOptions, connect, run_bench
    from .core.calibration import Calibration

    profile = Calibration.load(args.profile) if args.profile else None
    options = BenchOptions(window=args.window, min_tokens=args.min_tokens, live=not args.no_live)
    with connect(args.base_url, args.model, args.api_key, args.model_file) as (client, model):
        rows = run_bench(
            client,
            _run_config(args, model),
            dataset=args.dataset,
            n=args.n,
            out_dir=args.out,
            profile=profile,
            options=options,
            seed=args.seed,
        )
    for row in rows:
        print(
            f"{row.rule:<40} acc {row.accuracy:6.1%}  tokens {row.tokens:>7}  saved {row.saved_pct:5.1f}% "
            f"(kept {row.saved_kept_pct:5.1f}%)  exits {row.exits:>4} "
            f"(before answer {row.exits_before_answer})"
            f"  {row.verdict}"
        )
    print(f"results: {args.out}/results.json, {args.out}/results.md, plots in {args.out}/")
    return 0


def _add_demo_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="calibrate the embedded model and show entropy exit saving tokens in a LangChain chain",
        description="Start the embedded server, calibrate on generated arithmetic questions, answer test "
        "questions with and without ChatEntropyExit, print the savings table and plot the entropy "
        "trajectories.",
    )
    parser.add_argument("--base-url", default=None, help="an OpenAI-compatible server (default: embedded)")
    parser.add_argument("--model", default=None, help="model id on that server")
    parser.add_argument("--n-calibration", type=int, default=16, help="calibration questions (default: 16)")
    parser.add_argument("--n-test", type=int, default=8, help="test questions (default: 8)")
    parser.add_argument("--max-tokens", type=int, default=128, help="token budget per answer (default: 128)")
    parser.add_argument("--out", default="demo-out", help="directory for the profile and the plot")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        base_url=args.base_url,
        model=args.model,
        n_calibration=args.n_calibration,
        n_test=args.n_test,
        max_tokens=args.max_tokens,
        out_dir=args.out,
    )
    return 0


#: Registered subcommands, in help order.
_PARSERS: list[Callable[[Subparsers], None]] = [
    _add_demo_parser,
    _add_serve_parser,
    _add_calibrate_parser,
    _add_bench_parser,
]


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
