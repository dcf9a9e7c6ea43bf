"""LangChain objects in and out of the engine: the inner model as a transport, the chunks out.

``ChatEntropyExit`` drives the inner model through its public ``stream``/``astream`` (so its rate
limiter, callbacks and tracing run as for any call), and only moves chunks between it and the
driver (``driver.drive``/``adrive``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import RunnableConfig

from ..core.tokens import Phase
from ..driver import Output
from ..engine import ENTROPY_EXIT, REPORT_KEY, ExitResult, MonitoredCall, RequestSpec
from ..options import ExitOptions
from ..session import TextDelta
from .callbacks import openai_dicts, parts_from_chunk

WRAPPER_HINT = (
    "ChatEntropyExit asked the inner model for them with its logprobs_kwargs "
    "(default logprobs=True, top_logprobs=policy.top_k) and it ignored them: use a model class "
    "that supports logprobs (ChatOpenAI against a server that returns them), or pass the "
    "arguments your model needs as logprobs_kwargs"
)


def is_openai_compatible(model: BaseChatModel) -> bool:
    """A langchain-openai chat model (ChatOpenAI and its partner subclasses, ChatDeepSeek...)."""
    try:
        from langchain_openai.chat_models.base import BaseChatOpenAI
    except ImportError:  # pragma: no cover - langchain-openai not installed
        return False
    return isinstance(model, BaseChatOpenAI)


def monitored_call(
    inner: BaseChatModel,
    options: ExitOptions,
    messages: list[BaseMessage],
    kwargs: dict[str, Any],
    logprobs_kwargs: dict[str, Any] | None,
) -> MonitoredCall:
    """The engine for one call of the inner model with these call ``kwargs``."""
    openai_like = is_openai_compatible(inner)
    fields = dict(kwargs)
    n = getattr(inner, "n", None)
    if isinstance(n, int) and n > 1:
        fields.setdefault("n", n)  # refused by the engine: one choice per monitored call
    if logprobs_kwargs is None:
        logprobs_kwargs = {"logprobs": True}
        if getattr(inner, "top_logprobs", None) is None:
            logprobs_kwargs["top_logprobs"] = options.policy.top_k
    budget = fields.get("max_tokens", fields.get("max_completion_tokens", getattr(inner, "max_tokens", None)))
    name = str(fields.get("model") or getattr(inner, "model_name", None) or getattr(inner, "model", "") or "")
    forcing = options.forcing
    if not openai_like and forcing.style != "followup":
        options = replace(options, forcing=replace(forcing, style="followup"))  # no prefill elsewhere
    return MonitoredCall(
        options,
        fields=fields,
        messages=openai_dicts(messages),
        model=name or None,
        max_tokens=budget if isinstance(budget, int) else None,
        base_url=str(getattr(inner, "openai_api_base", "") or "") if openai_like else "",
        terminal_required=openai_like,
        reasoning_field=False,  # ChatOpenAI does not send reasoning_content back
        logprobs_hint=WRAPPER_HINT,
        logprob_fields=logprobs_kwargs,
        usage_fields={"stream_usage": True} if openai_like else None,
    )


class _Request:
    """What the sync and async transports share: the inner model's input for a ``RequestSpec``."""

    def __init__(
        self, inner: BaseChatModel, messages: list[BaseMessage], config: RunnableConfig | None
    ) -> None:
        self.inner = inner
        self.messages = messages
        self.config = config
        self.parts = parts_from_chunk

    def request(self, spec: RequestSpec) -> tuple[list[BaseMessage], dict[str, Any]]:
        history = list(self.messages)
        for item in spec.messages:
            if item["role"] == "user":
                history.append(HumanMessage(item["content"]))
            else:
                thought = (
                    {"reasoning_content": item["reasoning_content"]} if "reasoning_content" in item else {}
                )
                history.append(AIMessage(item["content"], additional_kwargs=thought))
        return history, dict(spec.fields)


class Transport(_Request):
    """The inner model's public ``stream`` as the driver's transport (sync)."""

    def open(self, spec: RequestSpec) -> Iterator[Any]:
        history, kwargs = self.request(spec)
        return self.inner.stream(history, self.config, **kwargs)

    def close(self, stream: Any) -> None:
        stream.close()  # closes the inner generator and its HTTP response: the server stops


