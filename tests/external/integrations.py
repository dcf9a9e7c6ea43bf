"""One driver per public integration x sync/async, each turning a call into the same ``Outcome``.

* ``openai``: ``stream_chat`` / ``astream_chat`` over ``openai.OpenAI`` / ``openai.AsyncOpenAI``;
* ``wrapper``: ``ChatEntropyExit(model=ChatDeepSeek(api_base=...))`` (keeps reasoning deltas),
  ``invoke`` / ``ainvoke``;
* ``handler``: ``EntropyExitCallbackHandler`` / ``AsyncEntropyExitCallbackHandler`` (``on_exit="raise"``)
  on ``ChatOpenAI(streaming=True, logprobs=True, top_logprobs=k, stream_usage=True)``: its exit is
  an ``EntropyExit`` whose ``partial`` is the result, a normal end is ``handler.last_result``;
  it never forces an answer;
* ``llamaindex``: ``EntropyExitLLM(llm=OpenAILike(..., http_client=..., async_http_client=...))``,
  ``chat`` / ``achat``.

The tests expect the same report fields from all of them (``assert_no_exit``, ``assert_exited``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from entropy_exit_integrations import EntropyExit, ExitPolicy, SavingsReport

from .conftest import MIN_TOKENS, TIMEOUT, External, Plain


@dataclass
class Outcome:
    """What a call gave, whatever the integration: the answer, the reasoning, the report."""

    text: str
    reasoning: str
    report: SavingsReport
    forced_answer: str | None = None
    tokens: int | None = None
    native: Any = field(default=None, repr=False)
    sees_reasoning: bool = True
    """False for the callback handler: ChatOpenAI drops reasoning deltas before any callback sees
    them (a LangChain decision), so the handler takes reasoning tokens for answer tokens with no
    text. Use ``ChatEntropyExit``, which reads them from the raw chunks, for reasoning models."""


def outcome_of(result: Any, sees_reasoning: bool = True) -> Outcome:
    """An ``ExitResult`` (openai helpers, the handler's results) as an ``Outcome``."""
    return Outcome(
        text=result.text,
        reasoning=result.reasoning or "",
        report=result.report,
        forced_answer=result.forced_answer,
        tokens=len(result.tokens),
        native=result,
        sees_reasoning=sees_reasoning,
    )


def _report(data: Any, where: str) -> SavingsReport:
    assert isinstance(data, dict), f"no report in {where}: {data!r}"
    return SavingsReport.from_dict(data)


def _chat_openai(external: External, max_tokens: int, reasoning: bool = False, **kwargs: Any) -> Any:
    """ChatOpenAI, or with ``reasoning`` ChatDeepSeek (langchain-deepseek), the partner class that
    keeps the reasoning deltas ChatOpenAI drops; both talk to any OpenAI-compatible server."""
    if reasoning:
        from langchain_deepseek import ChatDeepSeek as model_class

        where = {"api_base": external.base_url}
    else:
        from langchain_openai import ChatOpenAI as model_class

        where = {"base_url": external.base_url}
    # An httpx.Timeout (unhashable) keeps langchain-openai from sharing a cached httpx client.
    return model_class(
        **where,
        api_key=external.api_key,
        model=external.model,
        temperature=0,
        max_tokens=max_tokens,
        max_retries=0,
        timeout=httpx.Timeout(TIMEOUT),
        **kwargs,
    )


@dataclass(frozen=True)
class Driver:
    integration: str
    is_async: bool

    @property
    def id(self) -> str:
        return f"{self.integration}-{'async' if self.is_async else 'sync'}"

    @property
    def forces(self) -> bool:
        """Whether it can force an answer (the callback handler only observes and aborts)."""
        return self.integration != "handler"

    async def run(
        self,
        external: External,
        policy: ExitPolicy,
        messages: list[dict[str, str]],
        max_tokens: int,
        force_answer: bool | None = None,
    ) -> Outcome:
        method = getattr(self, "_" + self.integration)
        return await method(external, policy, messages, max_tokens, force_answer)

    async def _openai(self, external, policy, messages, max_tokens, force_answer) -> Outcome:
        from entropy_exit_integrations.openai import astream_chat, stream_chat

        kwargs = dict(
            policy=policy,
            force_answer=force_answer,
            model=external.model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
        )
        if self.is_async:
            return outcome_of(await astream_chat(external.aclient(), **kwargs))
        return outcome_of(stream_chat(external.client(), **kwargs))

    async def _wrapper(self, external, policy, messages, max_tokens, force_answer) -> Outcome:
        from entropy_exit_integrations.langchain import ChatEntropyExit

        llm = ChatEntropyExit(
            model=_chat_openai(external, max_tokens, reasoning=True), policy=policy, force_answer=force_answer
        )
        pairs = [(m["role"], m["content"]) for m in messages]
        message = await llm.ainvoke(pairs) if self.is_async else llm.invoke(pairs)
        return Outcome(
            text=str(message.content),
            reasoning=message.additional_kwargs.get("reasoning_content") or "",
            report=_report(message.response_metadata.get("entropy_exit"), "response_metadata"),
            native=message,
        )

    async def _handler(self, external, policy, messages, max_tokens, force_answer) -> Outcome:
        from entropy_exit_integrations.langchain import (
            AsyncEntropyExitCallbackHandler,
            EntropyExitCallbackHandler,
        )

        llm = _chat_openai(
            external, max_tokens, streaming=True, stream_usage=True, logprobs=True, top_logprobs=policy.top_k
        )
        pairs = [(m["role"], m["content"]) for m in messages]
        kind = AsyncEntropyExitCallbackHandler if self.is_async else EntropyExitCallbackHandler
        handler = kind(policy, on_exit="raise")
        config = {"callbacks": [handler]}
        try:
            if self.is_async:
                await llm.ainvoke(pairs, config=config)
            else:
                llm.invoke(pairs, config=config)
        except EntropyExit as exit_:
            assert exit_.partial is not None, "EntropyExit without .partial"
            return outcome_of(exit_.partial, sees_reasoning=False)
        assert handler.last_result is not None, "the handler kept no result"
        return outcome_of(handler.last_result, sees_reasoning=False)

    async def _llamaindex(self, external, policy, messages, max_tokens, force_answer) -> Outcome:
        from llama_index.core.base.llms.types import ChatMessage
        from llama_index.llms.openai_like import OpenAILike

        from entropy_exit_integrations.llama_index import REPORT_KEY, EntropyExitLLM, http_clients

        sync_client, async_client = http_clients(timeout=TIMEOUT)  # the real abort
        inner = OpenAILike(
            model=external.model,
            api_base=external.base_url,
            api_key=external.api_key,
            is_chat_model=True,
            context_window=4096,
            max_tokens=max_tokens,
            temperature=0,
            max_retries=0,
            timeout=TIMEOUT,
            http_client=sync_client,
            async_http_client=async_client,
        )
        llm = EntropyExitLLM(llm=inner, policy=policy, force_answer=force_answer)
        chat = [ChatMessage(role=m["role"], content=m["content"]) for m in messages]
        response = await llm.achat(chat) if self.is_async else llm.chat(chat)
        extra = response.additional_kwargs or {}
        return Outcome(
            text=response.message.content or "",
            reasoning=extra.get("reasoning_content") or "",
            report=_report(extra.get(REPORT_KEY), "additional_kwargs"),
            native=response,
        )


DRIVERS = [
    Driver(name, is_async)
    for name in ("openai", "wrapper", "handler", "llamaindex")
    for is_async in (False, True)
]
DRIVER_IDS = [d.id for d in DRIVERS]
FORCING_DRIVERS = [d for d in DRIVERS if d.forces]


# -- the expectations every integration meets ------------------------------------------------------


def assert_no_exit(outcome: Outcome, plain: Plain, policy: ExitPolicy) -> None:
    """Threshold 0: the plain call's text and reasoning, the server's token count and finish reason."""
    report = outcome.report
    assert outcome.text == plain.text
    if outcome.sees_reasoning and (outcome.reasoning or plain.reasoning):
        assert outcome.reasoning == plain.reasoning
        assert report.reasoning_tokens > 0
    assert not report.exited and report.ended == "server_done" and report.exit_token_index is None, report
    assert report.tokens_generated == plain.completion_tokens, report
    assert report.usage_source == "server", report
    assert report.finish_reason == plain.finish_reason and report.finish_reason in ("length", "stop")
    assert report.tokens_saved_vs_budget == 0 and report.forced_answer_tokens == 0
    assert report.k == policy.top_k and report.unknown_tokens == 0
    if outcome.tokens is not None:  # the streamed logprob entries = the server's count ...
        # ... except the end-of-sequence token, which llama.cpp counts in its usage but does not
        # stream (a generation that ends with finish_reason "stop" streams one entry fewer).
        eos = 1 if report.finish_reason == "stop" else 0
        assert report.tokens_generated - eos <= outcome.tokens <= report.tokens_generated
        assert outcome.native.finish_reason == plain.finish_reason


def assert_exited(
    outcome: Outcome, plain: Plain, policy: ExitPolicy, max_tokens: int, forced: bool = False
) -> None:
    """An exit at the first token ``min_tokens`` allows (a stop guard may defer the cut a little),
    the stream closed by us, and what was kept is the start of what the model says at temperature 0."""
    report = outcome.report
    assert report.exited and report.ended == "we_closed", report
    assert report.decision_token_index == MIN_TOKENS - 1, report
    main_tokens = report.tokens_generated - report.forced_answer_tokens
    assert report.exit_token_index == main_tokens - 1 >= MIN_TOKENS - 1, report
    assert main_tokens < max_tokens
    assert report.tokens_saved_vs_budget == max_tokens - report.tokens_generated
    if report.usage_source == "server":  # usage in every chunk: continuous_usage_stats (vLLM), asked for
        assert not report.prompt_tokens_estimated and report.prompt_tokens == plain.prompt_tokens, report
    else:  # a closed stream gets no usage block
        assert report.usage_source == "client", report
    assert report.k == policy.top_k
    if outcome.tokens is not None:
        assert outcome.tokens == main_tokens
    if not forced:
        assert report.forced_answer_tokens == 0
        assert (
            outcome.native is None
            or getattr(outcome.native, "finish_reason", "entropy_exit") == "entropy_exit"
        )
    if not outcome.sees_reasoning and plain.reasoning:  # it cannot tell reasoning from answer
        assert plain.text.startswith(outcome.text)
        return
    in_reasoning = report.reasoning_tokens == main_tokens
    if in_reasoning:
        assert outcome.reasoning and plain.reasoning.startswith(outcome.reasoning)
        assert len(outcome.reasoning) < len(plain.reasoning)
    else:
        assert outcome.reasoning == plain.reasoning
    if forced:  # the forcing tests check the text
        return
    if in_reasoning:
        assert outcome.text == ""
    else:
        assert outcome.text and plain.text.startswith(outcome.text) and len(outcome.text) < len(plain.text)
