"""Chat-completion chunks (``choices[0].logprobs.content[]``) -> ChunkParts.

One shape serves OpenAI, vLLM, llama.cpp's server, SGLang, Together/Fireworks chat and Ollama's
``/v1``. llama.cpp's variant (top list includes the sampled token, ``bytes`` null) needs nothing
special. Chunks may be JSON dicts or openai SDK objects.
"""

from __future__ import annotations

import operator
from typing import Any

from ..core.tokens import Phase, TokenLogprob, normalised_token
from ._fields import field
from .parts import EMPTY, ChunkParts

_NAN = float("nan")
_TEXT = operator.itemgetter("token")
_LOGPROB = operator.itemgetter("logprob")


def parse_chat_chunk(chunk: Any, *, choice_index: int = 0) -> ChunkParts:
    """Split one ``chat.completion.chunk`` into text, reasoning text and token logprobs.

    Only choice ``choice_index`` is read (``n > 1`` streams interleave choices; the others
    contribute nothing). Reasoning in a separate field is read under any of the names servers
    use: ``reasoning_content`` (DeepSeek, llama.cpp, older vLLM, SGLang), ``reasoning`` (vLLM
    0.9+, Ollama ``/v1``, OpenRouter) and ``thinking``.
    Role-only, usage-only and empty chunks give no tokens. Malformed logprob entries never raise:
    a bad value becomes NaN, which the monitor reads as an unknown token (with one warning), so
    broken data can only delay an exit.
    """
    if not isinstance(chunk, dict):
        try:
            return _parse_sdk_chunk(chunk, choice_index)
        except (AttributeError, TypeError):
            pass  # not an openai SDK object after all: read it field by field
    # JSON dicts all the way down, or objects read field by field: pick the accessor once.
    get = dict.get if isinstance(chunk, dict) else field
    usage = get(chunk, "usage")
    choices = get(chunk, "choices")
    if not choices:
        return EMPTY if usage is None else ChunkParts(usage=_as_dict(usage))
    choice = _choice(choices, choice_index, get)
    if choice is None:
        return EMPTY if usage is None else ChunkParts(usage=_as_dict(usage))
    delta = get(choice, "delta")
    content = reasoning = ""
    tool_call = False
    if delta is not None:
        content = get(delta, "content") or ""
        reasoning = get(delta, "reasoning_content") or get(delta, "reasoning") or get(delta, "thinking") or ""
        tool_call = bool(get(delta, "tool_calls"))
    phase = Phase.REASONING if reasoning and not content else Phase.ANSWER
    logprobs = get(choice, "logprobs")
    tokens: tuple[TokenLogprob, ...] = ()
    if logprobs is not None:
        entries = get(logprobs, "content")
        if entries is None:
            entries = get(logprobs, "refusal") or []
        tokens = tokens_from_content_entries(entries, phase)
    return ChunkParts(  # positional: this runs once per token
        content if content.__class__ is str else str(content),
        reasoning if reasoning.__class__ is str else str(reasoning),
        tokens,
        logprobs is not None,
        get(choice, "finish_reason"),
        None if usage is None else _as_dict(usage),
        tool_call,
    )


