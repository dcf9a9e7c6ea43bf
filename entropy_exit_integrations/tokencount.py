"""Counting tokens where no logprob entries exist (prompts, forced-answer prompts, plain text).

Generated tokens are counted from logprob entries, one per token, exact for any tokenizer.
Elsewhere: for a model tiktoken knows (OpenAI's), tiktoken's exact count; for any other model,
an estimate of 4 characters per token. tiktoken's encodings are another model's tokenizer
there, no better an estimate than that for the prompt (the chat template the server adds
dominates the error), and loading one holds the GIL for 0.2-0.7 s, which would stall an
event loop at the first exit. tiktoken downloads its BPE files on first use, or reads them from
the cache directory its own environment setting names (the user's; this package never changes
the environment); offline without that cache the count is the estimate.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple


class TokenCount(NamedTuple):
    tokens: int
    estimated: bool
    """True unless the count used the model's own tokenizer."""
    encoding: str


@functools.lru_cache(maxsize=16)
def _encoding(model: str | None) -> tuple[Any, str] | None:
    """tiktoken's own encoding of an OpenAI model, or None (another model, or no tiktoken)."""
    if not model:
        return None
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return None
    encoding = _load_offline(tiktoken, name)
    return None if encoding is None else (encoding, name)


def _load_offline(tiktoken: Any, name: str) -> Any:
    try:
        return tiktoken.get_encoding(name)
    except Exception:  # noqa: BLE001 - offline download failures come in many types
        return None


def count_tokens(text: str, model: str | None = None) -> TokenCount:
    """Tokens in ``text`` for ``model``; ``estimated`` says whether the count is approximate."""
    loaded = _encoding(model)
    if loaded is None:
        return TokenCount(max(1, len(text) // 4) if text else 0, True, "chars/4")
    encoding, name = loaded
    return TokenCount(len(encoding.encode(text, disallowed_special=())), False, name)


def count_message_tokens(messages: list[dict[str, Any]], model: str | None = None) -> TokenCount:
    """Prompt tokens of chat messages: content tokens plus OpenAI's ~4 tokens of framing each.

    Always an estimate: chat templates differ per model and server.
    """
    total = 3
    name = "chars/4"
    for message in messages:
        content = message.get("content") or ""
        if not isinstance(content, str):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        count = count_tokens(content, model)
        total += count.tokens + 4
        name = count.encoding
    return TokenCount(total, True, name)
