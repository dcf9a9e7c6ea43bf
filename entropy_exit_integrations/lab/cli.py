"""The ``entropy-exit`` command line.

Each subcommand is one ``_add_<name>_parser(subparsers)`` that registers its options and sets
``func=_run_<name>``, plus that ``_run_<name>(args) -> int``, which imports what it needs
lazily (so ``entropy-exit --help`` stays fast and needs no optional dependency). To add a
command, write the pair and append the adder to ``_PARSERS``.

Errors: bad input (an option out of range, a missing or unreadable file, a server that cannot
be reached, a calibration set that cannot work) is one line on stderr that names the option, path
or URL and the fix, with exit code 2, before any request where it can be checked first. Other
failures are one line with exit code 1. ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from entropy_exit_integrations import __version__
from entropy_exit_integrations.errors import EntropyExitError, ServerError, StreamInterrupted

Subparsers = Any  # argparse's _SubParsersAction is private
MIN_CALIBRATION = 4
"""Fewest graded questions ``calibrate`` accepts (``core.calibration.MIN_EXAMPLES``)."""
_BUILTIN_DATASETS = ("arithmetic", "gsm8k", "math500", "aime24")
_DATASET_FIX = (
    "use arithmetic, gsm8k, math500, aime24 or the path of a JSONL file with question and answer fields"
)
_TRACES_FIX = (
    "record one with `entropy-exit bench` (OUT/traces.jsonl) or `entropy-exit calibrate --save-traces "
    "FILE`, or convert raw stream chunks with `entropy-exit convert-chunks`"
)


class UsageError(EntropyExitError):
    """Bad input the user can fix: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``PROG: error: ...``) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small (at least {low})")
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def _open_unit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1 (exclusive), e.g. 0.05")
    return value


def _input_file(option: str, path: str, fix: str) -> Path:
    """``path`` as an existing file, else a ``UsageError`` naming the option, the path and ``fix``."""
    found = Path(path).expanduser()
    if not found.exists():
        raise UsageError(f"{option} {path}: no such file; {fix}")
    if found.is_dir():
        raise UsageError(f"{option} {path} is a directory, not a file; {fix}")
    return found


def _check_dataset(name: str) -> None:
    if name not in _BUILTIN_DATASETS:
        _input_file("--dataset", name, _DATASET_FIX)


def _check_model_file(model_file: str | None) -> None:
    from .bench.models import OPT_IN_MODELS

    if model_file and model_file not in OPT_IN_MODELS:
        _input_file(
            "--model-file",
            model_file,
            "give a GGUF file, or qwen2.5-coder-0.5b after `entropy-exit setup --model qwen2.5-coder-0.5b` "
            "(qwen2.5-coder-1.5b likewise)",
        )


def _add_setup_parser(subparsers: Subparsers) -> None:
    from .local.install import SETUP_DESCRIPTION, add_setup_arguments, run_setup

    parser = subparsers.add_parser(
        "setup",
        help="install the model and build the embedded llama.cpp server (once; nothing else does)",
        description=SETUP_DESCRIPTION,
    )
    add_setup_arguments(parser)
    parser.set_defaults(func=run_setup)


def _add_serve_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the embedded llama.cpp server (SmolLM2-135M) until Ctrl-C",
        description="Start llama.cpp's llama-server with the default model on a loopback port, print its "
        "OpenAI-compatible base URL and model id, and serve until Ctrl-C. Needs `entropy-exit setup` once.",
    )
    parser.add_argument(
        "--port", type=_port, default=None, help="port to listen on, 1-65535 (default: a free one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--threads", type=_int_at_least(1), default=None, help="CPU threads (default: half the CPUs)"
    )
    parser.add_argument(
        "--ctx-size", type=_int_at_least(1), default=4096, help="context size per slot (default: 4096)"
    )
    parser.add_argument(
        "--parallel", type=_int_at_least(1), default=2, help="slots = streams served at once (default: 2)"
    )
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


SERVER_MAX_TOKENS = 4096
"""The default budget on a user's server (``--base-url``): reasoning models think for thousands."""
EMBEDDED_MAX_TOKENS = 64
"""The default budget on the embedded SmolLM2-135M (a demo model that rambles)."""


