"""Agents, a chat engine and a query engine answering through EntropyExitLLM; bad inner LLMs.

What the tiny model does (SmolLM2-135M on llama-server, measured): it never emits a tool call
(its chat template has no tools, so llama-server's tool parser sees plain text), and
llama-server refuses ``logprobs`` with ``tools`` + ``stream`` (HTTP 400) but serves its native
``n_probs``: the engine retries with it, so every FunctionAgent step is monitored. The
ReActAgent sends no ``tools`` and is monitored and cut; the model does not follow the ReAct
format, and LlamaIndex takes its text as the answer.
"""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core import Document, SummaryIndex
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.tools import FunctionTool

from entropy_exit_integrations import ExitPolicy, LogprobsUnavailableError, SavingsLedger
from entropy_exit_integrations.llama_index import REPORT_KEY, EntropyExitEventHandler, EntropyExitLLM

from .conftest import RawHttpLLM, openai_like

CONFIDENT = ExitPolicy(threshold=10.0, min_tokens=8)  # exits at token 8: every call shows an exit


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


@pytest.mark.parametrize("policy", [ExitPolicy(threshold=0.0), CONFIDENT], ids=["no-exit", "exit"])
async def test_function_agent_steps_are_monitored_with_tools(llama_server: Any, policy: ExitPolicy) -> None:
    ledger = SavingsLedger()
    llm = EntropyExitLLM(llm=openai_like(llama_server, 48), policy=policy, ledger=ledger)
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm)
    result = await agent.run("What is 6 times 7? Use the multiply tool.")
    assert str(result).strip()
    assert len(ledger) >= 1  # one report per agent step
    for report in ledger.reports:  # tools + stream: llama.cpp's n_probs, so every step is monitored
        assert report.k == 20 and report.unknown_tokens == 0 and report.tokens_generated > 0
        assert report.exited is (policy is CONFIDENT)


async def test_react_agent_steps_exit_and_report(llama_server: Any) -> None:
    ledger = SavingsLedger()
    llm = EntropyExitLLM(llm=openai_like(llama_server, 64), policy=CONFIDENT, ledger=ledger)
    agent = ReActAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm)
    result = await agent.run("What is 6 times 7?")
    assert str(result).strip()
    assert len(ledger) >= 1 and all(r.exited for r in ledger.reports)
    assert (
        ledger.summary()["tokens_saved_vs_budget"]
        == sum(r.tokens_saved_vs_budget for r in ledger.reports)
        > 0
    )
    print("ReActAgent:", str(result)[:80], "|", ledger)


def test_simple_chat_engine(llama_server: Any) -> None:
    ledger = SavingsLedger()
    llm = EntropyExitLLM(llm=openai_like(llama_server, 64), policy=CONFIDENT, ledger=ledger)
    engine = SimpleChatEngine.from_defaults(llm=llm)
    response = engine.chat("What is the capital of France?")
    assert response.response.strip()
    # SimpleChatEngine keeps only the text; the report is on the wrapper and its ledger.
    assert llm.last_report is not None and llm.last_report.exited
    assert ledger.reports == [llm.last_report]


def test_summary_index_query_engine_report_on_response(llama_server: Any) -> None:
    docs = [
        Document(text="The Eiffel Tower is in Paris. It was finished in 1889."),
        Document(text="Paris is the capital of France."),
        Document(text="Cats sleep for about fifteen hours a day."),
    ]
    llm = EntropyExitLLM(llm=openai_like(llama_server, 64), policy=CONFIDENT)
    engine = SummaryIndex.from_documents(docs).as_query_engine(llm=llm)
    handler = EntropyExitEventHandler(policy=CONFIDENT)
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    try:
        response = engine.query("Where is the Eiffel Tower?")
    finally:
        dispatcher.event_handlers.remove(handler)
    assert str(response).strip()
    records = response.metadata[REPORT_KEY]
    assert records and all(r["source"] == "wrapper" and r["report"]["exited"] for r in records)
    assert [r.source for r in handler.records] == ["wrapper"] * len(records)


def test_plain_llm_calls_are_measured_by_the_handler(llama_server: Any) -> None:
    plain = openai_like(llama_server, 32)
    plain.logprobs, plain.top_logprobs = True, 20
    handler = EntropyExitEventHandler(policy=CONFIDENT)
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    try:
        plain.complete("Say hello.")
        *_, last = plain.stream_complete("Say hello.")
    finally:
        dispatcher.event_handlers.remove(handler)
    assert [r.source for r in handler.records] == ["monitor", "monitor"]
    for record in handler.records:
        assert record.would_exit_at == 7 and record.tokens_after_exit == record.report.tokens_generated - 8


def test_non_openai_llm_with_logprobs_is_monitored(llama_server: Any) -> None:
    inner = RawHttpLLM(base_url=llama_server.base_url, model=llama_server.model, max_tokens=64)
    llm = EntropyExitLLM(llm=inner, policy=CONFIDENT)
    response = llm.complete("Write a long story about a cat.")
    assert response.additional_kwargs[REPORT_KEY]["exited"]
    assert response.additional_kwargs[REPORT_KEY]["tokens_generated"] == 8


def test_llm_without_logprobs_is_a_clear_error(llama_server: Any) -> None:
    inner = RawHttpLLM(
        base_url=llama_server.base_url, model=llama_server.model, max_tokens=16, with_logprobs=False
    )
    llm = EntropyExitLLM(llm=inner, policy=CONFIDENT)
    with pytest.raises(LogprobsUnavailableError, match="no logprobs"):
        llm.complete("Say hello.")
