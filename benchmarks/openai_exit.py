"""Tokens and server time with and without entropy exit, over the openai SDK, on GSM8K.

For each of N GSM8K test questions, one request without exit (threshold 0) and one with the
policy, run one after the other on the same server so that the server's own counters
(``/metrics``: tokens predicted and seconds spent predicting) can be read per request. Also
measures the client-side cost of monitoring: the chunks of every exit run are kept and processed
again through the same adapter + session code, and that time is divided by the stream's wall time.

    python benchmarks/openai_exit.py                      # embedded server, 20 questions
    python benchmarks/openai_exit.py --base-url URL --model M --n 50 --threshold 1.2

The default threshold is NOT calibrated (SmolLM2-135M solves no GSM8K problem, so there is
nothing to calibrate on): the run measures mechanics (tokens, server time, overhead), and prints
accuracy only to show what was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections.abc import Iterator
from typing import Any

import openai

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.engine import MonitoredCall
from entropy_exit_integrations.lab.bench.datasets import load_dataset, messages_for
from entropy_exit_integrations.lab.bench.graders import grade
from entropy_exit_integrations.lab.local import LocalServer
from entropy_exit_integrations.openai import ExitResult, stream_chat
from entropy_exit_integrations.providers import parse_chat_chunk


@contextlib.contextmanager
def server_for(base_url: str | None) -> Iterator[LocalServer]:
    with LocalServer(parallel=1, base_url=base_url) as server:
        yield server


def server_counters(server: LocalServer) -> tuple[float, float]:
    try:
        metrics = server.metrics()
    except Exception:  # noqa: BLE001 - servers without /metrics (vLLM names differ): no server figures
        return float("nan"), float("nan")
    return metrics.get("llamacpp:tokens_predicted_total", float("nan")), metrics.get(
        "llamacpp:tokens_predicted_seconds_total", float("nan")
    )


def measured(server: LocalServer, run: Any) -> tuple[ExitResult, float, float]:
    """Result, server tokens and server seconds of one request (waits until the server is idle)."""
    tokens0, seconds0 = server_counters(server)
    result = run()
    with contextlib.suppress(Exception):
        server.wait_until_idle(timeout=5.0)
    time.sleep(0.05)
    tokens1, seconds1 = server_counters(server)
    return result, tokens1 - tokens0, seconds1 - seconds0


def client_processing_seconds(result: ExitResult, policy: ExitPolicy) -> float:
    """Time to run the kept chunks through the adapter and the engine again: the client's share."""
    session = MonitoredCall(policy)
    started = time.perf_counter()
    for chunk in result.chunks or []:
        session.feed(parse_chat_chunk(chunk))
        if session.should_stop:
            break
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url")
    parser.add_argument("--model")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threshold", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=16)
    args = parser.parse_args()
    policy = ExitPolicy(threshold=args.threshold, aggregation="window", window=args.window, min_tokens=16)
    never = ExitPolicy(threshold=0.0)
    problems = load_dataset("gsm8k", n=args.n)
    with server_for(args.base_url) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-no-key")
        model = args.model or server.model
        rows = []
        for problem in problems:
            kwargs = dict(
                model=model, messages=messages_for(problem), max_tokens=args.max_tokens, temperature=0
            )
            base, base_tok, base_s = measured(
                server, functools.partial(stream_chat, client, policy=never, **kwargs)
            )
            cut, cut_tok, cut_s = measured(
                server,
                functools.partial(
                    stream_chat, client, policy=policy, force_answer=True, keep_chunks=True, **kwargs
                ),
            )
            overhead = client_processing_seconds(cut, policy) / cut.report.wall_time_s
            rows.append((problem, base, base_tok, base_s, cut, cut_tok, cut_s, overhead))
            print(
                f"{problem.id:>14}  base {base.report.tokens_generated:4d} tok {base_s:6.2f} s"
                f" {'ok' if grade('numeric', base.text, problem.answer) else '--'}"
                f"  | exit {cut.report.tokens_generated:4d} tok (forced {cut.report.forced_answer_tokens:2d})"
                f" server {cut_tok:4.0f} tok {cut_s:6.2f} s"
                f" {'ok' if grade('numeric', cut.text, problem.answer) else '--'}"
                f"  client share {overhead:.3%}"
            )
    base_tokens = sum(r[1].report.tokens_generated for r in rows)
    cut_tokens = sum(r[4].report.tokens_generated for r in rows)
    base_seconds = sum(r[3] for r in rows)
    cut_seconds = sum(r[6] for r in rows)
    exits = sum(r[4].report.exited for r in rows)
    shares = sorted(r[7] for r in rows)
    print()
    print(f"model {model}, {len(rows)} GSM8K questions, policy {policy.to_json()} (uncalibrated)")
    print(f"exits: {exits}/{len(rows)}")
    print(
        f"tokens generated: baseline {base_tokens}, with exit {cut_tokens} (forcing included)"
        f" -> ratio {cut_tokens / base_tokens:.3f}"
    )
    print(
        f"server predict seconds: baseline {base_seconds:.2f}, with exit {cut_seconds:.2f}"
        f" -> ratio {cut_seconds / base_seconds:.3f}"
    )
    print(
        f"accuracy: baseline {sum(grade('numeric', r[1].text, r[0].answer) for r in rows)}/{len(rows)},"
        f" with exit {sum(grade('numeric', r[4].text, r[0].answer) for r in rows)}/{len(rows)}"
    )
    print(
        f"client-side processing / stream time: median {shares[len(shares) // 2]:.3%}, max {shares[-1]:.3%}"
    )


if __name__ == "__main__":
    main()