def _resolve_model_defaults(args: argparse.Namespace) -> None:
    """Budget and dataset defaults that suit the server: a reasoning model on ``--base-url`` gets
    thousands of tokens and MATH-500; the embedded model 64 tokens and its demo set."""
    if not hasattr(args, "embedded_dataset"):
        return  # a command without the model options
    if args.max_tokens is None:
        args.max_tokens = SERVER_MAX_TOKENS if args.base_url else EMBEDDED_MAX_TOKENS
    if args.dataset is None:
        args.dataset = "math500" if args.base_url else args.embedded_dataset


def _add_model_arguments(parser: argparse.ArgumentParser, *, n: int, n_min: int, dataset: str) -> None:
    """Options shared by ``calibrate`` and ``bench``: endpoint, model, questions, request settings."""
    parser.add_argument(
        "--base-url", default=None, help="OpenAI-compatible base URL (default: start the embedded server)"
    )
    parser.add_argument("--model", default=None, help="model id (default: the server's first model)")
    parser.add_argument("--api-key", default="sk-no-key", help="API key for the endpoint")
    parser.add_argument(
        "--dataset",
        default=None,
        help="arithmetic, gsm8k, math500, aime24 or a JSONL path (default: math500 on your server, "
        f"--base-url; {dataset} on the embedded SmolLM2-135M, which solves no GSM8K)",
    )
    parser.add_argument(
        "--n", type=_int_at_least(n_min), default=n, help=f"questions, at least {n_min} (default: {n})"
    )
    parser.add_argument(
        "--max-tokens",
        type=_int_at_least(1),
        default=None,
        help=f"generation budget per question (default: {SERVER_MAX_TOKENS} on your server, --base-url, "
        f"for a reasoning model; {EMBEDDED_MAX_TOKENS} on the embedded model)",
    )
    parser.set_defaults(embedded_dataset=dataset)
    parser.add_argument("--system-prompt", default=None, help="override the dataset's system prompt")
    parser.add_argument(
        "--concurrency", type=_int_at_least(1), default=2, help="requests in flight (default: 2)"
    )
    parser.add_argument(
        "--retries", type=_int_at_least(0), default=3, help="retries per request (default: 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="request and dataset seed (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--model-file",
        default=None,
        help="GGUF for the embedded server instead of SmolLM2, or an opt-in benchmark model, "
        "'qwen2.5-coder-0.5b' or 'qwen2.5-coder-1.5b' (fetch it first: `entropy-exit setup --model NAME`)",
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


def _add_policy_shape_arguments(parser: argparse.ArgumentParser, *, window: int, min_tokens: int) -> None:
    parser.add_argument(
        "--window", type=_int_at_least(1), default=window, help=f"window / EMA span (default: {window})"
    )
    parser.add_argument(
        "--min-tokens",
        type=_int_at_least(0),
        default=min_tokens,
        help=f"watched tokens before any exit (default: {min_tokens})",
    )


def _add_risk_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--risk",
        type=_open_unit,
        default=None,
        help="pick the largest threshold whose rate of harmful exits (a wrong answer where the full run "
        "was right) has an upper confidence bound at most RISK, e.g. 0.05 (default: off for the gate, "
        "0.05 for --aggregation)",
    )
    parser.add_argument(
        "--confidence", type=_open_unit, default=0.9, help="confidence of the risk bound (default: 0.9)"
    )
    parser.add_argument(
        "--forced-cache",
        default=None,
        help="JSON file caching answers forced at exit points, so reruns ask nothing twice "
        "(default: TRACES.forced.json beside --traces, else forced.json beside --out)",
    )


def _forced_cache(args: argparse.Namespace, beside: str) -> Any:
    from pathlib import Path

    from .bench.traces import ForcedCache

    if args.forced_cache:
        return ForcedCache(args.forced_cache)
    if args.traces:
        path = Path(args.traces)
        return ForcedCache(path.with_name(path.stem + ".forced.json"))
    return ForcedCache(Path(beside).with_name("forced.json"))


def _load_traces(path: str) -> list[Any]:
    from .bench.replay import load_traces

    try:
        traces = load_traces(_input_file("--traces", path, _TRACES_FIX))
    except UsageError:
        raise
    except EntropyExitError as exc:
        raise UsageError(
            f"--traces {path}: {exc}; expected a trace file (JSON lines of schema entropy-exit-trace, "
            "documented in entropy_exit_integrations/lab/bench/traces.py)"
        ) from exc
    if not traces:
        raise UsageError(f"--traces {path} holds no traces; {_TRACES_FIX}")
    print(f"read {len(traces)} traces from {path}")
    return traces


def _maybe_connect(args: argparse.Namespace) -> Any:
    """A client: for --base-url, for --model-file (the embedded server), else nothing in --traces
    mode (replay only)."""
    import contextlib

    if args.traces and args.base_url is None and args.model_file is None:
        return contextlib.nullcontext((None, args.model))
    from .bench.commands import connect

    return connect(args.base_url, args.model, args.api_key, args.model_file)


def _add_calibrate_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="set the entropy threshold from a few graded questions (or recorded traces) and save a profile",
        description="Run the model on n calibration questions (train split where one exists), or read "
        "traces recorded anywhere (--traces, no model needed), grade them, print per-class entropy "
        "statistics, the AUROC with an interval valid at small n, the length-only AUROC, tau per method, "
        "a verdict that says how many examples would change it, and how often the verdict can say "
        "'strong' at your sample size; save the profile as JSON. --risk picks a threshold whose rate of "
        "harmful exits is bounded instead. --aggregation calibrates a streaming policy (its own "
        "aggregate, window and min_tokens) on the traces, which needs one forced answer per candidate "
        "exit point: from the trace file or the cache, else asked from --base-url. Production traces "
        "(a trace sink's file, ExitOptions(trace_sink=...), with its rotated .1, .2 files if given; "
        "label answer_changed) recalibrate a streaming policy at --risk (default 0.05): each call is "
        "graded against its own full answer, so an exit is harmful when its forced answer differs; "
        "calls an exit cut are skipped. That label is conservative (an exit that turns a wrong answer "
        "into a right one, or rewords one, also counts as harmful), so the threshold errs toward "
        "exiting less.",
    )
    _add_model_arguments(parser, n=16, n_min=MIN_CALIBRATION, dataset="arithmetic")
    parser.add_argument(
        "--method",
        default="mean",
        choices=["mean", "info", "bayes", "quantile", "deepconf"],
        help="method whose tau the profile uses (default: mean, the paper's)",
    )
    parser.add_argument("--out", default="profile.json", help="profile path (default: profile.json)")
    parser.add_argument(
        "--traces",
        nargs="+",
        default=None,
        metavar="FILE",
        help="calibrate on these trace files (JSONL) instead of running the model: recorded ones, or a "
        "trace sink's file and its rotated FILE.1, FILE.2",
    )
    parser.add_argument("--save-traces", default=None, help="also save the recorded traces (JSONL)")
    _add_risk_arguments(parser)
    parser.add_argument(
        "--aggregation",
        default=None,
        choices=["mean", "window", "ema"],
        help="calibrate a streaming policy with this aggregate (risk-controlled) instead of the "
        "sequence-mean threshold of the gate",
    )
    _add_policy_shape_arguments(parser, window=16, min_tokens=16)
    parser.add_argument(
        "--patience",
        type=_int_at_least(1),
        default=1,
        help="streaming: confident tokens in a row (default: 1)",
    )
    parser.add_argument(
        "--phase",
        default="auto",
        choices=["auto", "reasoning", "answer", "both"],
        help="streaming: watched tokens (default: auto)",
    )
    parser.set_defaults(func=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    import time

    from entropy_exit_integrations.core.policy import ExitPolicy

    from .bench.commands import ExitAnswers, calibrate_traces, run_calibration

    files: list[str] = list(args.traces or [])
    if files:
        for path in files:
            _input_file("--traces", path, _TRACES_FIX)
        args.traces = files[0]  # the shared helpers' single file: the forced cache goes beside it
    else:
        from .bench.datasets import load_dataset

        _check_dataset(args.dataset)
        _check_model_file(args.model_file)
        available = len(load_dataset(args.dataset, split="train", n=args.n, seed=args.seed))
        if available < MIN_CALIBRATION:
            raise UsageError(
                f"--dataset {args.dataset} has {available} questions; calibration needs at least "
                f"{MIN_CALIBRATION}: use a larger dataset"
            )
    loaded = _load_trace_files(files) if files else None
    if loaded is not None and loaded.production and args.aggregation is None:
        args.aggregation = "window"
        print(
            f"production traces calibrate a streaming policy: aggregation=window, window={args.window}, "
            f"min_tokens={args.min_tokens} (pass --aggregation, --window, --min-tokens to choose)"
        )
    shape = None
    if args.aggregation is not None:
        shape = ExitPolicy(
            threshold=0.0,
            aggregation=args.aggregation,
            window=args.window,
            min_tokens=args.min_tokens,
            patience=args.patience,
            phase=args.phase,
        )
    cache = _forced_cache(args, args.out)
    started = time.perf_counter()
    with _maybe_connect(args) as (client, model):
        if loaded is not None and loaded.production:
            assert shape is not None
            cal = _calibrate_production(args, loaded, shape, client, model, cache)
            cal.save(args.out)
        elif loaded is not None:
            traces = loaded.traces
            config = _run_config(args, model) if client is not None else None
            answers = ExitAnswers(traces, client=client, config=config, cache=cache)
            cal = calibrate_traces(
                traces,
                method=args.method,
                model=args.model,
                risk=args.risk,
                confidence=args.confidence,
                shape=shape,
                answers=answers,
            )
            cal.save(args.out)
        else:
            cal = run_calibration(
                client,
                _run_config(args, model),
                dataset=args.dataset,
                n=args.n,
                method=args.method,
                seed=args.seed,
                out=args.out,
                traces_out=args.save_traces,
                risk=args.risk,
                confidence=args.confidence,
                shape=shape,
                cache=cache,
            )
    print(cal.summary())
    print(f"profile saved to {args.out} ({time.perf_counter() - started:.1f} s)")
    return 0


def _load_trace_files(files: Sequence[str]) -> Any:
    """``calibrate --traces``: the files read (``bench.traces.TraceFiles``), with what was skipped."""
    from .bench.traces import read_trace_files

    where = files[0] if len(files) == 1 else f"{files[0]} (and {len(files) - 1} more)"
    try:
        loaded = read_trace_files([Path(path).expanduser() for path in files])
    except EntropyExitError as exc:
        raise UsageError(
            f"--traces {where}: {exc}; expected a trace file (JSON lines of schema entropy-exit-trace, "
            "documented in entropy_exit_integrations/lab/bench/traces.py)"
        ) from exc
    skipped = loaded.describe_skipped()
    if not loaded.traces:
        because = f" ({skipped})" if skipped else ""
        raise UsageError(f"--traces {where} holds no full generations{because}; {_TRACES_FIX}")
    if len(files) == 1:
        print(f"read {len(loaded.traces)} traces from {files[0]}")
    else:
        counts = ", ".join(f"{count} from {path}" for path, count in loaded.per_file.items())
        print(f"read {len(loaded.traces)} traces ({counts})")
    for path in files:  # a sink's rotated files hold older calls: say so when one was left out
        rotated = Path(path).with_name(Path(path).name + ".1")
        if rotated.exists() and str(rotated) not in files and not path.endswith((".1", ".2", ".3")):
            print(f"note: {rotated} (a rotated file of the same sink) exists and was not given")
    if loaded.production:
        print(
            f"production traces (label answer_changed): {len(loaded.traces)} full generations"
            + (f"; skipped {skipped}" if skipped else "")
        )
        print(
            "  harm label: an exit is harmful when its forced answer differs from the full run's own "
            "answer (final number, else normalised text; there is no gold answer). This label is "
            "conservative: an exit that turns a wrong answer into a right one, or rewords a right one, "
            "also counts as harmful, so the recalibrated threshold errs toward exiting less. (The "
            "refusal of all-correct calibration sets is for correctness signals; it does not apply "
            "to this risk control.)"
        )
        if len(loaded.traces) < MIN_CALIBRATION:
            raise UsageError(
                f"--traces {where}: {len(loaded.traces)} full generations"
                + (f" ({skipped} skipped)" if skipped else "")
                + f"; calibration needs at least {MIN_CALIBRATION}: collect more calls with the trace sink"
            )
    return loaded


def _calibrate_production(
    args: argparse.Namespace, loaded: Any, shape: Any, client: Any, model: str | None, cache: Any
) -> Any:
    """Recalibrate a streaming policy on production traces against their own answers."""
    from entropy_exit_integrations.core.calibration import (
        ANSWER_CHANGED,
        ExampleError,
        StreamExample,
        calibrate_stream,
    )
    from entropy_exit_integrations.errors import PolicyError

    from .bench.answers import AnswerChangedAnswers

    traces = loaded.traces
    config = _run_config(args, str(model)) if client is not None else None
    answers = AnswerChangedAnswers(traces, client=client, config=config, cache=cache)
    started = time.perf_counter()
    try:
        cal = calibrate_stream(
            [StreamExample(t.tokens, t.correct) for t in traces],
            shape,
            answers,
            risk=0.05 if args.risk is None else args.risk,
            confidence=args.confidence,
            model=args.model or next((t.model for t in traces if t.model), None),
            label=ANSWER_CHANGED,
        )
    except ExampleError as error:
        trace = traces[error.index]
        raise PolicyError(f"trace {error.index + 1} ({trace.problem_id}): {error.reason}") from error
    took = time.perf_counter() - started
    print(f"answers at exit points: {answers.describe() or 'none needed'} ({took:.1f} s)")
    if answers.counts["unknown"]:
        print(
            f"note: {answers.counts['unknown']} exit points had no forced answer (none in the trace files "
            "or the cache, and no --base-url to ask): each counts as a harmful exit"
        )
    return cal


def _add_bench_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure token savings against accuracy for every exit rule on one model",
        description="Record full greedy traces (top-20 logprobs), or read them from a file recorded "
        "anywhere (--traces), replay every rule offline (no exit, the calibrated policy, mean and "
        "sliding-window exits, the paper's gate, budget cut, DeepConf online, fixed 0.15 bits), confirm "
        "the chosen ones live with answer forcing, and write results.json, results.md and PNG plots. "
        "With --traces and no --base-url nothing calls a model: rows that need one (live runs, the "
        "gate's extended step, forced answers not in the file or the cache) are skipped, with a message.",
    )
    _add_model_arguments(parser, n=100, n_min=1, dataset="arithmetic")
    parser.add_argument("--profile", default=None, help="calibration profile from `entropy-exit calibrate`")
    parser.add_argument("--out", default="bench-out", help="output directory (default: bench-out)")
    parser.add_argument(
        "--traces", default=None, help="bench on this trace file (JSONL) instead of recording"
    )
    parser.add_argument(
        "--forced-cache",
        default=None,
        help="JSON cache of answers forced at exits (default: TRACES.forced.json beside --traces, "
        "else forced.json in --out)",
    )
    _add_policy_shape_arguments(parser, window=16, min_tokens=16)
    parser.add_argument("--no-live", action="store_true", help="replay only: no live confirmation runs")
    table = parser.add_argument_group(
        "the headline table (--table)",
        "every row of the README's comparison on the same questions (probe rules, DeepConf, budget "
        "and length caps, the paper's gate) and the headroom; resumable (see lab/bench/table.py)",
    )
    add = table.add_argument
    add("--table", action="store_true", help="build the headline table instead of the sweep")
    add("--train-traces", default=None, help="train traces (JSONL) for calibration and quantiles")
    add("--train-n", type=_int_at_least(0), default=32, help="train questions to record (default: 32)")
    add("--seq-profile", default=None, help="sequence profile: tau[mean] for the gate row")
    add("--gate-extended", default=None, help="JSON of the gate's extended-step results")
    add("--offline", action="store_true", help="ask nothing: every answer must be cached")
    add("--risk", type=_open_unit, default=0.1, help="risk of the streaming calibration (default: 0.1)")
    add("--budgets", default=None, help="budget cuts, e.g. 64,128 (default: 1/4, 1/2, 3/4 of the budget)")
    add("--length-quantiles", default="0.5,0.9", help="length caps at train quantiles, or none")
    add("--periods", default="32,64", help="periodic probes every N tokens (default: 32,64)")
    add(
        "--headroom-every",
        type=_int_at_least(0),
        default=0,
        help="ask forced answers every N tokens on right answers for the headroom's upper bound "
        "(1: every prefix, the exact bound; default 0: the prefixes the rows asked)",
    )
    parser.set_defaults(func=_run_bench)


