"""One driver per integration x sync/async, each turning a call into the same ``Outcome``.

The integrations (the public API each one documents):

* ``openai``: ``stream_chat`` / ``astream_chat`` over ``openai.OpenAI`` / ``openai.AsyncOpenAI``;
* ``wrapper``: ``ChatEntropyExit(model=ChatDeepSeek(api_base=...))`` (reasoning fields kept),
  ``invoke`` / ``ainvoke``;
* ``handler``: ``EntropyExitCallbackHandler`` / ``AsyncEntropyExitCallbackHandler`` (``on_exit="raise"``)
  on ``ChatOpenAI(logprobs=True, top_logprobs=k, streaming=True)``, ``invoke`` / ``ainvoke``; its
  exit is an ``EntropyExit`` whose ``.partial`` is the result, its normal end ``handler.last_result``;
* ``llamaindex``: ``EntropyExitLLM(llm=OpenAILike(..., http_client=..., async_http_client=...))``,
  ``chat`` / ``achat``.

Every driver returns an ``Outcome``: text (the answer only), reasoning, the report as a dict, the
finish reason, usage, and the error raised (``StreamInterrupted`` carries its ``partial``, which
fills the other fields). Frameworks are imported when a driver prepares its call, so a process
that runs one driver imports only that framework.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from entropy_exit_integrations import EntropyExit, ExitPolicy, StreamInterrupted

INTEGRATIONS = ("openai", "wrapper", "handler", "llamaindex")
K = 5
"""Candidates per token in every script and every policy (``top_k``)."""

PROMPT = "What is 6 * 7? Think, then answer."


@dataclass
class Call:
    """What one monitored call asks for."""

    policy: ExitPolicy
    max_tokens: int = 200
    force_answer: bool | None = None
    prompt: str = PROMPT
    timeout: float = 5.0
    probes: Any = None  # a ProbeRule (integrations that send requests)
    tools: list[dict[str, Any]] | None = None  # OpenAI tool definitions bound to the call
    tool_choice: Any = None  # e.g. "required": a call that must not be cut
    reasoning_format: str = "auto"
    n: int | None = None  # choices per request (refused above 1)
    audit: Any = None  # an AuditRule
    ledger: Any = None  # a SavingsLedger shared by calls


@dataclass
class Outcome:
    """What a call gave, whatever the integration.

    ``report`` is the ``SavingsReport`` as a dict (``response_metadata["entropy_exit"]``,
    ``additional_kwargs["entropy_exit"]`` or ``report.to_dict()``). ``usage`` is
    ``{"prompt_tokens", "completion_tokens"}`` as the integration exposes it. ``tokens`` is the
    number of token records on the result when the integration keeps them (None otherwise).
    ``raised_exit``: the exit came as an ``EntropyExit`` (the callback handler's way to stop).
    """

    text: str
    reasoning: str
    report: dict[str, Any] | None
    finish_reason: str | None
    error: BaseException | None = None
    usage: dict[str, Any] | None = None
    tokens: int | None = None
    raised_exit: bool = False
    native: Any = field(default=None, repr=False)


def outcome_of_result(result: Any, **extra: Any) -> Outcome:
    """An ``ExitResult`` (openai helper, handler results, ``.partial`` of the errors) as an Outcome."""
    usage = dict(result.usage) if getattr(result, "usage", None) else None
    return Outcome(
        text=result.text,
        reasoning=result.reasoning or "",
        report=result.report.to_dict(),
        finish_reason=result.finish_reason,
        usage=usage,
        tokens=len(result.tokens) if getattr(result, "tokens", None) is not None else None,
        native=result,
        **extra,
    )


def outcome_of_error(error: BaseException) -> Outcome:
    if isinstance(error, StreamInterrupted):
        return outcome_of_result(error.partial, error=error)
    return Outcome(text="", reasoning="", report=None, finish_reason=None, error=error)


# -- the integrations --------------------------------------------------------------------------


def _chat_openai(base_url: str, call: Call, **kwargs: Any) -> Any:
    import httpx
    from langchain_openai import ChatOpenAI

    # An httpx.Timeout (unhashable) keeps langchain-openai from sharing one cached httpx client
    # between calls, hence between the event loops of separate asyncio.run calls.
    return ChatOpenAI(
        base_url=base_url,
        api_key="x",
        model="m",
        max_tokens=call.max_tokens,
        max_retries=0,
        timeout=httpx.Timeout(call.timeout),
        **kwargs,
    )


def _openai(base_url: str, call: Call, is_async: bool) -> Callable[[], Any]:
    import openai

    from entropy_exit_integrations.openai import astream_chat, stream_chat

    messages = [{"role": "user", "content": call.prompt}]
    kwargs = {
        "model": "m",
        "messages": messages,
        "max_tokens": call.max_tokens,
        "force_answer": call.force_answer,
        "reasoning_format": call.reasoning_format,
        "audit": call.audit,
        "ledger": call.ledger,
        "probes": call.probes,
    }
    if call.tools:
        kwargs["tools"] = call.tools
    if call.tool_choice is not None:
        kwargs["tool_choice"] = call.tool_choice
    if call.n is not None:
        kwargs["n"] = call.n

    if is_async:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=call.timeout)

        async def arun() -> Outcome:
            try:
                result = await astream_chat(client, policy=call.policy, **kwargs)
            except Exception as error:  # noqa: BLE001 - normalised for the assertions
                return outcome_of_error(error)
            return outcome_of_result(result)

        return arun

    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=call.timeout)

    def run() -> Outcome:
        try:
            result = stream_chat(client, policy=call.policy, **kwargs)
        except Exception as error:  # noqa: BLE001
            return outcome_of_error(error)
        return outcome_of_result(result)

    return run


def _message_outcome(message: Any) -> Outcome:
    usage = message.usage_metadata
    return Outcome(
        text=message.content if isinstance(message.content, str) else str(message.content),
        reasoning=message.additional_kwargs.get("reasoning_content") or "",
        report=message.response_metadata.get("entropy_exit"),
        finish_reason=message.response_metadata.get("finish_reason"),
        usage=None
        if usage is None
        else {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")},
        native=message,
    )


def _chat_deepseek(base_url: str, call: Call) -> Any:
    """ChatDeepSeek (langchain-deepseek): the partner class that keeps ``reasoning_content`` /
    ``reasoning`` deltas, which ChatOpenAI drops; it talks to any OpenAI-compatible server."""
    import httpx
    from langchain_deepseek import ChatDeepSeek

    return ChatDeepSeek(
        api_base=base_url,
        api_key="x",
        model="m",
        max_tokens=call.max_tokens,
        max_retries=0,
        timeout=httpx.Timeout(call.timeout),
    )


def wrapper_model(base_url: str, call: Call) -> Any:
    from entropy_exit_integrations.langchain import ChatEntropyExit

    return ChatEntropyExit(
        model=_chat_deepseek(base_url, call),
        policy=call.policy,
        force_answer=call.force_answer,
        probes=call.probes,
        reasoning_format=call.reasoning_format,
        audit=call.audit,
        ledger=call.ledger,
    )


def _wrapper(base_url: str, call: Call, is_async: bool) -> Callable[[], Any]:
    llm = wrapper_model(base_url, call)
    if call.tools:
        llm = llm.bind_tools(call.tools, tool_choice=call.tool_choice)
    if call.n is not None:
        llm = llm.bind(n=call.n)
    messages = [("user", call.prompt)]

    if is_async:

        async def arun() -> Outcome:
            try:
                message = await llm.ainvoke(messages)
            except Exception as error:  # noqa: BLE001
                return outcome_of_error(error)
            return _message_outcome(message)

        return arun

    def run() -> Outcome:
        try:
            message = llm.invoke(messages)
        except Exception as error:  # noqa: BLE001
            return outcome_of_error(error)
        return _message_outcome(message)

    return run


def _handler(base_url: str, call: Call, is_async: bool) -> Callable[[], Any]:
    from entropy_exit_integrations.langchain import (
        AsyncEntropyExitCallbackHandler,
        EntropyExitCallbackHandler,
    )

    llm = _chat_openai(base_url, call, logprobs=True, top_logprobs=call.policy.top_k, streaming=True)
    if call.tools:
        llm = llm.bind_tools(call.tools, tool_choice=call.tool_choice)
    if call.n is not None:
        llm = llm.bind(n=call.n)
    messages = [("user", call.prompt)]

    def finished(handler: Any, message: Any) -> Outcome:
        outcome = outcome_of_result(handler.last_result)
        outcome.native = (message, handler)
        return outcome

    def exited(exit_: EntropyExit) -> Outcome:
        return outcome_of_result(exit_.partial, raised_exit=True)

    if is_async:

        async def arun() -> Outcome:
            handler = AsyncEntropyExitCallbackHandler(
                call.policy, on_exit="raise", reasoning_format=call.reasoning_format
            )
            try:
                message = await llm.ainvoke(messages, config={"callbacks": [handler]})
            except EntropyExit as exit_:
                return exited(exit_)
            except Exception as error:  # noqa: BLE001
                return outcome_of_error(error)
            return finished(handler, message)

        return arun

    def run() -> Outcome:
        handler = EntropyExitCallbackHandler(
            call.policy, on_exit="raise", reasoning_format=call.reasoning_format
        )
        try:
            message = llm.invoke(messages, config={"callbacks": [handler]})
        except EntropyExit as exit_:
            return exited(exit_)
        except Exception as error:  # noqa: BLE001
            return outcome_of_error(error)
        return finished(handler, message)

    return run


def _response_outcome(response: Any) -> Outcome:
    extra = response.additional_kwargs or {}
    report = extra.get("entropy_exit")
    usage = None
    if "prompt_tokens" in extra or "completion_tokens" in extra:
        usage = {
            "prompt_tokens": extra.get("prompt_tokens"),
            "completion_tokens": extra.get("completion_tokens"),
        }
    return Outcome(
        text=response.message.content or "",
        reasoning=extra.get("reasoning_content") or "",
        report=report,
        # ChatResponse has no finish-reason field: the report's is the one LlamaIndex users see.
        finish_reason=(report or {}).get("finish_reason"),
        usage=usage,
        native=response,
    )


def _llamaindex(base_url: str, call: Call, is_async: bool) -> Callable[[], Any]:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    from entropy_exit_integrations.llama_index import EntropyExitLLM, http_clients

    sync_client, async_client = http_clients()  # the documented way to a real abort
    inner = OpenAILike(
        model="m",
        api_base=base_url,
        api_key="x",
        is_chat_model=True,
        max_tokens=call.max_tokens,
        max_retries=0,
        timeout=call.timeout,
        http_client=sync_client,
        async_http_client=async_client,
    )
    llm = EntropyExitLLM(
        llm=inner,
        policy=call.policy,
        force_answer=call.force_answer,
        probes=call.probes,
        reasoning_format=call.reasoning_format,
        audit=call.audit,
        ledger=call.ledger,
    )
    messages = [ChatMessage(role="user", content=call.prompt)]
    extra: dict[str, Any] = {"tools": call.tools} if call.tools else {}
    if call.tool_choice is not None:
        extra["tool_choice"] = call.tool_choice
    if call.n is not None:
        extra["n"] = call.n

    if is_async:

        async def arun() -> Outcome:
            try:
                response = await llm.achat(messages, **extra)
            except Exception as error:  # noqa: BLE001
                return outcome_of_error(error)
            return _response_outcome(response)

        return arun

    def run() -> Outcome:
        try:
            response = llm.chat(messages, **extra)
        except Exception as error:  # noqa: BLE001
            return outcome_of_error(error)
        return _response_outcome(response)

    return run


_BUILDERS = {"openai": _openai, "wrapper": _wrapper, "handler": _handler, "llamaindex": _llamaindex}


@dataclass(frozen=True)
class Driver:
    integration: str
    is_async: bool

    @property
    def id(self) -> str:
        return f"{self.integration}-{'async' if self.is_async else 'sync'}"

    def prepare(self, base_url: str, call: Call) -> Callable[[], Outcome] | Callable[[], Awaitable[Outcome]]:
        """Build clients and models (imports happen here); returns the call to make."""
        return _BUILDERS[self.integration](base_url, call, self.is_async)

    def run(self, base_url: str, call: Call) -> Outcome:
        """Make the call (an async driver runs it in a fresh event loop)."""
        (outcome,) = self.run_many(base_url, call, 1)
        return outcome

    def run_many(self, base_url: str, call: Call, n: int) -> list[Outcome]:
        """Make the same call ``n`` times, one after the other, with one set of clients
        (an async driver makes them all in one fresh event loop)."""
        fn = self.prepare(base_url, call)
        if not self.is_async:
            return [fn() for _ in range(n)]  # type: ignore[misc]

        async def in_turn() -> list[Outcome]:
            return [await fn() for _ in range(n)]  # type: ignore[misc]

        return asyncio.run(in_turn())


DRIVERS = tuple(Driver(name, is_async) for name in INTEGRATIONS for is_async in (False, True))
BY_ID = {driver.id: driver for driver in DRIVERS}


def wrapper_stream_text(base_url: str, call: Call, is_async: bool) -> str:
    """``ChatEntropyExit.stream`` / ``astream``: the concatenated content of the chunks."""
    llm = wrapper_model(base_url, call)
    messages = [("user", call.prompt)]
    if not is_async:
        return "".join(str(chunk.content) for chunk in llm.stream(messages))

    async def collect() -> str:
        return "".join([str(chunk.content) async for chunk in llm.astream(messages)])

    return asyncio.run(collect())
