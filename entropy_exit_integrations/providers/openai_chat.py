"""Chat-completion chunks (``choices[0].logprobs.content[]``) -> ChunkParts.

One shape serves OpenAI, vLLM, llama.cpp's server, SGLang, Together/Fireworks chat and Ollama's
``/v1``. llama.cpp's variant (top list includes the sampled token, ``bytes`` null) needs nothing
special. Chunks may be JSON dicts or openai SDK objects.
"""

from __future__ import annotations

from typing import Any

from ..core.tokens import Phase, TokenLogprob, normalised_token, token_from_candidates
from ..errors import LogprobsFormatError
from ._fields import field
from .parts import EMPTY, ChunkParts


def parse_chat_chunk(chunk: Any, *, choice_index: int = 0) -> ChunkParts:
    """Split one ``chat.completion.chunk`` into text, reasoning text and token logprobs.

    Role-only, usage-only and empty chunks give no tokens. Raises ``LogprobsFormatError`` naming
    the field when a chunk carries logprobs that are malformed.
    """
    # JSON dicts all the way down, or SDK objects all the way down: pick the accessor once.
    get = dict.get if isinstance(chunk, dict) else field
    usage = get(chunk, "usage")
    choices = get(chunk, "choices")
    if not choices:
        return EMPTY if usage is None else ChunkParts(usage=_as_dict(usage))
    choice = _choice(choices, choice_index)
    if choice is None:
        return EMPTY if usage is None else ChunkParts(usage=_as_dict(usage))
    delta = get(choice, "delta")
    content = reasoning = ""
    tool_call = False
    if delta is not None:
        content = get(delta, "content") or ""
        reasoning = get(delta, "reasoning_content") or get(delta, "reasoning") or ""
        tool_call = bool(get(delta, "tool_calls"))
    phase = Phase.REASONING if reasoning and not content else Phase.ANSWER
    logprobs = get(choice, "logprobs")
    tokens: tuple[TokenLogprob, ...] = ()
    if logprobs is not None:
        entries = get(logprobs, "content")
        if entries is None:
            entries = get(logprobs, "refusal") or []
        tokens = tokens_from_content_entries(entries, phase, where="choices[].logprobs.content")
    return ChunkParts(
        content=content if isinstance(content, str) else str(content),
        reasoning=reasoning if isinstance(reasoning, str) else str(reasoning),
        tokens=tokens,
        has_logprobs=logprobs is not None,
        finish_reason=get(choice, "finish_reason"),
        usage=_as_dict(usage) if usage is not None else None,
        tool_call=tool_call,
    )


def tokens_from_content_entries(
    entries: Any, phase: Phase = Phase.ANSWER, *, where: str = "logprobs.content"
) -> tuple[TokenLogprob, ...]:
    """Convert a ``logprobs.content`` list (dicts or SDK objects) to TokenLogprob records."""
    if not isinstance(entries, (list, tuple)):
        raise LogprobsFormatError(where, f"expected a list, got {type(entries).__name__}")
    try:
        if entries and isinstance(entries[0], dict):
            return tuple(_trusting_token(entry, phase) for entry in entries)
        return tuple(_sdk_token(entry, phase) for entry in entries)
    except (KeyError, TypeError, AttributeError, ValueError):
        pass  # something is off: the checking path below names the field
    return tuple(_checked_token(entry, i, phase, where) for i, entry in enumerate(entries))


def _trusting_token(entry: dict[str, Any], phase: Phase) -> TokenLogprob:
    """The per-token hot path for JSON dicts: well-formed input costs a few C-level loops.

    Anything malformed raises here (KeyError, TypeError, ValueError) and is re-read by
    ``_checked_token``: ``sum`` makes non-numbers and NaN show themselves, ``join`` non-strings.
    SDK objects are not subscriptable and take the checking path too (pydantic checked them).
    """
    token = entry["token"]
    logprob = entry["logprob"]
    top = entry["top_logprobs"] or ()
    texts = [alt["token"] for alt in top]
    values = [alt["logprob"] for alt in top]
    total = sum(values) + (0.0 if logprob is None else logprob)
    "".join(texts)
    if total != total or token.__class__ is not str:
        raise ValueError
    return normalised_token(token, logprob, texts, values, phase)


def _sdk_token(entry: Any, phase: Phase) -> TokenLogprob:
    """The hot path for openai SDK objects, whose field types pydantic has already checked."""
    top = entry.top_logprobs or ()
    return normalised_token(
        entry.token, entry.logprob, [alt.token for alt in top], [alt.logprob for alt in top], phase
    )


def _checked_token(entry: Any, i: int, phase: Phase, where: str) -> TokenLogprob:
    token = field(entry, "token")
    if not isinstance(token, str):
        raise LogprobsFormatError(f"{where}[{i}].token", f"expected a string, got {token!r}")
    logprob = _number(field(entry, "logprob"), f"{where}[{i}].logprob", optional=True)
    top = field(entry, "top_logprobs") or ()
    if not isinstance(top, (list, tuple)):
        raise LogprobsFormatError(f"{where}[{i}].top_logprobs", "expected a list")
    candidates = []
    for j, alt in enumerate(top):
        text = field(alt, "token")
        if not isinstance(text, str):
            raise LogprobsFormatError(
                f"{where}[{i}].top_logprobs[{j}].token", f"expected a string, got {text!r}"
            )
        value = _number(field(alt, "logprob"), f"{where}[{i}].top_logprobs[{j}].logprob")
        candidates.append((text, value))
    return token_from_candidates(token, logprob, candidates, phase)


def _number(value: Any, where: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LogprobsFormatError(where, f"expected a number, got {value!r}")
    if value != value:
        raise LogprobsFormatError(where, "NaN logprob")
    return float(value)


def _choice(choices: Any, index: int) -> Any:
    if len(choices) == 1:
        return choices[0]
    for choice in choices:
        if (field(choice, "index") or 0) == index:
            return choice
    return None


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    dump = getattr(value, "model_dump", None)
    return dump() if dump else dict(vars(value))
