"""Cost per token of the adapter + monitor, against merely parsing the chunks with json.loads.

Replays the recorded llama.cpp top-20 chat chunks (tests/data/recordings/llamacpp_chat_top20.jsonl)
as raw SSE payload strings, cycled up to N tokens, and times side by side in one run:

* ``json.loads``                 - the floor: any client must at least parse the chunk;
* ``json.loads + adapter + monitor`` - the full path (parse_chat_chunk -> MonitoredCall.feed,
  the engine every integration runs);
* ``monitor only``               - EntropyMonitor.observe on already-built TokenLogprob records.

    python benchmarks/overhead.py [--tokens 1000000] [--repeat 3]

Prints microseconds per token (best of --repeat) and the ratio full / json.loads.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from openai.types.chat import ChatCompletionChunk

from entropy_exit_integrations import EntropyMonitor, ExitOptions, ExitPolicy
from entropy_exit_integrations.engine import MonitoredCall
from entropy_exit_integrations.providers import parse_chat_chunk

RECORDING = Path(__file__).resolve().parent.parent / "tests/data/recordings/llamacpp_chat_top20.jsonl"


def token_payloads(n_tokens: int) -> list[str]:
    chunks = [json.loads(line) for line in RECORDING.read_text().splitlines() if line.strip()]
    with_tokens = [json.dumps(c) for c in chunks if c["choices"] and c["choices"][0].get("logprobs")]
    return [with_tokens[i % len(with_tokens)] for i in range(n_tokens)]


def best_of(repeat: int, *works: Callable[[], None]) -> list[float]:
    """Best time of each work over ``repeat`` rounds; the works alternate within a round, so a
    burst of load from elsewhere on the machine hits all of them rather than one."""
    best = [float("inf")] * len(works)
    for _ in range(repeat):
        for i, work in enumerate(works):
            started = time.perf_counter()
            work()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    payloads = token_payloads(args.tokens)
    policy = ExitPolicy(threshold=0.0, aggregation="window", window=32)  # never exits: every token is seen
    loads = json.loads

    def parse_only() -> None:
        for payload in payloads:
            loads(payload)

    def full_path() -> None:
        session = MonitoredCall(ExitOptions(policy=policy, keep_tokens=False))
        feed = session.feed
        for payload in payloads:
            feed(parse_chat_chunk(loads(payload)))

    # What the openai SDK hands to stream_chat: pydantic chunk objects (fewer, they are slow to build).
    sdk_chunks = [ChatCompletionChunk.model_validate(loads(p)) for p in payloads[: len(payloads) // 10]]

    def sdk_full_path() -> None:
        session = MonitoredCall(ExitOptions(policy=policy, keep_tokens=False))
        feed = session.feed
        for chunk in sdk_chunks:
            feed(parse_chat_chunk(chunk))

    tokens = [t for p in payloads[:10_000] for t in parse_chat_chunk(loads(p)).tokens]
    tokens = (tokens * (args.tokens // len(tokens) + 1))[: args.tokens]

    def monitor_only() -> None:
        observe = EntropyMonitor(policy).observe
        for token in tokens:
            observe(token)

    k = tokens[0].k
    n = args.tokens
    t_json, t_full, t_monitor, t_sdk = best_of(
        args.repeat, parse_only, full_path, monitor_only, sdk_full_path
    )
    print(f"{n:,} tokens, k = {k}, best of {args.repeat}")
    print(f"  json.loads only                 {t_json / n * 1e6:7.2f} us/token")
    print(f"  json.loads + adapter + monitor  {t_full / n * 1e6:7.2f} us/token")
    print(f"  monitor only                    {t_monitor / n * 1e6:7.2f} us/token")
    print(
        f"  adapter + monitor overhead      {(t_full - t_json) / n * 1e6:7.2f} us/token "
        f"= {(t_full / t_json - 1):.1%} over json.loads (ratio {t_full / t_json:.3f})"
    )
    print(f"  adapter + monitor on openai SDK chunk objects {t_sdk / len(sdk_chunks) * 1e6:7.2f} us/token")


if __name__ == "__main__":
    main()
