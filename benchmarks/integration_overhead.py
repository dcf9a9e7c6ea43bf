"""Per-token cost of each integration against the same framework without the package.

A local SSE server (loopback, this process) replays recorded llama.cpp top-20 chat chunks as one
long stream (default 20,000 tokens), as fast as the client reads. Each pair runs in this one
process, alternating, best of ``--repeat``:

* openai SDK: ``client.chat.completions.create(stream=True)`` iterated  vs  ``stream_chat``;
* LangChain: ``ChatOpenAI(...).stream`` iterated  vs  ``ChatEntropyExit(model=...).stream``, and
  vs a do-nothing wrapper (a ``BaseChatModel`` that passes the inner chunks on: the floor);
* LlamaIndex: ``OpenAILike(...).stream_chat`` iterated  vs  ``EntropyExitLLM(...).stream_chat``
  (sync) and the same with ``astream_chat`` (async).

The policy never exits (threshold 0), so both sides read the whole stream. ``keep_tokens=False``
rows leave out the per-token candidates a result otherwise keeps (``ExitOptions.keep_tokens``).
Printed per pair: microseconds per token (bare, monitored, ratio), the ratio of the last 5,000
tokens' time to the first 5,000's (flat is 1.0; the last item is left out), the seconds after
the last-but-one item (the end of the stream, see ``timed``), and memory kept per token
(tracemalloc peak over the run, divided by the tokens; a separate pass, since tracing slows
everything).

    python benchmarks/integration_overhead.py [--tokens 20000] [--repeat 3] [--only langchain]

``--only NAME`` (repeatable) keeps the rows whose name contains NAME (case-insensitive: ``openai``,
``langchain``, ``llamaindex``/``llama``); the other frameworks are then not imported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RECORDING = Path(__file__).resolve().parent.parent / "tests/data/recordings/llamacpp_chat_top20.jsonl"


def sse_body(n_tokens: int) -> bytes:
    chunks = [json.loads(line) for line in RECORDING.read_text().splitlines() if line.strip()]
    tokens = [c for c in chunks if c["choices"] and c["choices"][0].get("logprobs")]
    events = []
    for i in range(n_tokens):
        chunk = json.loads(json.dumps(tokens[i % len(tokens)]))
        chunk["choices"][0]["finish_reason"] = None
        events.append(f"data: {json.dumps(chunk)}\n\n")
    last = {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
    }
    usage = {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": n_tokens, "total_tokens": n_tokens + 10},
    }
    events += [f"data: {json.dumps(last)}\n\n", f"data: {json.dumps(usage)}\n\n", "data: [DONE]\n\n"]
    return "".join(events).encode()


def serve(body: bytes) -> str:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}/v1"


def timed(consume: Callable[[Callable[[], None]], None], n: int) -> tuple[float, float, float]:
    """Total seconds; last-5000 / first-5000 time over the items before the last one; and the
    seconds from the last-but-one item to the end (ticks at every item the consumer reads).

    The end is apart because LangChain's ``stream`` merges every chunk of the run for its
    callbacks after the last token (a merge that grows with the square of the stream): bare, that
    comes after the last item; wrapped, the inner model's merge comes before the wrapper's last
    chunk, which carries the report. It is in the totals either way."""
    stamps: list[float] = []
    start = time.perf_counter()
    consume(lambda: stamps.append(time.perf_counter()))
    end = time.perf_counter()
    k = min(5000, (len(stamps) - 1) // 4)
    first = stamps[k] - stamps[0]
    last = stamps[-2] - stamps[-2 - k]
    return end - start, last / first if first > 0 else float("nan"), end - stamps[-2]


def openai_pairs(url: str, n: int) -> dict[str, tuple[Callable, Callable]]:
    import openai

    from entropy_exit_integrations import ExitPolicy
    from entropy_exit_integrations.openai import iter_chat

    never = ExitPolicy(threshold=0.0)
    messages = [{"role": "user", "content": "go"}]
    client = openai.OpenAI(base_url=url, api_key="x")
    kwargs = {"model": "m", "messages": messages, "max_tokens": n, "logprobs": True, "top_logprobs": 20}

    def bare_openai(tick: Callable[[], None]) -> None:
        for _ in client.chat.completions.create(stream=True, **kwargs):
            tick()

    def ours_openai(tick: Callable[[], None], keep: bool = True) -> None:
        with iter_chat(client, policy=never, keep_tokens=keep, **kwargs) as stream:
            for _ in stream:
                tick()

    return {
        "openai SDK (stream_chat)": (bare_openai, ours_openai),
        "openai SDK (stream_chat, keep_tokens=False)": (bare_openai, lambda tick: ours_openai(tick, False)),
    }


def langchain_pairs(url: str, n: int) -> dict[str, tuple[Callable, Callable]]:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.outputs import ChatGenerationChunk
    from langchain_openai import ChatOpenAI

    from entropy_exit_integrations import ExitPolicy
    from entropy_exit_integrations.langchain import ChatEntropyExit

    never = ExitPolicy(threshold=0.0)
    chat = ChatOpenAI(base_url=url, api_key="x", model="m", max_tokens=n, logprobs=True, top_logprobs=20)
    wrapped = ChatEntropyExit(model=chat, policy=never)

    def bare_lc(tick: Callable[[], None]) -> None:
        for _ in chat.stream("go"):
            tick()

    lean = ChatEntropyExit(model=chat, policy=never, keep_tokens=False)

    def ours_lc(tick: Callable[[], None], monitored: Any = wrapped) -> None:
        for _ in monitored.stream("go"):
            tick()

    class Relay(BaseChatModel):  # the floor: a wrapper that only passes the inner chunks on
        inner: Any

        @property
        def _llm_type(self) -> str:
            return "relay"

        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
            for chunk in self.inner.stream(messages, {"callbacks": []}, **kw):
                yield ChatGenerationChunk(message=chunk)

    relay = Relay(inner=chat)

    def relay_lc(tick: Callable[[], None]) -> None:
        for _ in relay.stream("go"):
            tick()

    return {
        "LangChain ChatOpenAI.stream (ChatEntropyExit)": (bare_lc, ours_lc),
        "LangChain ChatOpenAI.stream (ChatEntropyExit, keep_tokens=False)": (
            bare_lc,
            lambda tick: ours_lc(tick, lean),
        ),
        "LangChain ChatOpenAI.stream (do-nothing wrapper: the floor)": (bare_lc, relay_lc),
    }


def llama_index_pairs(url: str, n: int) -> dict[str, tuple[Callable, Callable]]:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    from entropy_exit_integrations import ExitPolicy
    from entropy_exit_integrations.llama_index import EntropyExitLLM, http_clients

    never = ExitPolicy(threshold=0.0)
    sync_client, async_client = http_clients()
    inner = OpenAILike(
        model="m",
        api_base=url,
        api_key="x",
        is_chat_model=True,
        max_tokens=n,
        logprobs=True,
        top_logprobs=20,
        http_client=sync_client,
        async_http_client=async_client,
    )
    llm = EntropyExitLLM(llm=inner, policy=never)
    lean = EntropyExitLLM(llm=inner, policy=never, keep_tokens=False)
    li_messages = [ChatMessage(role="user", content="go")]

    def bare_li(tick: Callable[[], None]) -> None:
        for _ in inner.stream_chat(li_messages):
            tick()

    def ours_li(tick: Callable[[], None], monitored: Any = llm) -> None:
        for _ in monitored.stream_chat(li_messages):
            tick()

    def abare_li(tick: Callable[[], None]) -> None:
        async def run() -> None:
            async for _ in await inner.astream_chat(li_messages):
                tick()

        asyncio.run(run())

    def aours_li(tick: Callable[[], None]) -> None:
        async def run() -> None:
            async for _ in await llm.astream_chat(li_messages):
                tick()

        asyncio.run(run())

    return {
        "LlamaIndex stream_chat (EntropyExitLLM)": (bare_li, ours_li),
        "LlamaIndex stream_chat (EntropyExitLLM, keep_tokens=False)": (
            bare_li,
            lambda tick: ours_li(tick, lean),
        ),
        "LlamaIndex astream_chat (EntropyExitLLM)": (abare_li, aours_li),
    }


PAIRS = {"openai": openai_pairs, "langchain": langchain_pairs, "llamaindex": llama_index_pairs}


def pairs(url: str, n: int, only: list[str] | None = None) -> dict[str, tuple[Callable, Callable]]:
    """The (bare, monitored) consumers, of the integrations ``only`` names (all by default)."""
    wanted = [w.lower().replace("_", "").replace(" ", "") for w in only or []]
    chosen: dict[str, tuple[Callable, Callable]] = {}
    for key, build in PAIRS.items():
        if not wanted or any(w in key or key in w for w in wanted):
            chosen.update(build(url, n))
    return chosen


def kept_per_token(consume: Callable, n: int) -> float:
    tracemalloc.start()
    consume(lambda: None)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / n / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="openai, langchain or llamaindex (repeatable)"
    )
    args = parser.parse_args()
    n = args.tokens
    url = serve(sse_body(n))
    print(f"{n} tokens per stream, best of {args.repeat}, recorded llama.cpp top-20 chunks")
    print(
        "| integration | bare us/token | monitored us/token | ratio "
        "| flat (last/first 5k) bare, ours | end s bare, ours | KB/token bare, ours |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (bare, ours) in pairs(url, n, args.only).items():
        best_bare = best_ours = (float("inf"), 0.0, 0.0)
        for _ in range(args.repeat):
            best_bare = min(best_bare, timed(bare, n))
            best_ours = min(best_ours, timed(ours, n))
        kb = (kept_per_token(bare, n), kept_per_token(ours, n))
        print(
            f"| {name} | {best_bare[0] / n * 1e6:.1f} | {best_ours[0] / n * 1e6:.1f} | "
            f"{best_ours[0] / best_bare[0]:.3f} | {best_bare[1]:.2f}, {best_ours[1]:.2f} | "
            f"{best_bare[2]:.2f}, {best_ours[2]:.2f} | "
            f"{kb[0]:.2f}, {kb[1]:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
