"""EntropyExitCallbackHandler over real recorded llama.cpp streams (ChatOpenAI + mock transport)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate

from entropy_exit_integrations import EntropyExit, ExitPolicy, LogprobsUnavailableError, SavingsLedger
from entropy_exit_integrations.langchain import (
    AsyncEntropyExitCallbackHandler,
    EntropyExitCallbackHandler,
    NoTokenEventsError,
)

TOP20 = "llamacpp_chat_top20.jsonl"
TOP5 = "llamacpp_chat_top5.jsonl"
EAGER = ExitPolicy(threshold=3.0, min_tokens=3)  # exits a few tokens into "17 + 25 = 32."
NEVER = ExitPolicy(threshold=0.0)


def _chain(llm: Any) -> Any:
    return ChatPromptTemplate.from_template("{q}") | llm | StrOutputParser()


def test_raise_aborts_mid_chain_and_closes_the_stream(replay: Any) -> None:
    server = replay(TOP20)
    llm = server.chat(logprobs=True, top_logprobs=20, streaming=True)
    ledger = SavingsLedger()
    handler = EntropyExitCallbackHandler(EAGER, ledger=ledger)
    with pytest.raises(EntropyExit) as caught:
        _chain(llm).invoke({"q": "What is 17 + 25? Answer briefly."}, config={"callbacks": [handler]})
    error = caught.value
    assert error.report.exited and error.report.tokens_generated >= 3
    assert error.partial_text and "17 + 25 = 32.".startswith(error.partial_text)
    assert server.closed_early(0)  # the HTTP body was not read to its end
    assert len(ledger) == 1 and list(handler.reports.values()) == [error.report]
    assert handler.raise_error is True


def test_invoke_streams_with_the_streaming_flag(replay: Any) -> None:
    server = replay(TOP20)
    handler = EntropyExitCallbackHandler(NEVER, on_exit="record")
    llm = server.chat(logprobs=True, top_logprobs=20, streaming=True)
    message = llm.invoke("hi", config={"callbacks": [handler]})
    assert server.requests[0]["stream"] is True
    (report,) = handler.reports.values()
    # The server's count (its usage block: 11 streamed tokens + the end-of-turn token).
    assert not report.exited and report.tokens_generated == 12 and report.k == 20
    assert report.usage_source == "server" and report.finish_reason == "stop"
    assert message.response_metadata["entropy_exit"]["tokens_generated"] == 12


def test_record_reports_without_aborting(replay: Any) -> None:
    server = replay(TOP20)
    handler = EntropyExitCallbackHandler(EAGER, on_exit="record")
    text = _chain(server.chat(logprobs=True, top_logprobs=20, streaming=True)).invoke(
        {"q": "x"}, config={"callbacks": [handler]}
    )
    assert text == "17 + 25 = 32."
    (report,) = handler.reports.values()
    # "record" never cuts: no exit, no savings, but where the policy would have stopped.
    assert (
        not report.exited and report.exit_token_index is None and report.tokens_saved_vs_budget in (0, None)
    )
    assert report.decision_token_index == 2  # min_tokens=3: the third token
    assert not server.closed_early(0)


def test_concurrent_runs_do_not_mix(replay: Any) -> None:
    server = replay(TOP20, by_prompt={"a": TOP20, "b": TOP5})
    handler = EntropyExitCallbackHandler(NEVER, on_exit="record")
    out = _chain(server.chat(logprobs=True, top_logprobs=20, streaming=True)).batch(
        [{"q": "a"}, {"q": "b"}, {"q": "a"}], config={"callbacks": [handler]}
    )
    assert out == ["17 + 25 = 32."] * 3
    ks = sorted(r.k for r in handler.reports.values())
    assert ks == [5, 20, 20]
    assert all(r.tokens_generated == 12 and r.usage_source == "server" for r in handler.reports.values())


def test_missing_logprobs_says_how_to_ask(replay: Any) -> None:
    server = replay("llamacpp_chat_nologprobs.jsonl")
    handler = EntropyExitCallbackHandler(EAGER)
    with pytest.raises(LogprobsUnavailableError, match=r"top_logprobs=20"):
        server.chat(streaming=True).invoke("hi", config={"callbacks": [handler]})


class _NoStream(BaseChatModel):
    @property
    def _llm_type(self) -> str:
        return "no-stream"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage("an answer"))])


def test_no_token_events_fail_clearly() -> None:
    handler = EntropyExitCallbackHandler(EAGER)
    with pytest.raises(NoTokenEventsError, match=r"streaming=True"):
        _NoStream().invoke("hi", config={"callbacks": [handler]})


def test_bad_on_exit() -> None:
    with pytest.raises(ValueError, match="on_exit"):
        EntropyExitCallbackHandler(EAGER, on_exit="stop")  # type: ignore[arg-type]


async def test_async_handler_raises(replay: Any) -> None:
    server = replay(TOP20)
    handler = AsyncEntropyExitCallbackHandler(EAGER)
    with pytest.raises(EntropyExit) as caught:
        await _chain(server.chat(logprobs=True, top_logprobs=20, streaming=True)).ainvoke(
            {"q": "x"}, config={"callbacks": [handler]}
        )
    assert caught.value.report.exited
    assert server.closed_early(0)


async def test_sync_handler_in_async_chain_records(replay: Any) -> None:
    server = replay(TOP20)
    handler = EntropyExitCallbackHandler(NEVER, on_exit="record")
    chunks = [
        c
        async for c in _chain(server.chat(logprobs=True, top_logprobs=20, streaming=True)).astream(
            {"q": "x"}, config={"callbacks": [handler]}
        )
    ]
    assert "".join(chunks) == "17 + 25 = 32."
    assert [r.tokens_generated for r in handler.reports.values()] == [12]
