"""Record real ``reasoning_content`` chunks from the embedded llama.cpp server.

Starts llama-server with the ChatML thinking template (see local/templates/README.md), sends one
streamed chat request with top-20 logprobs and writes every SSE ``data:`` payload, verbatim, as
one JSON line to tests/data/recordings/llamacpp_reasoning_content_top20.jsonl.

    python benchmarks/record_reasoning_chunks.py
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from entropy_exit_integrations.lab.local import LocalServer
from entropy_exit_integrations.lab.local.reasoning import reasoning_args

OUT = Path(__file__).resolve().parent.parent / "tests/data/recordings/llamacpp_reasoning_content_top20.jsonl"
REQUEST = {
    "messages": [{"role": "user", "content": "What is 7 + 5? Think step by step."}],
    "max_tokens": 48,
    "temperature": 0,
    "stream": True,
    "logprobs": True,
    "top_logprobs": 20,
    "stream_options": {"include_usage": True},
}


def main() -> None:
    with LocalServer(parallel=1, extra_args=reasoning_args()) as server:
        payloads = []
        # A fresh connection: llama-server may close a kept-alive one right after a stream.
        with (
            httpx.Client(timeout=60) as http,
            http.stream("POST", f"{server.base_url}/chat/completions", json=REQUEST) as r,
        ):
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    payloads.append(json.loads(line[len("data: ") :]))
    OUT.write_text("".join(json.dumps(p) + "\n" for p in payloads))
    print(f"wrote {len(payloads)} chunks to {OUT}")


if __name__ == "__main__":
    main()
