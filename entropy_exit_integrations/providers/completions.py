"""Legacy Completions chunks (``choices[0].text`` + ``logprobs``) -> ChunkParts.

Two logprob shapes arrive on ``/v1/completions``:

* the legacy OpenAI one (OpenAI, vLLM, Together, llama-cpp-python): parallel lists ``tokens``,
  ``token_logprobs`` and ``top_logprobs`` (a list of ``{token: logprob}`` dicts);
* llama.cpp's native server, which sends the chat shape ``logprobs.content[]`` here too.
"""

from __future__ import annotations

from typing import Any

from ..core.tokens import Phase, TokenLogprob, token_from_candidates
from ..errors import LogprobsFormatError
from ._fields import field
from .openai_chat import _as_dict, _choice, _number, tokens_from_content_entries
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
            tokens = tokens_from_content_entries(entries, where="choices[].logprobs.content")
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
    """Convert the legacy ``tokens``/``token_logprobs``/``top_logprobs`` lists."""
    texts = field(logprobs, "tokens") or []
    values = field(logprobs, "token_logprobs") or []
    tops = field(logprobs, "top_logprobs") or []
    if not isinstance(texts, list) or not isinstance(values, list) or not isinstance(tops, list):
        raise LogprobsFormatError("choices[].logprobs", "tokens/token_logprobs/top_logprobs must be lists")
    if len(values) != len(texts) or (tops and len(tops) != len(texts)):
        raise LogprobsFormatError(
            "choices[].logprobs",
            f"{len(texts)} tokens but {len(values)} token_logprobs and {len(tops)} top_logprobs",
        )
    tokens = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise LogprobsFormatError(f"choices[].logprobs.tokens[{i}]", f"expected a string, got {text!r}")
        logprob = _number(values[i], f"choices[].logprobs.token_logprobs[{i}]", optional=True)
        top = tops[i] if tops else None
        if top is None:
            top = {}
        if not isinstance(top, dict):
            raise LogprobsFormatError(
                f"choices[].logprobs.top_logprobs[{i}]", "expected a {token: logprob} dict"
            )
        candidates = [
            (alt, _number(value, f"choices[].logprobs.top_logprobs[{i}][{alt!r}]"))
            for alt, value in top.items()
        ]
        tokens.append(token_from_candidates(text, logprob, candidates, phase))
    return tuple(tokens)
