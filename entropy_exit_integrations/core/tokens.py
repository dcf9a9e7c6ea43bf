"""The one normalised record every provider adapter produces."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class Phase(str, Enum):
    """Which part of a generation a token belongs to."""

    REASONING = "reasoning"
    ANSWER = "answer"


class TokenLogprob(NamedTuple):
    """One generated token with the logprobs of its top candidates.

    Immutable and cheap to create (a named tuple: no per-instance dict), since adapters make one
    per generated token.

    Attributes:
        token: the token's text as the provider sent it.
        logprob: natural-log probability of the sampled token, or ``None`` when not sent.
        top_tokens: texts of the top-k candidates, parallel to ``top_logprobs``.
        top_logprobs: natural-log probabilities of the top-k candidates. Empty when the
            provider sent no candidates: such a token is *unknown*, never *certain*.
        phase: reasoning (thinking) or answer text.
    """

    token: str
    logprob: float | None
    top_tokens: tuple[str, ...]
    top_logprobs: tuple[float, ...]
    phase: Phase = Phase.ANSWER

    @property
    def k(self) -> int:
        """Number of candidates the provider sent for this token."""
        return len(self.top_logprobs)


def token_from_candidates(
    token: str,
    logprob: float | None,
    candidates: list[tuple[str, float]],
    phase: Phase = Phase.ANSWER,
) -> TokenLogprob:
    """Build a TokenLogprob from a provider's (text, logprob) candidate list.

    Two normalisations every adapter needs:

    * an entry repeated verbatim (same text, same logprob) is one candidate listed twice and is
      kept once; the same text with a *different* logprob is a different token id that decodes
      to the same text (byte pieces do) and is kept;
    * when the sampled token is missing from its own top list (it was sampled from the tail)
      and its logprob is known, it is added: it is a real outcome with a known probability.
    """
    texts = [text for text, _ in candidates]
    values = [value for _, value in candidates]
    return normalised_token(token, logprob, texts, values, phase)


def normalised_token(
    token: str,
    logprob: float | None,
    texts: list[str],
    values: list[float],
    phase: Phase = Phase.ANSWER,
) -> TokenLogprob:
    """``token_from_candidates`` over parallel lists (the adapters' fast path); may modify them."""
    if len(set(texts)) != len(texts):  # same text twice: common (byte pieces), exact repeats are not
        pairs = dict.fromkeys(zip(texts, values))
        if len(pairs) != len(texts):
            texts = [text for text, _ in pairs]
            values = [value for _, value in pairs]
    if texts and logprob is not None and token not in texts:
        texts.append(token)
        values.append(logprob)
    return TokenLogprob(token, logprob, tuple(texts), tuple(values), phase)
