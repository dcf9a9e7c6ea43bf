"""Logprobs as LangChain and LlamaIndex hand them over, read without importing either framework."""

from __future__ import annotations

from typing import Any

from ..core.tokens import Phase, TokenLogprob
from ._fields import field
from .completions import parse_completion_chunk
from .openai_chat import parse_chat_chunk, tokens_from_content_entries
from .parts import EMPTY, ChunkParts


def tokens_from_langchain_chunk(chunk: Any, phase: Phase = Phase.ANSWER) -> tuple[TokenLogprob, ...] | None:
    """Tokens of a LangChain ``ChatGenerationChunk`` (or ``AIMessageChunk``).

    ChatOpenAI puts streamed logprobs in ``generation_info["logprobs"]`` and in the message's
    ``response_metadata["logprobs"]``. Returns None when the chunk has no logprobs at all.
    """
    info = field(chunk, "generation_info") or {}
    logprobs = info.get("logprobs") if isinstance(info, dict) else None
    if logprobs is None:
        message = field(chunk, "message") or chunk
        metadata = field(message, "response_metadata") or {}
        logprobs = metadata.get("logprobs") if isinstance(metadata, dict) else None
    if logprobs is None:
        return None
    entries = field(logprobs, "content") if not isinstance(logprobs, list) else logprobs
    return tokens_from_content_entries(entries or [], phase)


def parse_langchain_chunk(chunk: Any) -> ChunkParts:
    """ChunkParts of a LangChain ``AIMessageChunk``/``AIMessage`` or ``ChatGenerationChunk``.

    The per-token hot path of the LangChain integration: it reads the message's fields from its
    ``__dict__`` (pydantic keeps them there) instead of through properties. Reasoning is the
    ``reasoning_content``/``reasoning`` field that partner classes (ChatDeepSeek) keep; usage is
    ``usage_metadata`` as the provider's ``prompt/completion_tokens`` block.
    """
    outer = chunk.__dict__  # (getattr of a missing name is slow on a pydantic model)
    message = outer.get("message", chunk)
    data = message.__dict__
    text = data.get("content", data.get("text", ""))  # a message; an LLM's GenerationChunk
    if text.__class__ is not str:  # content blocks
        text = message.text
        text = text() if callable(text) else text  # a method before langchain-core 1
    info = outer.get("generation_info") or {}
    metadata = data.get("response_metadata") or {}
    extra = data.get("additional_kwargs") or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning") or ""
    if reasoning.__class__ is not str:
        reasoning = ""
    logprobs = info.get("logprobs")
    if logprobs is None:
        logprobs = metadata.get("logprobs")
    tokens: tuple[TokenLogprob, ...] = ()
    if logprobs is not None:
        entries = logprobs if isinstance(logprobs, list) else field(logprobs, "content")
        phase = Phase.REASONING if reasoning and not text else Phase.ANSWER
        tokens = tokens_from_content_entries(entries or [], phase)
    usage = data.get("usage_metadata")
    return ChunkParts(
        text or "",
        reasoning,
        tokens,
        logprobs is not None,
        info.get("finish_reason") or metadata.get("finish_reason"),
        {
            "prompt_tokens": usage.get("input_tokens", 0),
            "completion_tokens": usage.get("output_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
        }
        if usage
        else None,
        bool(data.get("tool_call_chunks") or data.get("tool_calls")),
    )


def parse_llama_index_response(response: Any) -> ChunkParts:
    """ChunkParts of a streamed LlamaIndex ``ChatResponse``/``CompletionResponse``.

    llama-index-llms-openai fills ``.logprobs`` only when not streaming; streamed logprobs live in
    ``response.raw``, the provider's own chunk.
    """
    raw = field(response, "raw")
    if raw is None:
        return EMPTY
    if field(raw, "object") == "text_completion":
        return parse_completion_chunk(raw)
    return parse_chat_chunk(raw)
