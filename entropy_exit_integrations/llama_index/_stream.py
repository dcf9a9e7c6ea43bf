"""The generators behind every call style of ``EntropyExitLLM``: a shim over ``MonitoredCall``.

``run``/``arun`` stream the inner LLM with logprobs requested, feed each response to the engine,
yield responses whose text is the engine's answer (reasoning goes to ``thinking_delta``), stop
once the engine says so (closing the inner generator *and* the captured HTTP response),
optionally stream a forced answer, and end with one response carrying the whole text, the
per-token logprobs, the usage and the report.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any, Literal

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole

from ..core.tokens import Phase
from ..engine import ATTEMPTS, ExitResult, ForcingPlan, MonitoredCall, TextDelta, aguarded, guarded
from ..providers.parts import ChunkParts
from ._responses import REPORT_KEY, parts_of, to_llama_logprobs, with_text
from .closing import ResponseCapture

Mode = Literal["chat", "completion"]
_NOT_FORWARDED = ("tools", "tool_choice", "parallel_tool_calls", "stop", "max_tokens")


def is_openai_based(llm: Any) -> bool:
    """A llama-index-llms-openai LLM (OpenAI, OpenAILike, AzureOpenAI...): its fields take logprobs."""
    fields = getattr(type(llm), "model_fields", {})
    return "logprobs" in fields and "top_logprobs" in fields and hasattr(llm, "_get_model_kwargs")


class Shim:
    """One call of an ``EntropyExitLLM``: the inner LLM's requests and responses, the engine."""

    def __init__(self, owner: Any, mode: Mode, payload: Any, kwargs: dict[str, Any], formatted: bool) -> None:
        self.owner = owner
        self.mode = mode
        self.payload = payload  # messages (chat) or prompt (completion)
        self.kwargs = dict(kwargs)
        self.formatted = formatted
        inner = owner.llm
        self.openai_based = is_openai_based(inner)
        self.inner = self._with_logprobs(inner)
        max_tokens = self.kwargs.get("max_tokens", getattr(inner, "max_tokens", None))
        chat = mode == "chat" or inner.metadata.is_chat_model
        messages = payload if mode == "chat" else [ChatMessage(role=MessageRole.USER, content=payload)]
        self.call = MonitoredCall(
            owner.policy,
            api="chat" if chat else "completions",
            messages=[{"role": str(m.role.value), "content": m.content or ""} for m in messages],
            prompt=None if chat else self._prompt(inner),
            model=getattr(inner.metadata, "model_name", None),
            max_tokens=int(max_tokens) if isinstance(max_tokens, int) else None,
            force_answer=owner.force_answer,
            forcing=owner.forcing,
            ledger=owner.ledger,
            base_url=str(getattr(inner, "api_base", "") or ""),
            terminal_required=self.openai_based,
            reasoning_field=False,  # llama-index-llms-openai does not send reasoning_content back
            probes=owner.probes,
        )
        self.capture = ResponseCapture()
        self.last: Any = None
        self.answer = ""

    def _prompt(self, inner: Any) -> str:
        return self.payload if self.formatted else inner.completion_to_prompt(self.payload)

    def _with_logprobs(self, inner: Any) -> Any:
        """The inner LLM asked for logprobs through its own fields (a shallow copy: same clients)."""
        if not self.openai_based:
            return inner
        update: dict[str, Any] = {}
        if not (inner.logprobs and inner.top_logprobs):
            update = {"logprobs": True, "top_logprobs": self.owner.policy.top_k}
        if "stream_options" not in self.kwargs and "stream_options" not in inner.additional_kwargs:
            self.kwargs["stream_options"] = {"include_usage": True}
        return inner.model_copy(update=update) if update else inner

    def refused(self, error: BaseException) -> bool:
        """True to retry as the engine says after ``error`` (without the OpenAI logprob fields,
        plus ``extra_body``: ``n_probs`` for llama.cpp with tools); raises on a refusal."""
        retry = self.call.refused(error) if self.openai_based else None
        if retry is None:
            return False
        self.inner = self.owner.llm.model_copy(update={"logprobs": False})
        extra = retry.merged_extra_body(self.kwargs.pop("extra_body", None))
        if extra is not None:
            self.kwargs["extra_body"] = extra
        return True

    # -- streams ----------------------------------------------------------------------------

    def open(self) -> Any:
        if self.mode == "chat":
            return self.inner.stream_chat(self.payload, **self.kwargs)
        return self.inner.stream_complete(self.payload, formatted=self.formatted, **self.kwargs)

    async def aopen(self) -> Any:
        if self.mode == "chat":
            return await self.inner.astream_chat(self.payload, **self.kwargs)
        return await self.inner.astream_complete(self.payload, formatted=self.formatted, **self.kwargs)

    def _short(self, plan: ForcingPlan) -> tuple[Any, Mode, Any, dict[str, Any]]:
        """(llm, mode, payload, kwargs) of a forcing plan's request (the final answer, or a probe)."""
        inner = self.owner.llm
        kwargs: dict[str, Any] = {k: v for k, v in self.kwargs.items() if k not in _NOT_FORWARDED}
        if self.openai_based:
            update = {"max_tokens": plan.max_tokens, "logprobs": True, "top_logprobs": 1}
            inner = inner.model_copy(update=update)
            kwargs["stop"] = plan.stop
            if plan.extra_body:
                kwargs["extra_body"] = {**(kwargs.get("extra_body") or {}), **plan.extra_body}
        if plan.prompt is not None:
            return inner, "completion", plan.prompt, kwargs
        history = self._messages() + [
            ChatMessage(role=MessageRole(m["role"]), content=m["content"]) for m in plan.messages
        ]
        return inner, "chat", history, kwargs

    def _messages(self) -> list[ChatMessage]:
        if self.mode == "chat":
            return list(self.payload)
        return [ChatMessage(role=MessageRole.USER, content=self.payload)]

    def open_short(self, plan: ForcingPlan) -> Any:
        llm, mode, payload, kwargs = self._short(plan)
        if mode == "chat":
            return llm.stream_chat(payload, **kwargs)
        return llm.stream_complete(payload, formatted=True, **kwargs)

    async def aopen_short(self, plan: ForcingPlan) -> Any:
        llm, mode, payload, kwargs = self._short(plan)
        if mode == "chat":
            return await llm.astream_chat(payload, **kwargs)
        return await llm.astream_complete(payload, formatted=True, **kwargs)

    # -- responses --------------------------------------------------------------------------

    def handle(self, response: Any) -> Any:
        """Feed an inner response; the response to yield (the engine's answer text)."""
        self.last = response
        return self.out(self.call.feed(parts_of(response)), raw=getattr(response, "raw", None))

    def out(self, deltas: list[TextDelta], raw: Any = None) -> Any | None:
        """A response for these deltas (None when there is nothing to show)."""
        answer = "".join(d.text for d in deltas if d.phase is Phase.ANSWER)
        reasoning = "".join(d.text for d in deltas if d.phase is Phase.REASONING)
        if raw is None and not (answer or reasoning):
            return None
        self.answer += answer
        extra = {"thinking_delta": reasoning} if reasoning else {}
        return self._response(self.answer, answer, raw=raw, additional_kwargs=extra)

    def _response(self, text: str, delta: str, **fields: Any) -> Any:
        if self.mode == "chat":
            last = self.last.message if self.last is not None else None
            base = last if last is not None else ChatMessage(role=MessageRole.ASSISTANT)
            return ChatResponse(message=with_text(base, text), delta=delta, **fields)
        return CompletionResponse(text=text, delta=delta, **fields)

    def final(self, result: ExitResult) -> Any:
        """The last response: whole text, per-token logprobs, usage, reasoning and the report."""
        self.owner._last_report = result.report
        extra = dict(getattr(self.last, "additional_kwargs", None) or {})
        extra.pop("thinking_delta", None)
        extra.update(result.usage)
        extra.pop("estimated", None)
        extra[REPORT_KEY] = result.report.to_dict()
        if result.reasoning:
            extra["reasoning_content"] = result.reasoning
        return self._response(
            result.text,
            "",
            raw=getattr(self.last, "raw", None),
            logprobs=to_llama_logprobs(result.tokens),
            additional_kwargs=extra,
        )


