"""How ChatEntropyExit reaches the inner model: its stream, its raw chunks, its runnables."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableBinding, RunnableParallel, RunnableSequence

from ..engine import ATTEMPTS

_CLASSES: dict[type, type] = {}


def openai_base(model: BaseChatModel) -> type | None:
    """langchain-openai's ``BaseChatOpenAI`` when ``model`` is one (OpenAI-compatible), else None."""
    try:
        from langchain_openai.chat_models.base import BaseChatOpenAI
    except ImportError:  # pragma: no cover - langchain-openai not installed
        return None
    return BaseChatOpenAI if isinstance(model, BaseChatOpenAI) else None


def with_reasoning_capture(model: BaseChatModel) -> BaseChatModel:
    """A copy of a ChatOpenAI-family model that keeps ``delta.reasoning_content``.

    ChatOpenAI drops the ``reasoning_content``/``reasoning`` deltas of vLLM, DeepSeek and
    llama.cpp (``--reasoning-format deepseek``); the copy's ``_convert_chunk_to_generation_chunk``
    reads them from the raw chunk into ``additional_kwargs["reasoning_content"]``. Subclasses
    that already convert chunks themselves (ChatDeepSeek...) and other models are returned as is.
    """
    base = openai_base(model)
    name = "_convert_chunk_to_generation_chunk"
    cls = type(model)
    if base is None or getattr(cls, name) is not getattr(base, name):
        return model
    sub = _CLASSES.get(cls)
    if sub is None:

        def _convert_chunk_to_generation_chunk(self: Any, chunk: dict, *args: Any, **kwargs: Any) -> Any:
            generation = getattr(super(_CLASSES[cls], self), name)(chunk, *args, **kwargs)
            choices = chunk.get("choices") or (chunk.get("chunk") or {}).get("choices") or []
            delta = (choices[0].get("delta") or {}) if choices else {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if generation is not None and isinstance(reasoning, str) and reasoning:
                generation.message.additional_kwargs["reasoning_content"] = reasoning
            return generation

        sub = type(
            cls.__name__,
            (cls,),
            {
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "_convert_chunk_to_generation_chunk": _convert_chunk_to_generation_chunk,
            },
        )
        _CLASSES[cls] = sub
    clone = copy.copy(model)
    object.__setattr__(clone, "__class__", sub)
    return clone


def open_stream(
    inner: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None, run: Any
) -> tuple[Generator[ChatGenerationChunk, None, None], list[ChatGenerationChunk]]:
    """The inner stream and its first chunk; a refusal is retried as ``run.refused`` says."""
    for attempt in range(ATTEMPTS):
        stream = inner_stream(inner, messages, stop, run.request)
        try:
            first = next(stream, None)
        except Exception as error:
            stream.close()
            if attempt == ATTEMPTS - 1 or not run.refused(error, inner):
                raise
            continue
        return stream, [] if first is None else [first]
    raise AssertionError("unreachable")


async def aopen_stream(
    inner: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None, run: Any
) -> tuple[AsyncIterator[ChatGenerationChunk], list[ChatGenerationChunk]]:
    """Async twin of ``open_stream``."""
    for attempt in range(ATTEMPTS):
        stream = ainner_stream(inner, messages, stop, run.request)
        try:
            first = await anext(stream, None)
        except Exception as error:
            await stream.aclose()  # type: ignore[attr-defined]
            if attempt == ATTEMPTS - 1 or not run.refused(error, inner):
                raise
            continue
        return stream, [] if first is None else [first]
    raise AssertionError("unreachable")


def inner_stream(
    inner: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
) -> Generator[ChatGenerationChunk, None, None]:
    """The inner model's ``_stream``; closing this closes it (and its HTTP response)."""
    if type(inner)._stream is not BaseChatModel._stream:
        yield from inner._stream(messages, stop=stop, **kwargs)
    else:
        yield from _not_streaming(inner, messages, stop, kwargs)


def ainner_stream(
    inner: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
) -> AsyncIterator[ChatGenerationChunk]:
    """Async twin of ``inner_stream`` (a model with only ``_stream`` runs it in a thread)."""
    cls = type(inner)
    if cls._astream is BaseChatModel._astream and cls._stream is BaseChatModel._stream:
        return _anot_streaming(inner, messages, stop, kwargs)
    return inner._astream(messages, stop=stop, **kwargs)


def _not_streaming(
    inner: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
) -> Iterator[ChatGenerationChunk]:
    """A model without ``_stream``: its whole answer as one chunk (monitored, never cut)."""
    yield from _as_chunks(inner._generate(messages, stop=stop, **kwargs))


async def _anot_streaming(
    inner: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
) -> AsyncIterator[ChatGenerationChunk]:
    for chunk in _as_chunks(await inner._agenerate(messages, stop=stop, **kwargs)):
        yield chunk


def _as_chunks(result: ChatResult) -> list[ChatGenerationChunk]:
    chunks = []
    for generation in result.generations:
        msg = generation.message
        calls = [
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c.get("id"), index=i)
            for i, c in enumerate(getattr(msg, "tool_calls", None) or [])
        ]
        chunk = AIMessageChunk(
            content=msg.content,
            additional_kwargs=msg.additional_kwargs,
            response_metadata=msg.response_metadata,
            usage_metadata=getattr(msg, "usage_metadata", None),
            tool_call_chunks=calls,
        )
        chunks.append(ChatGenerationChunk(message=chunk, generation_info=generation.generation_info))
    return chunks


async def aiter_list(chunks: list[ChatGenerationChunk]) -> AsyncIterator[ChatGenerationChunk]:
    for chunk in chunks:
        yield chunk


def swap_model(runnable: Any, old: BaseChatModel, new: BaseChatModel) -> Any:
    """``runnable`` with its ``RunnableBinding(bound=old)`` steps bound to ``new``; None if none."""
    if isinstance(runnable, RunnableBinding) and runnable.bound is old:
        return runnable.__class__(
            bound=new,
            kwargs=runnable.kwargs,
            config=runnable.config,
            config_factories=runnable.config_factories,
            custom_input_type=runnable.custom_input_type,
            custom_output_type=runnable.custom_output_type,
        )
    if runnable is old:
        return new
    if isinstance(runnable, RunnableSequence):
        steps = [swap_model(step, old, new) for step in runnable.steps]
        if all(s is None for s in steps):
            return None
        return RunnableSequence(
            *[s if s is not None else o for s, o in zip(steps, runnable.steps)], name=runnable.name
        )
    if isinstance(runnable, RunnableParallel):
        swapped = {k: swap_model(v, old, new) for k, v in runnable.steps__.items()}
        if all(s is None for s in swapped.values()):
            return None
        return RunnableParallel({k: s if s is not None else runnable.steps__[k] for k, s in swapped.items()})
    return None
