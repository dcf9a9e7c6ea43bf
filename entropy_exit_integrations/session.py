"""ExitSession: one streamed generation folded chunk by chunk into text, phases and a decision.

The token-level half of the engine (``engine.MonitoredCall`` owns the rest of a call): it reads
``ChunkParts``, splits text into reasoning and answer, tags every token with its phase, feeds the
monitor and says when a stop is allowed. Nothing here imports a framework or does I/O.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

from .core.guards import MAX_NUMBER_DEFERRAL, TAIL_CHARS, inside_number
from .core.monitor import Decision, EntropyMonitor
from .core.policy import ExitPolicy
from .core.tokens import Phase, TokenLogprob, TokenStore
from .errors import EntropyExitWarning, LogprobsUnavailableError
from .providers.parts import ChunkParts
from .providers.reasoning import ReasoningFormat, ReasoningSplitter, check_reasoning_format


class TextDelta(NamedTuple):
    """A piece of streamed text: reasoning or answer, and whether it came from answer forcing."""

    text: str
    phase: Phase = Phase.ANSWER
    forced: bool = False


class ExitSession:
    """State of one monitored generation.

    Args:
        policy: the exit rule.
        reasoning_format: where the reasoning is (``providers.reasoning``): ``"auto"`` (default:
            a separate field, ``<think>``/``[THINK]``/harmony markers opening the content, a
            bare ``</think>``), ``"think"``, ``"think_open"`` (the template opened ``<think>``),
            ``"mistral"`` (``[THINK]``), ``"harmony"`` (GPT-OSS channels as raw text),
            ``"field"`` (only a separate field) or ``"none"`` (everything is answer).
            ``providers.reasoning.resolve_format`` picks one from a model name or llama.cpp's
            ``/props``.
        starts_in_reasoning: the prompt already opened the reasoning (with ``"auto"`` or
            ``"think"`` the same as ``"think_open"``; with ``"mistral"`` an opened ``[THINK]``;
            with ``"harmony"`` an open analysis message).
        keep_tokens: keep every TokenLogprob on ``tokens`` (for traces and LlamaIndex logprobs).

    Phases: reasoning arrives in a separate field (``reasoning_content``/``reasoning``/
    ``thinking``) or inline in the content, as the format says. While the content could still
    be a tag that changes the phase (``"<th"``, leading whitespace at the start, a harmony
    header), its tokens wait, undecided, and reach the monitor once the text says which phase
    they belong to; a tag split over chunks reads exactly like the tag unsplit. Under
    ``"auto"``, a bare ``</think>`` re-labels the answer so far as reasoning in ``text``,
    ``reasoning`` and ``tokens`` (``relabelled``), but not in the deltas already returned nor in
    the monitor, which observed those tokens as answer: name the format when it is known.
    """

    def __init__(
        self,
        policy: ExitPolicy,
        *,
        reasoning_format: ReasoningFormat = "auto",
        starts_in_reasoning: bool = False,
        keep_tokens: bool = True,
    ) -> None:
        self.policy = policy
        self.reasoning_format = check_reasoning_format(reasoning_format)
        self.monitor = EntropyMonitor(policy)
        self.tokens = TokenStore()
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.tool_call_started = False
        self._keep_tokens = keep_tokens
        self._splitter: ReasoningSplitter | None = (
            None
            if reasoning_format in ("field", "none")
            else ReasoningSplitter(reasoning_format, starts_in_reasoning=starts_in_reasoning)
        )
        self._all_answer = reasoning_format == "none"
        self._field_seen = False
        self.relabelled = False
        """A bare ``</think>`` moved the answer so far into the reasoning (``"auto"``)."""
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._saw_logprobs = False
        self._undecided: list[TokenLogprob] = []
        self._textless = 0
        self._last_phase = Phase.ANSWER
        self._warned_missing = False

    @property
    def text(self) -> str:
        """Answer text so far."""
        return "".join(self._content)

    @property
    def reasoning(self) -> str:
        """Reasoning text so far (a separate field, or inline in the content)."""
        return "".join(self._reasoning)

    @property
    def detected_format(self) -> ReasoningFormat | None:
        """Where this stream's reasoning turned out to be: an inline format (``"think"``,
        ``"think_open"``, ``"mistral"``, ``"harmony"``), ``"field"``, or None (none seen)."""
        splitter = self._splitter
        if splitter is not None and splitter.saw_tags:
            return splitter.detected
        return "field" if self._field_seen else None

    @property
    def decision(self) -> Decision:
        return self.monitor.decision

    @property
    def should_stop(self) -> bool:
        """Stop now: the policy says so, the model has not finished, and no guard holds it.

        Guards: a tool call is never cut (once one streams, the stream runs to its end); a
        number is not cut (stopping after the "3." of "3.14" would hand the forced answer a
        wrong number), for at most ``MAX_NUMBER_DEFERRAL`` tokens after the decision
        (``core.guards``, the rule replays of recorded traces use too).
        """
        if not self.monitor.decision.should_exit or self.finish_reason is not None:
            return False
        if self.tool_call_started:
            return False
        if self.inside_number():
            deferred = self.monitor.tokens_seen - 1 - self.monitor.decision.token_index
            return deferred >= MAX_NUMBER_DEFERRAL
        return True

    @property
    def stop_in_reasoning(self) -> bool:
        """A stop now would cut the reasoning, so the answer is still to come."""
        return self._last_phase is Phase.REASONING

    @property
    def inline_think(self) -> bool:
        """Reasoning arrived inline in the content (tags or harmony channels), not in a field."""
        return self._splitter is not None and self._splitter.saw_tags

    def feed(self, parts: ChunkParts) -> list[TextDelta]:
        """Account for one chunk; returns the text pieces that became certain, in order."""
        content, reasoning, tokens, has_logprobs, finish_reason, usage, tool_call = parts
        if usage is not None:
            self.usage = usage
        if finish_reason is not None:
            self.finish_reason = finish_reason
        if tool_call:
            self.tool_call_started = True
        if has_logprobs:
            self._saw_logprobs = True
        pieces: list[TextDelta] = []
        splitter = self._splitter
        if reasoning:
            if self._all_answer:  # "none": the field's text is answer too
                content, reasoning = reasoning + content, ""
            else:
                if not self._field_seen:  # once per stream
                    self._field_seen = True
                    if splitter is not None and not self._content and not self._reasoning:
                        splitter.field_reasoning()  # the server splits: a template's tag is closed
                pieces.append(TextDelta(reasoning, Phase.REASONING))
                self._reasoning.append(reasoning)
        phase: Phase | None = Phase.REASONING if reasoning and not content else None
        if content:
            if splitter is None:  # "field"/"none": the content is the answer
                pieces.append(TextDelta(content))
                self._content.append(content)
                phase = Phase.ANSWER
            elif splitter.quiet and splitter.mark not in content:  # the common case: no tag here
                if splitter.inside:
                    pieces.append(TextDelta(content, Phase.REASONING))
                    self._reasoning.append(content)
                    phase = Phase.REASONING
                else:
                    pieces.append(TextDelta(content))
                    self._content.append(content)
                    phase = Phase.ANSWER
            else:
                phase = self._split(content, pieces)
        if content or reasoning:
            self._textless = 0
        elif tokens:
            phase = self._textless_phase(tool_call)
        if phase is None:
            # No text yet says which phase these tokens belong to (a role chunk, a tag still
            # being decided, vLLM's swallowed </think>): they wait for the next text.
            self._undecided.extend(tokens)
        elif tokens and not self._undecided:  # the common case, inline: it runs per token
            self._last_phase = phase
            phased = _with_phase(tokens, phase)
            observe = self.monitor.observe
            for token in phased:
                observe(token)
            if self._keep_tokens:
                self.tokens.extend(phased)
        else:
            if self._undecided:
                tokens = (*self._undecided, *tokens)
                self._undecided = []
            self._observe(_with_phase(tokens, phase), parts, phase)
        return pieces

    def _textless_phase(self, tool_call: bool) -> Phase | None:
        """The phase of tokens that came without any text.

        A tool call's arguments are the answer. One textless chunk waits for the next text
        (llama.cpp sends the first token on the role chunk; vLLM's parser swallows </think>). A
        run of them is reasoning the client does not show (ChatOpenAI drops reasoning deltas
        before a callback sees them), so the monitor can still watch it.
        """
        if tool_call or self._all_answer:
            return Phase.ANSWER
        self._textless += 1
        return Phase.REASONING if self._textless > 1 else None

    def _split(self, content: str, pieces: list[TextDelta]) -> Phase | None:
        """Split content at the format's tags; the phase of its tokens, None while undecided."""
        splitter = self._splitter
        assert splitter is not None
        was_inside = splitter.inside
        found = splitter.feed(content)
        if splitter.relabel:
            self._relabel()
        for piece_phase, text in found:
            pieces.append(TextDelta(text, piece_phase))
            (self._reasoning if piece_phase is Phase.REASONING else self._content).append(text)
        if not splitter.decided:
            return None
        if was_inside or splitter.inside or splitter.relabel or any(p is Phase.REASONING for p, _ in found):
            return Phase.REASONING
        return Phase.ANSWER

    def _relabel(self) -> None:
        """A bare ``</think>`` (``"auto"``): the answer so far was reasoning.

        The text and the kept tokens are re-labelled; the monitor is not (it observed those
        tokens as answer, and its aggregate cannot be re-run), nor the deltas already returned.
        """
        self.relabelled = True
        self._reasoning.extend(self._content)
        self._content.clear()
        if self._keep_tokens:
            self.tokens.relabel(Phase.REASONING)

    def _observe(self, tokens: Sequence[TokenLogprob], parts: ChunkParts, phase: Phase) -> None:
        self._last_phase = phase
        if not tokens:
            if parts.generated_text:
                self._observe_missing(parts, phase)
            return
        observe = self.monitor.observe
        for token in tokens:
            observe(token)
        if self._keep_tokens:
            self.tokens.extend(tokens)

    def _observe_missing(self, parts: ChunkParts, phase: Phase) -> None:
        """Text arrived without logprobs: one unknown token, never a confident one."""
        if not self._saw_logprobs and not self._warned_missing:
            if self.policy.on_missing == "raise":
                raise LogprobsUnavailableError(
                    "the stream carries text but no logprobs", partial_text=self.text
                )
            warnings.warn(
                "the stream carries no logprobs: passing it through without early exit",
                EntropyExitWarning,
                stacklevel=4,
            )
            self._warned_missing = True
        self.monitor.observe(TokenLogprob(parts.content or parts.reasoning, None, (), (), phase))

    def pass_through(self) -> None:
        """Run unmonitored from here on (the provider refused logprobs): no missing-data error."""
        self._warned_missing = True

    def inside_number(self) -> bool:
        """The text (of the current phase) may end in the middle of a number."""
        parts = self._reasoning if self._last_phase is Phase.REASONING else self._content
        return inside_number("".join(parts[-TAIL_CHARS:]))

    def close_text(self) -> list[TextDelta]:
        """End of stream: release text held back while deciding a possible tag, and its tokens."""
        splitter = self._splitter
        pieces = [TextDelta(text, phase) for phase, text in splitter.flush()] if splitter else []
        for text, piece_phase, _ in pieces:
            (self._reasoning if piece_phase is Phase.REASONING else self._content).append(text)
        if self._undecided:
            tokens, self._undecided = tuple(self._undecided), []
            phase = pieces[-1].phase if pieces else self._last_phase
            self._observe(_with_phase(tokens, phase), ChunkParts(tokens=tokens), phase)
        return pieces


def _with_phase(tokens: Sequence[TokenLogprob], phase: Phase) -> Sequence[TokenLogprob]:
    for token in tokens:
        if token.phase is not phase:
            return tuple(t if t.phase is phase else t._replace(phase=phase) for t in tokens)
    return tokens  # the common case: every token already has it