def _pull(inner: Iterator[Any], capture: ResponseCapture) -> Iterator[Any]:
    """Iterate ``inner`` with the capture active around each step (where the request is made)."""
    while True:
        with capture.active():
            try:
                item = next(inner)
            except StopIteration:
                return
        yield item


async def _apull(inner: AsyncIterator[Any], capture: ResponseCapture) -> AsyncIterator[Any]:
    while True:
        with capture.active():
            try:
                item = await inner.__anext__()
            except StopAsyncIteration:
                return
        yield item


def _close(inner: Any, capture: ResponseCapture) -> None:
    close = getattr(inner, "close", None)
    if close is not None:
        close()
    capture.close()


async def _aclose(inner: Any, capture: ResponseCapture) -> None:
    aclose = getattr(inner, "aclose", None)
    if aclose is not None:
        await aclose()
    await capture.aclose()


def _start(shim: Shim) -> tuple[Any, list[Any]]:
    """Open the main stream and read its first response (where the request is made).

    A refusal is retried as the engine says (``MonitoredCall.refused``): llama.cpp with tools
    gets ``n_probs``; elsewhere ``LogprobsUnavailableError``, or under
    ``on_missing="pass_through"`` an unmonitored retry.
    """
    for attempt in range(ATTEMPTS):
        inner = None
        try:
            with shim.capture.active():
                inner = shim.open()
                try:
                    return inner, [next(inner)]
                except StopIteration:
                    return inner, []
        except Exception as error:
            _close(inner, shim.capture)
            if attempt == ATTEMPTS - 1 or not shim.refused(error):
                raise
    raise AssertionError("unreachable")


