"""ExitSession: one streamed generation folded chunk by chunk into text, tokens and a decision.

Every integration (openai helpers, LangChain, LlamaIndex) drives one of these: it parses chunks
with a provider adapter, calls ``feed`` and acts when ``should_stop`` turns True. Nothing here
imports a framework or does I/O.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

from .core.monitor import Decision, EntropyMonitor
from .core.policy import ExitPolicy
from .core.savings import SavingsReport
from .core.tokens import Phase, TokenLogprob
from .errors import EntropyExitWarning, LogprobsUnavailableError, provider_message
from .providers.parts import ChunkParts
from .providers.reasoning import ThinkTags, ThinkTagSplitter


class ExitSession:
    """State of one monitored generation.

    Args:
        policy: the exit rule.
        max_tokens: the generation's budget, for savings against the budget.
        model: model id for the report.
        think_tags: how to read inline ``<think>`` tags in the content (see ThinkTagSplitter).
        starts_in_reasoning: the prompt already opened the ``<think>`` tag.
        keep_tokens: keep every TokenLogprob on ``tokens`` (for traces and LlamaIndex logprobs).
        stream_pieces: collect the new text pieces for ``drain`` (for callers that stream text
            as it is split into reasoning and answer); off, nothing is collected twice.
    """

    def __init__(
        self,
        policy: ExitPolicy,
        *,
        max_tokens: int | None = None,
        model: str | None = None,
        think_tags: ThinkTags = "auto",
        starts_in_reasoning: bool = False,
        keep_tokens: bool = True,
        stream_pieces: bool = False,
    ) -> None:
        self.policy = policy
        self.max_tokens = max_tokens
        self.model = model
        self.monitor = EntropyMonitor(policy)
        self.tokens: list[TokenLogprob] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.tool_call_started = False
        self._keep_tokens = keep_tokens
        self._splitter = ThinkTagSplitter(think_tags, start_inside=starts_in_reasoning)
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._new_pieces: list[tuple[Phase, str]] | None = [] if stream_pieces else None
        self._logprob_tokens = 0
        self._undecided: list[TokenLogprob] = []
        self._in_number = False
        self._last_phase = Phase.ANSWER
        self._warned_missing = False
        self._started = time.perf_counter()

    @property
    def text(self) -> str:
        """Answer text so far."""
        return "".join(self._content)

    @property
    def reasoning(self) -> str:
        """Reasoning text so far (separate field or inside ``<think>`` tags)."""
        return "".join(self._reasoning)

    @property
    def decision(self) -> Decision:
        return self.monitor.decision

    @property
    def should_stop(self) -> bool:
        """The policy says stop, no tool call is streaming, and no number is half written.

        Tool calls are never cut. A number is not cut either: stopping after the "4" of "48"
        would hand the forced answer a wrong number, so the stop waits for the next non-digit.
        """
        return self.monitor.decision.should_exit and not self.tool_call_started and not self._in_number

    @property
    def exited_in_reasoning(self) -> bool:
        """The exit cut the reasoning, so the answer is still to come."""
        return self.should_stop and self._last_phase is Phase.REASONING

    def feed(self, parts: ChunkParts) -> Decision:
        """Account for one chunk; returns the decision after its last token."""
        content, reasoning, tokens, _, finish_reason, usage, tool_call = parts
        if usage is not None:
            self.usage = usage
        if finish_reason is not None:
            self.finish_reason = finish_reason
        if tool_call:
            self.tool_call_started = True
        if not (content or reasoning):
            if tokens:
                # Tokens without text (llama.cpp puts the first one in the role chunk; vLLM's
                # reasoning parser swallows </think>): their phase is the next text's.
                self._undecided.extend(tokens)
            return self.monitor.decision
        if reasoning:
            self._add(Phase.REASONING, reasoning)
        if not content:
            phase = Phase.REASONING
        elif self._splitter.mode == "off":
            self._add(Phase.ANSWER, content)
            phase = Phase.ANSWER
        else:
            phase = self._split_content(content)
        if self._splitter.saw_tags:
            tokens = _with_phase(tokens, phase)
        if self._undecided:
            tokens = (*_with_phase(self._undecided, phase), *tokens)
            self._undecided = []
        self._observe(tokens, parts, phase)
        return self.monitor.decision

    def _observe(self, tokens: tuple[TokenLogprob, ...], parts: ChunkParts, phase: Phase) -> None:
        if tokens:
            self._logprob_tokens += len(tokens)
            observe = self.monitor.observe
            for token in tokens:
                observe(token)
            self._last_phase = tokens[-1].phase
            self._in_number = tokens[-1].token.strip().isdigit()
            if self._keep_tokens:
                self.tokens.extend(tokens)
        else:
            self._observe_missing(parts, phase)

    def _split_content(self, content: str) -> Phase:
        phase = Phase.ANSWER
        for piece_phase, text in self._splitter.feed(content):
            self._add(piece_phase, text)
            if piece_phase is Phase.REASONING:
                phase = Phase.REASONING
        if self._splitter.inside:
            phase = Phase.REASONING
        return phase

    def _observe_missing(self, parts: ChunkParts, phase: Phase) -> None:
        """Text arrived without logprobs: one unknown token, never a confident one."""
        if self._logprob_tokens == 0:
            if self.policy.on_missing == "raise":
                raise LogprobsUnavailableError(
                    "the stream carries text but no logprobs",
                    partial_text=self.text,
                )
            if not self._warned_missing:
                warnings.warn(
                    "the stream carries no logprobs: passing it through without early exit",
                    EntropyExitWarning,
                    stacklevel=3,
                )
                self._warned_missing = True
        self._last_phase = phase
        self.monitor.observe(TokenLogprob(parts.content or parts.reasoning, None, (), (), phase))

    def refuse_logprobs(self, error: BaseException) -> None:
        """The provider refused logprobs for this request (see ``is_logprobs_refusal``).

        Raises ``LogprobsUnavailableError`` with the provider's message, or, with
        ``ExitPolicy(on_missing="pass_through")``, warns once: the caller then retries without
        logprobs and the call runs unmonitored (every token unknown, never a false exit).
        """
        message = provider_message(error)
        if self.policy.on_missing == "raise":
            raise LogprobsUnavailableError(
                "the provider refused to return logprobs for this request "
                "(ExitPolicy(on_missing='pass_through') runs such calls unmonitored)",
                provider_message=message,
            ) from error
        warnings.warn(
            f"the provider refused logprobs ({message}); this call runs unmonitored",
            EntropyExitWarning,
            stacklevel=3,
        )
        self._warned_missing = True

    def _add(self, phase: Phase, text: str) -> None:
        (self._reasoning if phase is Phase.REASONING else self._content).append(text)
        if self._new_pieces is not None:
            self._new_pieces.append((phase, text))

    def drain(self) -> list[tuple[Phase, str]]:
        """Text pieces added since the last call, in order (needs ``stream_pieces=True``)."""
        if self._new_pieces is None:
            raise RuntimeError("ExitSession(stream_pieces=True) is needed to drain text pieces")
        pieces, self._new_pieces = self._new_pieces, []
        return pieces

    def close_text(self) -> None:
        """End of stream: release text held back while deciding a possible tag, and its tokens."""
        for piece_phase, text in self._splitter.flush():
            self._add(piece_phase, text)
        if self._undecided:
            tokens, self._undecided = tuple(self._undecided), []
            self._observe(_with_phase(tokens, self._last_phase), ChunkParts(tokens=tokens), self._last_phase)

    @property
    def inline_think(self) -> bool:
        """Reasoning arrived inside ``<think>`` tags in the content."""
        return self._splitter.saw_tags

    def add_forced_answer(self, text: str) -> None:
        """Append the forced answer to the text (not to ``drain``: it was streamed as it came)."""
        self._content.append(text)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._started

    def report(
        self,
        *,
        forced_answer_tokens: int = 0,
        exit_reason: str | None = None,
        prompt_tokens: int | None = None,
        prompt_tokens_estimated: bool = False,
    ) -> SavingsReport:
        """The savings report of this generation as it stands."""
        if prompt_tokens is None and self.usage:
            prompt_tokens = self.usage.get("prompt_tokens")
        return SavingsReport.from_monitor(
            self.monitor,
            wall_time_s=self.elapsed_s,
            max_tokens=self.max_tokens,
            forced_answer_tokens=forced_answer_tokens,
            exit_reason=exit_reason or self.finish_reason,
            model=self.model,
            prompt_tokens=prompt_tokens,
            prompt_tokens_estimated=prompt_tokens_estimated,
        )

    def usage_block(self, report: SavingsReport) -> dict[str, Any]:
        """Provider usage when it came; else counted from the logprob entries (and estimated prompt)."""
        if self.usage is not None and not report.exited:
            return dict(self.usage)
        prompt = report.prompt_tokens or 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": report.tokens_generated,
            "total_tokens": prompt + report.tokens_generated,
        }


def _with_phase(tokens: Sequence[TokenLogprob], phase: Phase) -> tuple[TokenLogprob, ...]:
    return tuple(t if t.phase is phase else t._replace(phase=phase) for t in tokens)
