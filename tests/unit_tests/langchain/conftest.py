"""A ChatOpenAI that talks to recorded llama.cpp streams through an httpx mock transport.

The SSE bodies are the real recorded chunks of tests/data/recordings (see the README there);
only the forcing reply in ``FORCED_REPLY`` is written by hand (marked where used).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from langchain_openai import ChatOpenAI

from tests.unit_tests.recordings import load_chunks

# Hand-written (not recorded): what llama.cpp sends when it continues a trailing assistant
# message - the prefix echoed in the first delta, then the answer.
FORCED_REPLY = "FORCED"


def sse(chunks: list[dict[str, Any]]) -> list[bytes]:
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def forced_chunks(prefix: str, answer: str = " 12") -> list[dict[str, Any]]:
    """A hand-written forcing reply: echo of ``prefix`` then ``answer``, llama.cpp's shape."""

    def chunk(text: str) -> dict[str, Any]:
        entry = {
            "token": text,
            "logprob": -0.01,
            "bytes": None,
            "top_logprobs": [{"token": text, "logprob": -0.01}],
        }
        return {
            "object": "chat.completion.chunk",
            "model": "smollm2-135m-instruct",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": text},
                    "finish_reason": None,
                    "logprobs": {"content": [entry]},
                }
            ],
        }

    end = {
        "object": "chat.completion.chunk",
        "model": "smollm2-135m-instruct",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    return [chunk(prefix + answer[:1]), chunk(answer[1:]), end]


@dataclass
class Replay:
    """Serves recordings in order of the requests; records request bodies and early closes."""

    recordings: list[str | Callable[[dict[str, Any]], list[dict[str, Any]]]]
    requests: list[dict[str, Any]] = field(default_factory=list)
    served: list[int] = field(default_factory=list)
    total: list[int] = field(default_factory=list)
    by_prompt: dict[str, str] = field(default_factory=dict)
    refuse_tools_logprobs: bool = False
    """Answer tools + stream + logprobs the way llama-server does (its real 400 body)."""
    refuse_n_probs: bool = False
    """Refuse llama.cpp's ``n_probs`` with tools too (a server that is not llama.cpp)."""

    def _chunks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        prompt = str(body["messages"][-1].get("content"))
        if prompt in self.by_prompt:
            return load_chunks(self.by_prompt[prompt])
        source = self.recordings[min(len(self.requests) - 1, len(self.recordings) - 1)]
        return source(body) if callable(source) else load_chunks(source)

    def handler(self, request: httpx.Request, is_async: bool = False) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        asks = body.get("logprobs") or (self.refuse_n_probs and body.get("n_probs"))
        if self.refuse_tools_logprobs and body.get("tools") and asks and body.get("stream"):
            error = {
                "code": 400,
                "message": "logprobs is not supported with tools + stream",
                "type": "invalid_request_error",
            }
            return httpx.Response(400, json={"error": error})
        parts = sse(self._chunks(body))
        slot = len(self.served)
        self.served.append(0)
        self.total.append(len(parts))

        def stream() -> Iterator[bytes]:
            for part in parts:
                self.served[slot] += 1
                yield part

        async def astream() -> Any:
            for part in parts:
                self.served[slot] += 1
                yield part

        content = astream() if is_async else stream()
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=content)

    def closed_early(self, slot: int = 0) -> bool:
        return self.served[slot] < self.total[slot]

    def chat(self, **kwargs: Any) -> ChatOpenAI:
        return ChatOpenAI(**self._params(base_url="http://127.0.0.1:8080/v1", **kwargs))

    def deepseek(self, **kwargs: Any) -> Any:
        """ChatDeepSeek (langchain-deepseek), which keeps the reasoning deltas ChatOpenAI drops."""
        from langchain_deepseek import ChatDeepSeek

        return ChatDeepSeek(**self._params(api_base="http://127.0.0.1:8080/v1", **kwargs))

    def _params(self, **kwargs: Any) -> dict[str, Any]:
        transport = httpx.MockTransport(self.handler)

        async def ahandler(request: httpx.Request) -> httpx.Response:
            return self.handler(request, is_async=True)

        params: dict[str, Any] = {
            "api_key": "none",
            "model": "smollm2-135m-instruct",
            "temperature": 0,
            "max_tokens": 64,
            "max_retries": 0,
            "http_client": httpx.Client(transport=transport),
            "http_async_client": httpx.AsyncClient(transport=httpx.MockTransport(ahandler)),
        }
        return {**params, **kwargs}


@pytest.fixture
def replay() -> Callable[..., Replay]:
    return lambda *recordings, **kw: Replay(list(recordings), **kw)