def _numbers(option: str, text: str | None, kind: Callable[[str], Any]) -> tuple[Any, ...] | None:
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} {text}: expected comma-separated numbers, e.g. 64,128, or none") from None


@contextlib.contextmanager
def _usage_error(kind: type[Exception]) -> Iterator[None]:
    """``kind`` raised inside becomes a ``UsageError`` (one line, exit code 2)."""
    try:
        yield
    except kind as exc:
        raise UsageError(str(exc)) from exc


def _run_bench_table(args: argparse.Namespace) -> int:
    from .bench.table import MissingAnswers, graceful_stop, run_table

    budgets = _numbers("--budgets", args.budgets, int)
    quantiles = _numbers("--length-quantiles", args.length_quantiles, float)
    periods = _numbers("--periods", args.periods, int)
    fix = "write one with `entropy-exit calibrate --out PATH`"
    profile = _load_profile(args.profile) if args.profile else None
    seq = None
    if args.seq_profile:
        seq = _load_profile(str(_input_file("--seq-profile", args.seq_profile, fix)))
    if args.gate_extended and args.offline:
        _input_file("--gate-extended", args.gate_extended, "give the extended-step results of a live run")
    if args.offline and not args.traces:
        raise UsageError("--offline needs --traces (recorded traces): nothing can be recorded offline")
    if not args.traces:
        _check_dataset(args.dataset)
        _check_model_file(args.model_file)
    traces = _load_traces(args.traces) if args.traces else None
    train = _load_traces(args.train_traces) if args.train_traces else None
    connection = contextlib.nullcontext((None, args.model)) if args.offline else _maybe_connect(args)
    with connection as (client, model), graceful_stop(), _usage_error(MissingAnswers):
        text = run_table(
            out=args.out,
            client=client,
            config=_run_config(args, model) if client is not None else None,
            traces=traces,
            train_traces=train,
            profile=profile,
            seq_profile=seq,
            gate_extended=args.gate_extended,
            cache=_forced_cache(args, str(Path(args.out) / "x")),
            dataset=args.dataset,
            n=args.n,
            train_n=args.train_n,
            seed=args.seed,
            risk=args.risk,
            window=args.window,
            min_tokens=args.min_tokens,
            budgets=budgets,
            length_quantiles=quantiles or (),
            periods=periods or (32, 64),
            concurrency=args.concurrency,
            headroom_every=args.headroom_every,
        )
    print(text, end="")
    print(f"table: {args.out}/table.md, headroom: {args.out}/headroom.md, rows: {args.out}/results.json")
    return 0


