"""The one normalised record every provider adapter produces."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Phase(str, Enum):
    """Which part of a generation a token belongs to."""

    REASONING = "reasoning"
    ANSWER = "answer"


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with the logprobs of its top candidates.

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
    if len(set(candidates)) != len(candidates):
        seen: set[tuple[str, float]] = set()
        texts, values = [], []
        for pair in candidates:
            if pair not in seen:
                seen.add(pair)
                texts.append(pair[0])
                values.append(pair[1])
    if candidates and logprob is not None and token not in texts:
        texts.append(token)
        values.append(logprob)
    return TokenLogprob(token, logprob, tuple(texts), tuple(values), phase)
