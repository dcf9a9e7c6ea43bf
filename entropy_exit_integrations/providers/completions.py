"""Legacy Completions chunks (``choices[0].text`` + ``logprobs``) -> ChunkParts.

Two logprob shapes arrive on ``/v1/completions``:

* the legacy OpenAI one (OpenAI, vLLM, Together, llama-cpp-python): parallel lists ``tokens``,
  ``token_logprobs`` and ``top_logprobs`` (a list of ``{token: logprob}`` dicts);
* llama.cpp's native server, which sends the chat shape ``logprobs.content[]`` here too.
"""

from __future__ import annotations

from typing import Any

from ..core.tokens import Phase, TokenLogprob, token_from_candidates
from ._fields import field
from .openai_chat import _NAN, _as_dict, _choice, _number, tokens_from_content_entries
from .parts import EMPTY, ChunkParts


def parse_completion_chunk(chunk: Any, *, choice_index: int = 0) -> ChunkParts:
    """Split one ``text_completion`` chunk into text and token logprobs."""
    usage = field(chunk, "usage")
    choices = field(chunk, "choices")
    choice = _choice(choices, choice_index) if choices else None
    if choice is None:
        return EMPTY if usage is None else ChunkParts(usage=_as_dict(usage))
    logprobs = field(choice, "logprobs")
    tokens: tuple[TokenLogprob, ...] = ()
    if logprobs is not None:
        entries = field(logprobs, "content")
        if entries is not None:
            tokens = tokens_from_content_entries(entries)
        else:
            tokens = tokens_from_legacy_logprobs(logprobs)
    text = field(choice, "text") or ""
    return ChunkParts(
        content=text,
        tokens=tokens,
        has_logprobs=logprobs is not None,
        finish_reason=field(choice, "finish_reason"),
        usage=_as_dict(usage) if usage is not None else None,
    )


def tokens_from_legacy_logprobs(logprobs: Any, phase: Phase = Phase.ANSWER) -> tuple[TokenLogprob, ...]:
    """Convert the legacy ``tokens``/``token_logprobs``/``top_logprobs`` lists.

    Lists that do not line up give no tokens (the text then counts as unknown); a bad value is
    NaN, which the monitor reads as an unknown token: broken data never raises.
    """
    texts = field(logprobs, "tokens") or []
    values = field(logprobs, "token_logprobs") or []
    tops = field(logprobs, "top_logprobs") or []
    if not (isinstance(texts, list) and isinstance(values, list) and isinstance(tops, list)):
        return ()
    if len(values) != len(texts) or (tops and len(tops) != len(texts)):
        return ()
    tokens = []
    for i, text in enumerate(texts):
        logprob = None if values[i] is None else _number(values[i])
        top = tops[i] if tops else None
        if isinstance(top, dict):
            candidates = [(str(alt), _number(value)) for alt, value in top.items()]
        else:
            candidates = [] if top is None else [("", _NAN)]
        tokens.append(token_from_candidates(str(text), logprob, candidates, phase))
    return tuple(tokens)
