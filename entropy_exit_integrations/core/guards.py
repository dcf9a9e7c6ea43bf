"""Where a stop may land: never inside a number, and never later than a bounded deferral.

One rule for live streams (``ExitSession.should_stop``) and for replays of recorded traces
(calibration, bench), so that a replay stops exactly where a live run would.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .tokens import Phase, TokenLogprob

MAX_NUMBER_DEFERRAL = 32
"""Tokens a stop may wait for a number to end; after that it stops anyway."""

_NUMBER_TAIL = re.compile(r"(?:(?<![A-Za-z_\d])\d[\d,._/:]*(?:[eE][-+]?\d*)?|(?:^|[\s(=\[])[-+])\Z")
"""Text that may still be inside a number: a digit run with separators or an open exponent,
or a lone sign that may start one ("3.", "1,0", "3/", "1e", "1e-", " -"); not a name that
ends in digits ("r2", "GPT4")."""

TAIL_CHARS = 24
"""How much of the text's end the rule reads."""


def inside_number(text: str) -> bool:
    """True when ``text`` may end in the middle of a number ("3." of "3.14", "1," of "1,000")."""
    return bool(text) and _NUMBER_TAIL.search(text[-TAIL_CHARS:]) is not None


def stop_indices(tokens: Sequence[TokenLogprob]) -> list[int]:
    """For each token index p, where a stop decided at p lands in a live stream.

    The first index q >= p after whose token the text (of that token's phase) is not inside a
    number, or ``p + MAX_NUMBER_DEFERRAL``; ``len(tokens)`` or more means the stream ends first.
    """
    tails = {Phase.REASONING: "", Phase.ANSWER: ""}
    open_after: list[bool] = []
    for token in tokens:
        tail = (tails[token.phase] + token.token)[-TAIL_CHARS:]
        tails[token.phase] = tail
        open_after.append(inside_number(tail))
    stops = [0] * len(tokens)
    next_closed = len(tokens)
    for position in range(len(tokens) - 1, -1, -1):
        if not open_after[position]:
            next_closed = position
        stops[position] = min(next_closed, position + MAX_NUMBER_DEFERRAL)
    return stops
