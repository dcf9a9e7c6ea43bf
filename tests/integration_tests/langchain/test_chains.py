"""The LangChain integration end to end against the embedded llama.cpp server (real HTTP, no mocks).

Every test that exits checks server-side evidence: ``llamacpp:requests_processing`` back to 0
within 1 s and ``llamacpp:tokens_predicted_total`` far below ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI

from entropy_exit_integrations import EntropyExit, ExitPolicy, SavingsLedger
from entropy_exit_integrations.langchain import (
    AsyncEntropyExitCallbackHandler,
    ChatEntropyExit,
    EntropyExitCallbackHandler,
)

MAX_TOKENS = 120
POLICY = ExitPolicy(threshold=1.5, min_tokens=8)  # SmolLM2's story openings are confident quickly
STORY = "Write a very long, detailed story about {topic}. Use many paragraphs."
PROMPT = ChatPromptTemplate.from_template(STORY)


def _inner(server: Any, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=server.base_url,
        api_key="sk-no-key",
        model=server.model,
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        **kwargs,
    )


class _Predicted:
    """Server-side evidence: idle within 1 s of the last exit, and no more tokens predicted than
    the client read plus the few in flight when it closed (``IN_FLIGHT`` per stream)."""

    IN_FLIGHT = 12

    def __init__(self, server: Any) -> None:
        self.server = server
        server.wait_until_idle(timeout=10.0)  # a stream an earlier test cut may still be ending
        self.before = server.metrics()["llamacpp:tokens_predicted_total"]

    def check(self, reports: list[dict[str, Any]]) -> float:
        idle = self.server.wait_until_idle(timeout=1.0)  # raises if still generating after 1 s
        assert idle <= 1.0
        predicted = self.server.metrics()["llamacpp:tokens_predicted_total"] - self.before
        read = sum(r["tokens_generated"] for r in reports)
        assert read <= predicted <= read + self.IN_FLIGHT * len(reports), (predicted, read)
        exits = [r for r in reports if r["exited"]]
        assert exits and predicted < len(reports) * MAX_TOKENS
        if len(exits) == len(reports):
            assert predicted < len(reports) * MAX_TOKENS / 2  # far below the budget
        return predicted


def test_handler_aborts_the_chain_and_the_server_stops(llama_server: Any) -> None:
    evidence = _Predicted(llama_server)
    chain = PROMPT | _inner(llama_server, logprobs=True, top_logprobs=20, streaming=True) | StrOutputParser()
    handler = EntropyExitCallbackHandler(POLICY)
    with pytest.raises(EntropyExit) as caught:
        chain.invoke({"topic": "a lighthouse keeper"}, config={"callbacks": [handler]})
    report = caught.value.report
    assert report.exited
    # The partial text is exactly the tokens read before the exit.
    tokens = caught.value.partial.tokens
    assert len(tokens) == report.tokens_generated
    assert "".join(t.token for t in tokens).strip() == caught.value.partial_text.strip() != ""
    evidence.check([report.to_dict()])


def test_wrapper_chain_continues_with_the_truncated_answer(llama_server: Any) -> None:
    evidence = _Predicted(llama_server)
    ledger = SavingsLedger()
    llm = ChatEntropyExit(model=_inner(llama_server), policy=POLICY, ledger=ledger)
    chain = PROMPT | llm | StrOutputParser() | RunnableLambda(lambda text: f"<<{text}>>")
    out = chain.invoke({"topic": "a lighthouse keeper"})
    assert out.startswith("<<") and len(out) > 6
    evidence.check([r.to_dict() for r in ledger.reports])


def test_wrapper_forces_an_answer(llama_server: Any) -> None:
    llm = ChatEntropyExit(model=_inner(llama_server), policy=POLICY, force_answer=True)
    message = llm.invoke("What is 7 + 5? Explain step by step, then give the final answer.")
    report = message.response_metadata["entropy_exit"]
    assert report["exited"] and report["forced_answer_tokens"] > 0
    assert "Final answer:" in message.content


def test_batch_of_eight_has_per_input_reports(llama_server: Any) -> None:
    topics = ["a cat", "a dog", "the sea", "a robot", "a castle", "a tree", "the moon", "a train"]
    ledger = SavingsLedger()
    llm = ChatEntropyExit(model=_inner(llama_server), policy=POLICY, ledger=ledger)
    evidence = _Predicted(llama_server)
    messages = (PROMPT | llm).batch([{"topic": t} for t in topics], config={"max_concurrency": 4})
    assert len(messages) == 8 and len(ledger) == 8
    for message in messages:
        report = message.response_metadata["entropy_exit"]
        tokens = message.response_metadata["logprobs"]["content"]  # this input's own stream
        assert report["tokens_generated"] == len(tokens) == message.usage_metadata["output_tokens"]
        assert "".join(t["token"] for t in tokens).strip() == message.content.strip()
    evidence.check([m.response_metadata["entropy_exit"] for m in messages])


def test_batch_with_the_handler_keeps_runs_apart(llama_server: Any) -> None:
    handler = EntropyExitCallbackHandler(ExitPolicy(threshold=0.0), on_exit="record")
    llm = _inner(llama_server, logprobs=True, top_logprobs=20, streaming=True).bind(max_tokens=12)
    run_ids = [uuid.uuid4() for _ in range(4)]
    prompts = ["Say hi.", "Name a colour.", "Count to three.", "Name a fruit."]
    configs = [{"callbacks": [handler], "run_id": run_id} for run_id in run_ids]
    messages = llm.batch(prompts, config=configs)
    for run_id, message in zip(run_ids, messages):
        report = handler.reports[run_id]
        assert report.tokens_generated == len(message.response_metadata["logprobs"]["content"])


async def test_ainvoke_and_astream(llama_server: Any) -> None:
    ledger = SavingsLedger()
    llm = ChatEntropyExit(model=_inner(llama_server), policy=POLICY, ledger=ledger)
    chain = PROMPT | llm
    evidence = _Predicted(llama_server)
    invoked = await chain.ainvoke({"topic": "a lighthouse keeper"})
    streamed = None
    async for chunk in chain.astream({"topic": "a lighthouse keeper"}):
        streamed = chunk if streamed is None else streamed + chunk
    assert len(ledger) == 2
    for message in (invoked, streamed):  # each call's text is exactly the tokens its stream gave
        tokens = message.response_metadata["logprobs"]["content"]
        assert len(tokens) == message.response_metadata["entropy_exit"]["tokens_generated"]
        assert "".join(t["token"] for t in tokens).strip() == message.content.strip() != ""
    await asyncio.to_thread(evidence.check, [r.to_dict() for r in ledger.reports])


async def test_async_handler_aborts(llama_server: Any) -> None:
    evidence = _Predicted(llama_server)
    chain = PROMPT | _inner(llama_server, logprobs=True, top_logprobs=20, streaming=True) | StrOutputParser()
    handler = AsyncEntropyExitCallbackHandler(POLICY)
    with pytest.raises(EntropyExit) as caught:
        await chain.ainvoke({"topic": "a lighthouse keeper"}, config={"callbacks": [handler]})
    await asyncio.sleep(0)  # let the event loop finalise the aborted async generator
    await asyncio.to_thread(evidence.check, [caught.value.report.to_dict()])