def _parse_sdk_chunk(chunk: Any, choice_index: int) -> ChunkParts:
    """``parse_chat_chunk`` for openai SDK objects (pydantic models whose declared fields are
    typed): plain attribute reads, and the undeclared reasoning fields from ``model_extra``."""
    usage = chunk.usage
    choices = chunk.choices
    choice = None
    if choices:
        choice = choices[0] if len(choices) == 1 and (choices[0].index or 0) == choice_index else None
        if choice is None and len(choices) > 1:
            choice = _choice(choices, choice_index)
    if choice is None:
        return EMPTY if usage is None else ChunkParts(usage=_as_dict(usage))
    delta = choice.delta
    content = reasoning = ""
    tool_call = False
    if delta is not None:
        content = delta.content or ""
        extra = delta.model_extra
        if extra:
            reasoning = (
                extra.get("reasoning_content") or extra.get("reasoning") or extra.get("thinking") or ""
            )
        tool_call = bool(delta.tool_calls)
    phase = Phase.REASONING if reasoning and not content else Phase.ANSWER
    logprobs = choice.logprobs
    tokens: tuple[TokenLogprob, ...] = ()
    if logprobs is not None:
        entries = logprobs.content
        if entries is None:
            entries = logprobs.refusal or []
        tokens = tokens_from_content_entries(entries, phase)
    return ChunkParts(
        content if content.__class__ is str else str(content),
        reasoning if reasoning.__class__ is str else str(reasoning),
        tokens,
        logprobs is not None,
        choice.finish_reason,
        None if usage is None else _as_dict(usage),
        tool_call,
    )


def tokens_from_content_entries(entries: Any, phase: Phase = Phase.ANSWER) -> tuple[TokenLogprob, ...]:
    """Convert a ``logprobs.content`` list (dicts or SDK objects) to TokenLogprob records.

    Not a list: no tokens (the chunk's text then counts as one unknown token).
    """
    if not isinstance(entries, (list, tuple)):
        return ()
    try:
        if entries and isinstance(entries[0], dict):
            if len(entries) == 1:  # one token per chunk: the common case
                return (_trusting_token(entries[0], phase),)
            return tuple(_trusting_token(entry, phase) for entry in entries)
        return tuple(_sdk_token(entry, phase) for entry in entries)
    except (KeyError, TypeError, AttributeError, ValueError):
        pass  # something is off: the checking path below reads what it can
    return tuple(_checked_token(entry, phase) for entry in entries)


def _trusting_token(entry: dict[str, Any], phase: Phase) -> TokenLogprob:
    """The per-token hot path for JSON dicts: well-formed input costs a few C-level loops.

    Anything malformed raises here (KeyError, TypeError, ValueError) and is re-read by
    ``_checked_token``: ``sum`` makes non-numbers and NaN show themselves, ``join`` non-strings.
    SDK objects are not subscriptable and take the checking path too (pydantic checked them).
    """
    token = entry["token"]
    logprob = entry["logprob"]
    top = entry["top_logprobs"] or ()
    texts = list(map(_TEXT, top))
    values = list(map(_LOGPROB, top))
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


def _checked_token(entry: Any, phase: Phase) -> TokenLogprob:
    """One entry read field by field: a bad value is NaN (unknown to the monitor), never an error."""
    token = field(entry, "token") if entry is not None else None
    text = token if isinstance(token, str) else ("" if token is None else str(token))
    logprob = field(entry, "logprob") if entry is not None else None
    top = field(entry, "top_logprobs") if entry is not None else None
    if not isinstance(top, (list, tuple)):
        return TokenLogprob(text, None, (), (_NAN,) if top is not None else (), phase)
    texts, values = [], []
    for alt in top:
        alt_text = field(alt, "token") if alt is not None else None
        texts.append(alt_text if isinstance(alt_text, str) else str(alt_text))
        values.append(_number(field(alt, "logprob") if alt is not None else None))
    return normalised_token(text, None if logprob is None else _number(logprob), texts, values, phase)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _NAN
    return float(value)


def _choice(choices: Any, index: int, get: Any = field) -> Any:
    """The choice numbered ``index``, or None when this chunk carries only other choices.

    With ``n > 1`` a server interleaves the choices' chunks (usually one choice per chunk, each
    with its own ``index``): only ``index`` is read, so choices never mix. A choice without an
    ``index`` is choice 0.
    """
    if len(choices) == 1:  # the common case
        choice = choices[0]
        return choice if (get(choice, "index") or 0) == index else None
    for choice in choices:
        if (get(choice, "index") or 0) == index:
            return choice
    return None


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    dump = getattr(value, "model_dump", None)
    return dump() if dump else dict(vars(value))
