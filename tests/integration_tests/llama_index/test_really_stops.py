"""Server-side evidence (llama-server's /metrics) that an exit stops the generation, sync and async.

Control first: closing LlamaIndex's own generator leaves the server generating.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from llama_index.core.base.llms.types import ChatMessage

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.llama_index import EntropyExitLLM

from .conftest import STORY, openai_like

BUDGET = 400
MESSAGES = [ChatMessage(role="user", content=STORY)]


def predicted(server: Any) -> float:
    return server.metrics()["llamacpp:tokens_predicted_total"]


def test_closing_llama_index_generator_alone_does_not_stop(llama_server: Any) -> None:
    llama_server.wait_until_idle(timeout=30)
    stream = openai_like(llama_server, max_tokens=100).stream_chat(MESSAGES)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    time.sleep(0.3)
    assert llama_server.metrics()["llamacpp:requests_processing"] == 1  # still generating
    llama_server.wait_until_idle(timeout=30)


def _assert_stopped(server: Any, before: float, report: dict) -> None:
    idle_after = server.wait_until_idle(timeout=2.0)
    time.sleep(0.2)
    spent = predicted(server) - before
    print(f"idle {idle_after:.2f}s after exit; server predicted {spent:.0f} tokens; budget {BUDGET}")
    assert report["exited"] and report["tokens_generated"] == 8
    assert idle_after < 1.0
    assert spent < 40  # the exit point plus the tokens in flight, not the 400-token budget


def test_exit_stops_server_sync(llama_server: Any) -> None:
    llama_server.wait_until_idle(timeout=30)
    before = predicted(llama_server)
    llm = EntropyExitLLM(
        llm=openai_like(llama_server, BUDGET), policy=ExitPolicy(threshold=10.0, min_tokens=8)
    )
    *_, last = llm.stream_chat(MESSAGES)
    _assert_stopped(llama_server, before, last.additional_kwargs["entropy_exit"])


async def test_exit_stops_server_async(llama_server: Any) -> None:
    llama_server.wait_until_idle(timeout=30)
    before = predicted(llama_server)
    llm = EntropyExitLLM(
        llm=openai_like(llama_server, BUDGET), policy=ExitPolicy(threshold=10.0, min_tokens=8)
    )
    response = await llm.achat(MESSAGES)
    _assert_stopped(llama_server, before, response.additional_kwargs["entropy_exit"])


async def test_consumer_closing_the_wrapper_stream_stops_server(llama_server: Any) -> None:
    llama_server.wait_until_idle(timeout=30)
    llm = EntropyExitLLM(llm=openai_like(llama_server, BUDGET), policy=ExitPolicy(threshold=0))
    stream = await llm.astream_chat(MESSAGES)
    async for i, _ in _enumerate(stream):
        if i == 5:
            break
    await stream.aclose()
    # LlamaIndex's callback wrapper does not close the generator it wraps; the wrapper's own
    # generator is finalised (and closes the HTTP response) on the next turns of the loop.
    assert await asyncio.to_thread(llama_server.wait_until_idle, 2.0) < 1.0


async def _enumerate(stream: Any) -> Any:
    i = 0
    async for item in stream:
        yield i, item
        i += 1
