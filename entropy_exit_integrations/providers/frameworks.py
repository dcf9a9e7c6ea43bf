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
