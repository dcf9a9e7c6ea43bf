"""The one normalised record every provider adapter produces."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from enum import Enum
from typing import NamedTuple, overload


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


class TokenStore(Sequence[TokenLogprob]):
    """Kept tokens in compact arrays (about 0.26 KB per top-20 token instead of about 2 KB as
    TokenLogprob tuples): texts are stored once each, by number. Reading an item builds its
    TokenLogprob; ``store == [...]`` compares the tokens. Append-only, like the stream."""

    __slots__ = ("_index", "_texts", "_token", "_logprob", "_ids", "_values", "_ends", "_phases", "unknown")

    def __init__(self, tokens: Iterable[TokenLogprob] = ()) -> None:
        self._texts: list[str] = []
        self._index = _Index(self._texts)
        self._token = array("I")  # text number of each token
        self._logprob = array("d")  # its logprob, NaN when not sent
        self._ids = array("I")  # candidates' text numbers, all tokens one after another
        self._values = array("d")  # candidates' logprobs
        self._ends = array("I")  # where each token's candidates end in _ids/_values
        self._phases = bytearray()  # 1 for reasoning
        self.unknown = 0
        """Tokens kept with neither a logprob nor candidates."""
        self.extend(tokens)

    def extend(self, tokens: Iterable[TokenLogprob]) -> None:
        number = self._index.__getitem__  # a new text gets the next number (_Index.__missing__)
        ids = self._ids
        for token, logprob, texts, values, phase in tokens:
            self._token.append(number(token))
            self._logprob.append(_NAN if logprob is None else logprob)
            ids.fromlist(list(map(number, texts)))
            self._values.fromlist(list(values))
            self._ends.append(len(ids))
            self._phases.append(phase is Phase.REASONING)
            if logprob is None and not texts:
                self.unknown += 1

    def append(self, token: TokenLogprob) -> None:
        self.extend((token,))

    def relabel(self, phase: Phase) -> None:
        """Every kept token now belongs to ``phase``."""
        self._phases[:] = bytes([phase is Phase.REASONING]) * len(self._phases)

    def __len__(self) -> int:
        return len(self._token)

    @overload
    def __getitem__(self, i: int) -> TokenLogprob: ...

    @overload
    def __getitem__(self, i: slice) -> list[TokenLogprob]: ...

    def __getitem__(self, i: int | slice) -> TokenLogprob | list[TokenLogprob]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("token index out of range")
        texts = self._texts
        start = self._ends[i - 1] if i else 0
        end = self._ends[i]
        logprob = self._logprob[i]
        return TokenLogprob(
            texts[self._token[i]],
            None if logprob != logprob else logprob,
            tuple([texts[n] for n in self._ids[start:end]]),
            tuple(self._values[start:end]),
            Phase.REASONING if self._phases[i] else Phase.ANSWER,
        )

    def __iter__(self) -> Iterator[TokenLogprob]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=False))

    def __repr__(self) -> str:
        return f"TokenStore({len(self)} tokens)"


_NAN = float("nan")


class _Index(dict[str, int]):
    """Text -> its number in ``texts``; a text not seen yet is added."""

    __slots__ = ("texts",)

    def __init__(self, texts: list[str]) -> None:
        super().__init__()
        self.texts = texts

    def __missing__(self, text: str) -> int:
        number = self[text] = len(self.texts)
        self.texts.append(text)
        return number