def _load_profile(path: str) -> Any:
    from entropy_exit_integrations.core.calibration import Calibration

    fix = "write one with `entropy-exit calibrate --out PATH`"
    found = _input_file("--profile", path, fix)
    try:
        return Calibration.load(found)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--profile {path} is not a calibration profile ({exc}); {fix}") from exc


def _run_bench(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .bench.commands import BenchOptions, bench_traces, run_bench

    if args.table:
        return _run_bench_table(args)
    profile = _load_profile(args.profile) if args.profile else None
    if args.traces:
        _input_file("--traces", args.traces, _TRACES_FIX)
    else:
        _check_dataset(args.dataset)
        _check_model_file(args.model_file)
    options = BenchOptions(window=args.window, min_tokens=args.min_tokens, live=not args.no_live)
    started = time.perf_counter()
    with _maybe_connect(args) as (client, model):
        if args.traces:
            traces = _load_traces(args.traces)
            rows = bench_traces(
                traces,
                out_dir=args.out,
                profile=profile,
                options=options,
                client=client,
                config=_run_config(args, model) if client is not None else None,
                cache=_forced_cache(args, str(Path(args.out) / "x")),
                source=args.traces,
            )
        else:
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
            f"{row.rule:<44} acc {row.accuracy:6.1%}  tokens {row.tokens:>7}  saved {row.saved_pct:5.1f}% "
            f"(kept {row.saved_kept_pct:5.1f}%)  exits {row.exits:>4} "
            f"(before answer {row.exits_before_answer})"
            f"  {row.verdict}"
        )
    print(f"results: {args.out}/results.json, {args.out}/results.md, plots in {args.out}/")
    print(f"bench took {time.perf_counter() - started:.1f} s")
    return 0


