"""ChunkParts: what one streamed chunk carries, whatever the wire shape."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..core.tokens import TokenLogprob


class ChunkParts(NamedTuple):
    """The pieces of one streamed chunk that the exit logic needs.

    Attributes:
        content: answer text delta ("" when none).
        reasoning: reasoning text delta from a separate field (``reasoning_content``, ``reasoning``
            or ``thinking``).
        tokens: one record per generated token the chunk carries logprobs for.
        has_logprobs: the chunk carried a logprobs field (possibly with zero entries).
        finish_reason: the provider's finish reason on the last chunk, else None.
        usage: provider usage block (the final usage-only chunk), else None.
        tool_call: the chunk streams part of a tool call.
    """

    content: str = ""
    reasoning: str = ""
    tokens: tuple[TokenLogprob, ...] = ()
    has_logprobs: bool = False
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    tool_call: bool = False

    @property
    def generated_text(self) -> bool:
        """True when the chunk carries generated text (and so should carry logprobs)."""
        return bool(self.content or self.reasoning)


EMPTY = ChunkParts()
