"""LlamaIndex responses <-> ChunkParts and LlamaIndex's own logprob type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import LogProb, TextBlock

from ..core.tokens import Phase, TokenLogprob, token_from_candidates
from ..providers.frameworks import parse_llama_index_response
from ..providers.parts import ChunkParts


def parts_of(response: Any) -> ChunkParts:
    """The ChunkParts of one streamed LlamaIndex response: its ``raw`` chunk (see
    ``parse_llama_index_response``) or, when that says nothing, LlamaIndex's own fields:
    ``delta``, ``.logprobs`` and ``additional_kwargs["thinking_delta"]`` (reasoning)."""
    parts = parse_llama_index_response(response)
    extra = getattr(response, "additional_kwargs", None) or {}
    thinking = extra.get("thinking_delta") if isinstance(extra, dict) else None
    if not (parts.generated_text or parts.tokens):
        content = getattr(response, "delta", None) or ""
        reasoning = thinking if isinstance(thinking, str) else ""
        phase = Phase.REASONING if reasoning and not content else Phase.ANSWER
        tokens = tokens_from_llama_logprobs(getattr(response, "logprobs", None), phase)
        if content or reasoning or tokens:
            return parts._replace(
                content=content, reasoning=reasoning, tokens=tokens, has_logprobs=bool(tokens)
            )
        return parts
    if thinking and not parts.reasoning and not parts.content:
        tokens = tuple(t._replace(phase=Phase.REASONING) for t in parts.tokens)
        return parts._replace(reasoning=thinking, tokens=tokens)
    return parts


def tokens_from_llama_logprobs(logprobs: Any, phase: Phase = Phase.ANSWER) -> tuple[TokenLogprob, ...]:
    """LlamaIndex's ``List[List[LogProb]]`` (top candidates per token) -> TokenLogprob records.

    The type does not say which candidate was sampled: the most likely one is taken as the token.
    """
    tokens = []
    for candidates in logprobs or ():
        pairs = [(c.token, float(c.logprob)) for c in candidates or ()]
        if not pairs:
            continue
        best = max(pairs, key=lambda pair: pair[1])
        tokens.append(token_from_candidates(best[0], best[1], pairs, phase))
    return tuple(tokens)


def llama_logprobs(tokens: Sequence[TokenLogprob]) -> list[list[LogProb]]:
    """Kept tokens as LlamaIndex's ``List[List[LogProb]]`` (top candidates per token; tokens with
    neither a logprob nor candidates left out): a real list, so pydantic dumps a response that
    carries it without a serializer warning."""
    make = LogProb.model_construct
    rows = []
    for token in tokens:
        if token.top_tokens:
            pairs: Any = zip(token.top_tokens, token.top_logprobs, strict=True)
        elif token.logprob is not None:
            pairs = [(token.token, token.logprob)]
        else:
            continue
        rows.append(
            [make(token=text, logprob=value, bytes=list(text.encode("utf-8"))) for text, value in pairs]
        )
    return rows


def text_of(response: Any) -> str:
    """Accumulated text of a response: the message content (chat) or ``text`` (completion)."""
    message = getattr(response, "message", None)
    if message is not None:
        return message.content or ""
    return getattr(response, "text", None) or ""


def with_text(message: Any, text: str) -> Any:
    """A copy of a ChatMessage whose text block reads ``text``; other blocks are kept. Several
    text blocks (the content is their concatenation) become one, after the others."""
    blocks = list(message.blocks)
    texts = [i for i, block in enumerate(blocks) if isinstance(block, TextBlock)]
    if len(texts) == 1:
        blocks[texts[0]] = TextBlock(text=text)
    else:
        blocks = [b for b in blocks if not isinstance(b, TextBlock)] + [TextBlock(text=text)]
    return message.model_copy(update={"blocks": blocks})
