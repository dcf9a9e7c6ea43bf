"""LlamaIndex LLMs pointed at the embedded llama.cpp server (the ``llama_server`` session fixture)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata, LogProb
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.llms.openai import OpenAI
from llama_index.llms.openai_like import OpenAILike

from entropy_exit_integrations.llama_index import http_clients

STORY = "Write a long story about a cat."


def openai_like(server: Any, max_tokens: int = 32) -> OpenAILike:
    return OpenAILike(
        model=server.model,
        api_base=server.base_url,
        api_key="sk-no-key",
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=4096,
        max_tokens=max_tokens,
        temperature=0,
        max_retries=0,
        **hooked_clients(),
    )


def hooked_clients() -> dict[str, Any]:
    """The documented way to a real abort: the capture hooks on the LLM's HTTP clients."""
    sync_client, async_client = http_clients()
    return {"http_client": sync_client, "async_http_client": async_client}


def openai_with_api_base(server: Any, max_tokens: int = 32) -> OpenAI:
    # LlamaIndex's OpenAI checks model names against its own table (context size, chat or
    # not): give it a known name; llama-server serves its one model whatever the name.
    return OpenAI(
        model="gpt-4o-mini",
        api_base=server.base_url,
        api_key="sk-no-key",
        max_tokens=max_tokens,
        temperature=0,
        max_retries=0,
        **hooked_clients(),
    )


INNER = {"openai_like": openai_like, "openai_api_base": openai_with_api_base}


@pytest.fixture(params=sorted(INNER))
def make_inner(request: pytest.FixtureRequest, llama_server: Any) -> Any:
    """A factory ``make_inner(max_tokens=...)`` for each way of pointing LlamaIndex at the server."""
    build = INNER[request.param]
    return lambda max_tokens=32: build(llama_server, max_tokens)


class RawHttpLLM(CustomLLM):
    """A LlamaIndex LLM that is not openai-SDK based: it reads llama-server's SSE with httpx and
    hands logprobs over only in LlamaIndex's own ``.logprobs`` (``raw`` stays None)."""

    base_url: str
    model: str
    max_tokens: int = 64
    with_logprobs: bool = True

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model, num_output=self.max_tokens)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        *_, last = self.stream_complete(prompt, formatted=formatted)
        return last

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": True,
        }
        if self.with_logprobs:
            body.update(logprobs=True, top_logprobs=20)

        def gen() -> Iterator[CompletionResponse]:
            text = ""
            with httpx.stream("POST", f"{self.base_url}/chat/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choices = json.loads(line[6:]).get("choices") or []
                    if not choices:
                        continue
                    delta = choices[0].get("delta", {}).get("content") or ""
                    entries = (choices[0].get("logprobs") or {}).get("content") or []
                    logprobs = [
                        [LogProb(token=t["token"], logprob=t["logprob"]) for t in e["top_logprobs"]]
                        for e in entries
                    ]
                    text += delta
                    yield CompletionResponse(text=text, delta=delta, logprobs=logprobs or None)

        return gen()
