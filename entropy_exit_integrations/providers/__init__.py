"""Adapters from provider wire shapes to ``TokenLogprob`` records, as pure functions over chunks."""

from .completions import parse_completion_chunk, tokens_from_legacy_logprobs
from .frameworks import parse_llama_index_response, tokens_from_langchain_chunk
from .openai_chat import parse_chat_chunk, tokens_from_content_entries
from .parts import ChunkParts
from .reasoning import (
    REASONING_FORMATS,
    ReasoningFormat,
    ReasoningSplitter,
    ThinkTagSplitter,
    check_reasoning_format,
    format_for_model,
    format_from_props,
    resolve_format,
)

__all__ = [
    "REASONING_FORMATS",
    "ChunkParts",
    "ReasoningFormat",
    "ReasoningSplitter",
    "ThinkTagSplitter",
    "check_reasoning_format",
    "format_for_model",
    "format_from_props",
    "parse_chat_chunk",
    "parse_completion_chunk",
    "parse_llama_index_response",
    "resolve_format",
    "tokens_from_content_entries",
    "tokens_from_langchain_chunk",
    "tokens_from_legacy_logprobs",
]
