"""Inline ``<think>...</think>`` reasoning in the answer text, with tags split across chunks."""

from __future__ import annotations

from typing import Literal

from ..core.tokens import Phase

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

ThinkTags = Literal["auto", "on", "off"]


class ThinkTagSplitter:
    """Splits streamed content into reasoning and answer text at ``<think>`` tags.

    Modes: ``"on"`` parses tags anywhere; ``"off"`` passes everything through as answer;
    ``"auto"`` parses tags only when the content opens with ``<think>`` (after whitespace, which
    is dropped), the way reasoning models emit them. ``start_inside=True`` is for chat
    templates that put the opening tag in the prompt, so the output starts inside the
    reasoning and only closes it.

    A possible partial tag at the end of a chunk is held back until the next chunk decides it.

    >>> s = ThinkTagSplitter("on")
    >>> s.feed("<thi") + s.feed("nk>2+2</th") + s.feed("ink>4") + s.flush()
    [(<Phase.REASONING: 'reasoning'>, '2+2'), (<Phase.ANSWER: 'answer'>, '4')]
    """

    def __init__(self, mode: ThinkTags = "auto", *, start_inside: bool = False) -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"think-tag mode must be 'auto', 'on' or 'off', got {mode!r}")
        self.mode = mode
        self.inside = start_inside
        self._pending = ""
        self._decided = mode != "auto" or start_inside
        self.saw_tags = start_inside

    @property
    def decided(self) -> bool:
        """False while ``"auto"`` mode still waits to see whether the content opens a tag."""
        return self._decided

    @property
    def phase(self) -> Phase:
        """The phase the next text would belong to."""
        return Phase.REASONING if self.inside else Phase.ANSWER

    def feed(self, text: str) -> list[tuple[Phase, str]]:
        """Take a content delta; return the (phase, text) pieces that are now certain."""
        if self.mode == "off":
            return [(Phase.ANSWER, text)] if text else []
        buffer = self._pending + text
        self._pending = ""
        if not self._decided:
            stripped = buffer.lstrip()
            if len(stripped) < len(OPEN_TAG) and OPEN_TAG.startswith(stripped):
                self._pending = buffer
                return []
            self._decided = True
            if not stripped.startswith(OPEN_TAG):
                self.mode = "off"
                return [(Phase.ANSWER, buffer)] if buffer else []
            buffer = stripped
        pieces: list[tuple[Phase, str]] = []
        while buffer:
            tag = CLOSE_TAG if self.inside else OPEN_TAG
            at = buffer.find(tag)
            if at >= 0:
                self._emit(pieces, buffer[:at])
                buffer = buffer[at + len(tag) :]
                self.inside = not self.inside
                self.saw_tags = True
                continue
            keep = _partial_tag_suffix(buffer, tag)
            self._emit(pieces, buffer[: len(buffer) - keep])
            self._pending = buffer[len(buffer) - keep :]
            break
        return pieces

    def flush(self) -> list[tuple[Phase, str]]:
        """End of stream: release any held-back text as it stands."""
        pieces: list[tuple[Phase, str]] = []
        self._emit(pieces, self._pending)
        self._pending = ""
        return pieces

    def _emit(self, pieces: list[tuple[Phase, str]], text: str) -> None:
        if text:
            pieces.append((self.phase, text))


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