class AsyncTransport(_Request):
    """Async twin of ``Transport`` (the inner model's public ``astream``)."""

    async def open(self, spec: RequestSpec) -> AsyncIterator[Any]:
        history, kwargs = self.request(spec)
        return self.inner.astream(history, self.config, **kwargs)

    async def close(self, stream: Any) -> None:
        await stream.aclose()


class Chunks:
    """What one call streams out: the inner chunks with the engine's text, then the last chunk."""

    def __init__(self, call: MonitoredCall) -> None:
        self.call = call
        self.saw_model_name = False

    def out(self, step: Output) -> list[ChatGenerationChunk]:
        if step.result is not None:
            return [self.last_chunk(step.result)]
        if step.chunk is not None:
            return [self.passed_on(step.chunk, step.deltas)]
        return delta_chunks(step.deltas)

    def passed_on(self, message: Any, deltas: list[TextDelta]) -> ChatGenerationChunk:
        """An inner chunk with the engine's text; its usage is held for the last chunk.

        The content is the answer only: reasoning (a separate field or ``<think>`` tags, even
        split over chunks) goes to ``additional_kwargs["reasoning_content"]``.
        """
        if not isinstance(message, AIMessageChunk):  # a model that cannot stream: its whole answer
            message = as_chunk(message)
        metadata = message.response_metadata
        self.saw_model_name |= bool(metadata.get("model_name"))
        update: dict[str, Any] = {}
        if isinstance(message.content, str):
            update["content"] = "".join(d.text for d in deltas if d.phase is Phase.ANSWER)
        reasoning = "".join(d.text for d in deltas if d.phase is Phase.REASONING)
        extra = {
            k: v for k, v in message.additional_kwargs.items() if k not in ("reasoning_content", "reasoning")
        }
        if reasoning:
            extra["reasoning_content"] = reasoning
        update["additional_kwargs"] = extra
        if getattr(message, "usage_metadata", None):
            update["usage_metadata"] = None
        if getattr(message, "chunk_position", None) == "last":
            update["chunk_position"] = None  # the last chunk is ours
        return ChatGenerationChunk(message=message.model_copy(update=update))

    def last_chunk(self, result: ExitResult) -> ChatGenerationChunk:
        """The last chunk: usage, the report (plain data, once), the exit's finish reason."""
        metadata: dict[str, Any] = {REPORT_KEY: result.report.to_dict()}
        if result.usage.get("estimated"):  # usage_metadata has no such flag: say it beside it
            metadata["prompt_tokens_estimated"] = True
        if result.finish_reason == ENTROPY_EXIT:
            metadata["finish_reason"] = ENTROPY_EXIT  # a cut stream sent none of its own
        if not self.saw_model_name and self.call.model:
            metadata["model_name"] = self.call.model
        usage = result.usage
        message = AIMessageChunk(
            content="",
            response_metadata=metadata,
            usage_metadata=cast(
                UsageMetadata,
                {
                    "input_tokens": int(usage["prompt_tokens"]),
                    "output_tokens": int(usage["completion_tokens"]),
                    "total_tokens": int(usage["total_tokens"]),
                },
            ),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message)


def as_chunk(message: Any) -> AIMessageChunk:
    """The ``AIMessage`` a non-streaming model's ``stream`` yields, as one chunk."""
    calls = [
        tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c.get("id"), index=i)
        for i, c in enumerate(getattr(message, "tool_calls", None) or [])
    ]
    return AIMessageChunk(
        content=message.content,
        additional_kwargs=message.additional_kwargs,
        response_metadata=message.response_metadata,
        usage_metadata=getattr(message, "usage_metadata", None),
        tool_call_chunks=calls,
        id=message.id,
    )


def delta_chunks(deltas: list[TextDelta]) -> list[ChatGenerationChunk]:
    """Chunks of text the engine released (held-back text, the forced answer)."""
    chunks = []
    for delta in deltas:
        if delta.phase is Phase.REASONING:
            message = AIMessageChunk(content="", additional_kwargs={"reasoning_content": delta.text})
        else:
            message = AIMessageChunk(content=delta.text)
        chunks.append(ChatGenerationChunk(message=message))
    return chunks