def _add_convert_parser(subparsers: Subparsers) -> None:
    def options(parser: argparse.ArgumentParser, what: str) -> None:
        parser.add_argument("file", metavar="FILE", help=f"{what} (JSONL; .gz is fine)")
        parser.add_argument("--out", required=True, help="trace file to write (JSONL; .gz compresses)")
        parser.add_argument(
            "--dataset",
            default=None,
            help="arithmetic, gsm8k, math500, aime24 or a JSONL path, paired in order with rows "
            "that do not name their question",
        )
        parser.add_argument("--split", default="test", help="dataset split (default: test)")
        parser.add_argument(
            "--offset", type=_int_at_least(0), default=0, help="first dataset row (default: 0)"
        )
        parser.add_argument("--seed", type=int, default=0, help="dataset seed (arithmetic; default: 0)")
        parser.set_defaults(func=_run_convert)

    convert = subparsers.add_parser(
        "convert",
        help="turn recorded generations (stream chunks, top-k lists, OpenAI/vLLM responses) into traces",
        description="Read recorded generations in one of three shapes and write a trace file (schema "
        "entropy-exit-trace, version 1) for calibrate/bench --traces. chunks: chat.completion.chunk "
        'objects, one per line (see convert-chunks). topk: one generation per line, {"problem_id", '
        '"question", "reference", "correct": true|false, "text", "tokens": [{"token", "logprob", '
        '"top_logprobs": [{"token", "logprob"}, ...]}, ...]} (a token may be [text, logprob, [top '
        "tokens], [top logprobs]]). openai: non-streaming chat.completion responses requested with "
        "logprobs and top_logprobs (choices[0].logprobs.content, message.content, reasoning_content), "
        'one per line or one JSON document, optionally wrapped as {"response": ..., "problem_id", '
        '"question", "reference", "correct"}. correct must be a JSON boolean; without it the text is '
        "graded against the reference. Tokens with NaN or infinite logprobs are kept as unknown and "
        "counted. Full format: the docstring of entropy_exit_integrations.lab.bench.traces.",
    )
    convert.add_argument(
        "--from",
        dest="shape",
        choices=("auto", "chunks", "topk", "openai"),
        default="auto",
        help="the input's shape (default: auto, told from the first row)",
    )
    options(convert, "recorded generations")
    chunks = subparsers.add_parser(
        "convert-chunks",
        help="turn raw OpenAI-format stream chunks (JSON lines) into a trace file",
        description="Read chat.completion.chunk objects saved one per line by any client (streams are "
        'told apart by their id; a line may wrap its chunk as {"chunk": ..., "problem_id": ..., '
        '"question": ..., "reference": ..., "kind": ..., "messages": [...]}), pair the streams '
        "in order with the questions of --dataset (a built-in set or a JSONL of questions) when the "
        "lines do not name them, grade them and write a trace file (schema entropy-exit-trace, "
        "version 1) for calibrate/bench --traces. Other shapes: `entropy-exit convert`.",
    )
    options(chunks, "JSONL file of raw stream chunks")
    chunks.set_defaults(shape="chunks")