async def _astart(shim: Shim) -> tuple[Any, list[Any]]:
    for attempt in range(ATTEMPTS):
        inner = None
        try:
            with shim.capture.active():
                inner = await shim.aopen()
                try:
                    return inner, [await inner.__anext__()]
                except StopAsyncIteration:
                    return inner, []
        except Exception as error:
            await _aclose(inner, shim.capture)
            if attempt == ATTEMPTS - 1 or not shim.refused(error):
                raise
    raise AssertionError("unreachable")


def run(shim: Shim) -> Generator[Any, None, None]:
    """The sync generator behind every sync call style."""
    call = shim.call
    inner = None
    try:
        inner, first = _start(shim)
        for response in guarded(_chain(first, inner, shim), call):
            yield shim.handle(response)
            if call.wants_probe:
                _probe(shim)
            if call.should_stop:
                break
    finally:
        _close(inner, shim.capture)
    yield from _shown(shim, call.end_main(cut=call.should_stop))
    if call.wants_forcing():
        inner = None
        try:
            with shim.capture.active():
                inner = shim.open_short(call.forcing_plan())
            for response in guarded(_pull(inner, shim.capture), call):
                yield from _shown(shim, call.feed_forced(parts_of(response)))
        finally:
            _close(inner, shim.capture)
        yield from _shown(shim, call.finish_forced())
    yield shim.final(call.finish())


def _probe(shim: Shim) -> None:
    """One answer probe, while the server goes on generating the main stream."""
    shim.call.run_probe(_probe_parts(shim, shim.call.probe_plan()))


def _probe_parts(shim: Shim, plan: ForcingPlan) -> Iterator[ChunkParts]:
    capture, inner = ResponseCapture(), None
    try:
        with capture.active():
            inner = shim.open_short(plan)
        for response in _pull(inner, capture):
            yield parts_of(response)
    finally:
        _close(inner, capture)


async def _aprobe(shim: Shim) -> None:
    """Async twin of ``_probe``."""
    await shim.call.arun_probe(_aprobe_parts(shim, shim.call.probe_plan()))


async def _aprobe_parts(shim: Shim, plan: ForcingPlan) -> AsyncIterator[ChunkParts]:
    capture, inner = ResponseCapture(), None
    try:
        with capture.active():
            inner = await shim.aopen_short(plan)
        async for response in _apull(inner, capture):
            yield parts_of(response)
    finally:
        await _aclose(inner, capture)


def _chain(first: list[Any], inner: Any, shim: Shim) -> Iterator[Any]:
    yield from first
    yield from _pull(inner, shim.capture)


def _shown(shim: Shim, deltas: list[TextDelta]) -> list[Any]:
    response = shim.out(deltas)
    return [] if response is None else [response]


async def arun(shim: Shim) -> AsyncGenerator[Any, None]:
    """The async generator behind every async call style."""
    call = shim.call
    inner = None
    try:
        inner, first = await _astart(shim)
        for response in first:
            yield shim.handle(response)
        if not call.should_stop:
            async for response in aguarded(_apull(inner, shim.capture), call):
                yield shim.handle(response)
                if call.wants_probe:
                    await _aprobe(shim)
                if call.should_stop:
                    break
    finally:
        await _aclose(inner, shim.capture)
    for response in _shown(shim, call.end_main(cut=call.should_stop)):
        yield response
    if call.wants_forcing():
        inner = None
        try:
            with shim.capture.active():
                inner = await shim.aopen_short(call.forcing_plan())
            async for response in aguarded(_apull(inner, shim.capture), call):
                for shown in _shown(shim, call.feed_forced(parts_of(response))):
                    yield shown
        finally:
            await _aclose(inner, shim.capture)
        for response in _shown(shim, call.finish_forced()):
            yield response
    yield shim.final(await call.afinish())
