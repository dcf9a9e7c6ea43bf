"""One ``EntropyExitLLM`` call: the inner LLM's public streams in, LlamaIndex responses out."""

from __future__ import annotations

import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from functools import partial
from typing import Any, Literal

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole
from llama_index.core.instrumentation.span import active_span_id

from ..core.tokens import Phase
from ..driver import Output, adrive, drive
from ..engine import REPORT_KEY, STREAM_USAGE, ExitResult, MonitoredCall, RequestSpec
from ..errors import EntropyExitWarning
from ..session import TextDelta
from ._responses import llama_logprobs, parts_of, text_of, with_text
from .closing import ResponseCapture
from .events import dispatch_report

Mode = Literal["chat", "completion"]
_END = object()


class Call:
    """The inner LLM's public ``stream_chat``/``stream_complete`` (or async twins) as the driver's
    transport, and the driver's output as responses: the inner ones while their text is the
    engine's, then ours, then the last one. The report goes out as an ``EntropyExitReportEvent``
    on the call's span when the call ends or breaks (then the partial report)."""

    parts = staticmethod(parts_of)
    is_async = False  # (aresponses: the inner LLM's async twins)

    def __init__(self, owner: Any, mode: Mode, payload: Any, kwargs: dict[str, Any], formatted: bool = False):
        inner = owner.llm
        self.owner = owner
        self.mode = mode
        self.payload = payload  # messages (chat) or prompt (completion)
        self.formatted = formatted
        # a llama-index-llms-openai LLM (OpenAI, OpenAILike, AzureOpenAI...): its fields take logprobs
        model_fields = getattr(type(inner), "model_fields", {})
        self.openai_based = all(name in model_fields for name in ("logprobs", "top_logprobs", "api_base"))
        chat = mode == "chat" or inner.metadata.is_chat_model
        self.messages = (
            list(payload) if mode == "chat" else [ChatMessage(role=MessageRole.USER, content=payload)]
        )
        fields, usage = dict(kwargs), None
        if self.openai_based:
            if inner.max_tokens is not None:
                fields.setdefault("max_tokens", inner.max_tokens)
            if not any("stream_options" in d for d in (kwargs, inner.additional_kwargs)):
                usage = STREAM_USAGE
        span_id = active_span_id.get()
        self.call = MonitoredCall(
            owner.options,
            api="chat" if chat else "completions",
            fields=fields,
            messages=[{"role": str(m.role.value), "content": m.content or ""} for m in self.messages],
            prompt=None if chat else (payload if formatted else inner.completion_to_prompt(payload)),
            model=getattr(inner.metadata, "model_name", None),
            base_url=str(getattr(inner, "api_base", "") or ""),
            terminal_required=self.openai_based,
            reasoning_field=False,  # llama-index-llms-openai does not send reasoning_content back
            logprob_fields=None if self.openai_based else {},
            usage_fields=usage,
            on_report=partial(self._report, span_id),
        )
        self.last: Any = None
        self.answer = ""  # the text so far (grown like LlamaIndex's own: one copy per chunk)
        self.passing = True  # inner responses are passed on unchanged while their text is ours

    def _report(self, span_id: Any, report: Any) -> None:
        self.owner._last_report = report  # before the event: its handlers may read last_report
        dispatch_report(report, span_id)

    def responses(self) -> Generator[Any, None, None]:
        for step in drive(self.call, self):
            yield from self.out(step)

    async def aresponses(self) -> AsyncGenerator[Any, None]:
        self.is_async = True
        async for step in adrive(self.call, self):
            for response in self.out(step):
                yield response

    # -- the transport ----------------------------------------------------------------------

    def open(self, spec: RequestSpec) -> Any:
        """The inner LLM's stream for ``spec`` (async: a coroutine that ``adrive`` awaits). Fields
        the LLM holds as its own (llama-index-llms-openai lets them override call kwargs) go on a
        shallow ``model_copy``; the rest are call kwargs."""
        fields, payload, llm, mode = dict(spec.fields), self.payload, self.owner.llm, self.mode
        if spec.prompt is not None:
            payload = spec.prompt
        elif spec.messages:
            payload = self.messages + [
                ChatMessage(role=m["role"], content=m["content"]) for m in spec.messages
            ]
        if self.openai_based:
            update = {name: fields.pop(name, None) for name in ("max_tokens", "logprobs", "top_logprobs")}
            update["logprobs"] = bool(update["logprobs"])
            llm = llm.model_copy(update=update)
            mode = "completion" if spec.prompt is not None else ("chat" if spec.messages else self.mode)
        else:  # no way to ask for more: forward what the caller passed
            fields = {k: fields[k] for k in self.call.fields if k in fields}
        if mode == "completion":
            fields["formatted"] = self.formatted or spec.prompt is not None
        method = ("astream_" if self.is_async else "stream_") + ("chat" if mode == "chat" else "complete")
        start = partial(getattr(llm, method), payload, **fields)
        return (_aopen if self.is_async else _captured)(start, self.openai_based)

    def close(self, stream: Any) -> Any:
        return stream.aclose() if self.is_async else stream.close()

    # -- the responses ----------------------------------------------------------------------

    def out(self, step: Output) -> list[Any]:
        """The responses for one step of the driver."""
        if step.result is not None:
            return [self.final(step.result)]
        chunk, deltas = step.chunk, step.deltas
        if chunk is not None and self.passing and _unchanged(chunk, deltas):
            self.last = chunk  # the inner response says what ours would: pass it on as is
            return [chunk]
        if self.passing:  # from here on, the responses carry the engine's text
            self.passing = False
            self.answer = text_of(self.last)
        if chunk is not None:
            self.last = chunk
        answer = "".join(d.text for d in deltas if d.phase is Phase.ANSWER)
        reasoning = "".join(d.text for d in deltas if d.phase is Phase.REASONING)
        raw = getattr(chunk, "raw", None)
        if raw is None and not (answer or reasoning):
            return []  # nothing to show
        self.answer += answer
        extra = {"thinking_delta": reasoning} if reasoning else {}
        return [self._response(self.answer, answer, raw=raw, additional_kwargs=extra)]

    def _response(self, text: str, delta: str, **fields: Any) -> Any:
        if self.mode == "chat":
            base = getattr(self.last, "message", None) or ChatMessage(role=MessageRole.ASSISTANT)
            return ChatResponse(message=with_text(base, text), delta=delta, **fields)
        return CompletionResponse(text=text, delta=delta, **fields)

    def final(self, result: ExitResult) -> Any:
        """The last response: whole text, per-token logprobs, usage, reasoning and the report."""
        extra = dict(getattr(self.last, "additional_kwargs", None) or {})
        extra.pop("thinking_delta", None)
        extra.update(result.usage)
        if extra.pop("estimated", False):  # the prompt count is an estimate: say so beside it
            extra["prompt_tokens_estimated"] = True
        extra[REPORT_KEY] = result.report.to_dict()
        if result.reasoning:
            extra["reasoning_content"] = result.reasoning
        response = self._response(
            result.text, "", raw=getattr(self.last, "raw", None), additional_kwargs=extra
        )
        if result.tokens:
            response.logprobs = llama_logprobs(result.tokens)
        return response