_CONVERT_FIX = {
    "chunks": "give the JSONL file of chat.completion.chunk objects (one per line, as streamed; .gz is fine)",
    "auto": "give the file of recorded generations: stream chunks, top-k token lists or chat.completion "
    "responses (.gz is fine)",
}


def _run_convert(args: argparse.Namespace) -> int:
    from .bench.datasets import load_dataset
    from .bench.replay import save_traces
    from .bench.traces import convert_file

    label = "chunks file" if args.shape == "chunks" else "input file"
    path = _input_file(label, args.file, _CONVERT_FIX.get(args.shape, _CONVERT_FIX["auto"]))
    problems = None
    if args.dataset:
        _check_dataset(args.dataset)
        problems = load_dataset(args.dataset, split=args.split, seed=args.seed, offset=args.offset)
    converted = convert_file(path, args.shape, problems)
    save_traces(converted.traces, args.out)
    print(f"{converted.describe()}; written to {args.out}")
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
    parser.add_argument(
        "--n-calibration",
        type=_int_at_least(4),
        default=16,
        help="calibration questions, at least 4 (default: 16)",
    )
    parser.add_argument("--n-test", type=_int_at_least(1), default=8, help="test questions (default: 8)")
    parser.add_argument(
        "--max-tokens", type=_int_at_least(1), default=128, help="token budget per answer (default: 128)"
    )
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
    _add_setup_parser,
    _add_demo_parser,
    _add_serve_parser,
    _add_calibrate_parser,
    _add_bench_parser,
    _add_convert_parser,
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("entropy-exit-integrations")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``entropy-exit`` parser with every registered subcommand."""
    parser = _Parser(prog="entropy-exit", description="Entropy-based early exit for LLM generations.")
    parser.add_argument("--version", action="version", version=f"entropy-exit {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _PARSERS:
        add(subparsers)
    for sub in subparsers.choices.values():  # also accepted after the command
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


@contextlib.contextmanager
def _log_to_stderr(level: int) -> Iterator[None]:
    """Show the package's log records (build and install progress) on stderr for one command."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("entropy-exit: %(message)s"))
    logger = logging.getLogger("entropy_exit_integrations")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``entropy-exit``; returns the process exit code (2: bad input, 1: other failures).

    Argument errors exit through ``SystemExit(2)`` as argparse does, with a one-line message.
    """
    args = build_parser().parse_args(argv)
    try:
        with _log_to_stderr(logging.DEBUG if args.debug else logging.INFO):
            _resolve_model_defaults(args)
            return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        code, message = _explain(exc, args)
        if code == 2:
            message = " ".join(line.strip() for line in message.splitlines() if line.strip())
        elif not args.debug and not isinstance(exc, EntropyExitError):
            message += " (run again with --debug for the traceback)"
        print(f"entropy-exit {args.command}: error: {message}", file=sys.stderr)
        return code


def _explain(exc: BaseException, args: argparse.Namespace) -> tuple[int, str]:
    """(exit code, message) for an error that ended a command: 2 for bad input, else 1."""
    openai = sys.modules.get("openai")
    url = getattr(args, "base_url", None) or "the embedded server"
    if openai is not None and isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        request = getattr(getattr(exc, "request", None), "url", None)
        where = f"--base-url {args.base_url}" if getattr(args, "base_url", None) else str(request or url)
        return 2, (
            f"cannot connect to {where} ({type(cause).__name__}: {cause}): check --base-url (an "
            "OpenAI-compatible base URL, usually ending in /v1), start a server with `entropy-exit serve`, "
            "or leave --base-url out to use the embedded one"
        )
    if openai is not None and isinstance(exc, openai.AuthenticationError):
        return 2, f"{url} refused the API key ({exc.message}): pass the right one with --api-key"
    if openai is not None and isinstance(exc, openai.NotFoundError):
        return 2, (
            f"{url} answered 404 ({exc.message}): check --model (GET {url}/models lists the ids) and "
            "that --base-url is the OpenAI-compatible root (usually ending in /v1)"
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return 2, f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, (ServerError, StreamInterrupted)):
        return 1, str(exc)
    if isinstance(exc, EntropyExitError):
        return 2, str(exc)
    return 1, f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    raise SystemExit(main())
