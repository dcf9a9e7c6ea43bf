"""Record raw SSE chunks from the embedded llama.cpp server for adapter unit tests.

Starts ``LocalServer`` (or uses ``$ENTROPY_EXIT_BASE_URL``), sends four streamed requests with
httpx and writes each ``data:`` payload (the raw wire shape, ``[DONE]`` excluded) as one JSON
object per line to ``tests/data/recordings/``:

- ``llamacpp_chat_top20.jsonl``: chat, ``logprobs: true, top_logprobs: 20``, usage included.
- ``llamacpp_chat_top5.jsonl``: the same with ``top_logprobs: 5``.
- ``llamacpp_completions_logprobs5.jsonl``: legacy ``/v1/completions`` with ``logprobs: 5``.
- ``llamacpp_chat_nologprobs.jsonl``: chat without logprobs.

Usage: ``python benchmarks/record_chunks.py [--out DIR]``. Prints one line per file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx

from entropy_exit_integrations.lab.local import LocalServer

OUT_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "recordings"
QUESTION = "What is 17 + 25? Answer briefly."
CHAT = {"messages": [{"role": "user", "content": QUESTION}], "stream": True, "temperature": 0, "seed": 42}


def requests(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """File name -> (path, JSON body) of each recorded request."""
    usage = {"stream_options": {"include_usage": True}}
    return {
        "llamacpp_chat_top20.jsonl": (
            "/v1/chat/completions",
            {"model": model, **CHAT, "max_tokens": 64, "logprobs": True, "top_logprobs": 20, **usage},
        ),
        "llamacpp_chat_top5.jsonl": (
            "/v1/chat/completions",
            {"model": model, **CHAT, "max_tokens": 64, "logprobs": True, "top_logprobs": 5, **usage},
        ),
        "llamacpp_completions_logprobs5.jsonl": (
            "/v1/completions",
            {
                "model": model,
                "prompt": "The capital of France is",
                "stream": True,
                "max_tokens": 32,
                "temperature": 0,
                "seed": 42,
                "logprobs": 5,
                **usage,
            },
        ),
        "llamacpp_chat_nologprobs.jsonl": (
            "/v1/chat/completions",
            {"model": model, **CHAT, "max_tokens": 64, **usage},
        ),
    }


def record(client: httpx.Client, base_url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST ``body`` and return every ``data:`` payload of the SSE stream, parsed, in order."""
    chunks: list[dict[str, Any]] = []
    with client.stream("POST", base_url.removesuffix("/v1") + path, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data:"):
                payload = line[len("data:") :].strip()
                if payload != "[DONE]":
                    chunks.append(json.loads(payload))
    return chunks


def main(argv: list[str] | None = None) -> int:
    """Record all four streams; print file, chunk count and time for each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output directory (default: {OUT_DIR})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # No keep-alive: llama-server sometimes closes a connection right after a stream ends, and a
    # request sent on that reused connection fails with "Server disconnected without sending a response".
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with (
        LocalServer(parallel=1) as server,
        httpx.Client(timeout=120, trust_env=False, limits=no_reuse) as client,
    ):
        print(f"server: {server.base_url} model={server.model}")
        for name, (path, body) in requests(server.model).items():
            started = time.perf_counter()
            chunks = record(client, server.base_url, path, body)
            with open(args.out / name, "w") as handle:
                for chunk in chunks:
                    handle.write(json.dumps(chunk, ensure_ascii=False) + "\n")
            seconds = time.perf_counter() - started
            print(f"{name}: {len(chunks)} chunks in {seconds:.2f} s  POST {path} {json.dumps(body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