def _unchanged(chunk: Any, deltas: list[TextDelta]) -> bool:
    """The engine's text for this chunk is the inner response's own delta (no reasoning, no tags
    held back): the common case, which costs nothing per token."""
    if len(deltas) > 1 or (deltas and deltas[0].phase is not Phase.ANSWER):
        return False
    return (deltas[0].text if deltas else "") == (getattr(chunk, "delta", None) or "")


def _captured(start: Any, closable: bool) -> Iterator[Any]:
    """The inner stream, with the capture active until the HTTP response is captured (at the
    first read); closing this closes the inner generator and that response."""
    capture = ResponseCapture()
    inner = None
    try:
        with capture.active():
            inner = start()
            first = next(inner, _END)
        if closable:
            _check_captured(capture)
        if first is not _END:
            yield first
        yield from inner
    finally:
        if inner is not None:
            inner.close()
        capture.close()


async def _aopen(start: Any, closable: bool) -> AsyncIterator[Any]:
    return _acaptured(start, closable)


async def _acaptured(start: Any, closable: bool) -> AsyncIterator[Any]:
    capture = ResponseCapture()
    inner = None
    try:
        with capture.active():
            inner = await start()
            first = await anext(inner, _END)
        if closable:
            _check_captured(capture)
        if first is not _END:
            yield first
        async for item in inner:
            yield item
    finally:
        if inner is not None:
            await inner.aclose()
        await capture.aclose()


def _check_captured(capture: ResponseCapture) -> None:
    """Warn (Python shows it once per place) when an openai-SDK based LLM's response was not
    captured: its clients were not built by ``http_clients()``."""
    if not capture.responses:
        warnings.warn(
            "EntropyExitLLM cannot close this LLM's HTTP response, so after an exit the server may "
            "go on generating: build the inner LLM with the hooked clients, "
            "OpenAILike(..., http_client=..., async_http_client=...) from "
            "entropy_exit_integrations.llama_index.http_clients()",
            EntropyExitWarning,
            stacklevel=2,
        )
