"""MonitoredCall: the one engine behind every integration, from request to report.

Every integration (the openai helpers, ``ChatEntropyExit``, the LangChain callback handler,
``EntropyExitLLM``) is a thin shim around one ``MonitoredCall``: the shim opens, reads, closes
and reopens streams with its client and translates framework objects; everything that decides
lives here, once, and does no I/O::

    call = MonitoredCall(policy, messages=..., model=..., max_tokens=...)
    request |= call.logprob_params()          # or the framework's way of asking for them
    # open the stream; on an error: call.refused(error) -> retry without logprobs, or raise
    for chunk in guarded(stream, call):       # transport errors -> StreamInterrupted
        deltas = call.feed(parse(chunk))      # text pieces, split into reasoning and answer
        if call.should_stop:                  # the policy says stop and no guard holds it
            break                             # ... and close the stream
    deltas = call.end_main(cut=call.should_stop)
    if call.wants_forcing():
        plan = call.forcing_plan()            # messages/prompt, extra_body, budget, stop
        for chunk in guarded(forcing_stream, call):
            deltas = call.feed_forced(parse(chunk))
        deltas = call.finish_forced()
    result = call.finish()                    # ExitResult, or StreamInterrupted

Facts by construction: ``exited`` is ``cut`` (the shim closed the stream before the model
finished); a stream that ends without a finish reason is broken, not finished; usage is the
server's when it sent one for the whole stream, else counted here, and the report says which.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .core.monitor import Decision
from .core.policy import ExitPolicy
from .core.probes import ProbeRule, ProbeState
from .core.savings import Ended, SavingsLedger, SavingsReport
from .core.tokens import Phase, TokenLogprob
from .errors import (
    LLAMA_CPP_TOOLS_REFUSAL,
    EntropyExitWarning,
    LogprobsUnavailableError,
    StreamInterrupted,
    is_logprobs_refusal,
    provider_message,
)
from .forcing import AnswerForcing, ForcedAnswer
from .providers.parts import ChunkParts
from .session import ExitSession, TextDelta
from .telemetry import record_call
from .tokencount import count_message_tokens, count_tokens

Api = Literal["chat", "completions"]
OnToken = Callable[[TokenLogprob, Decision], None]
T = TypeVar("T")

ENTROPY_EXIT = "entropy_exit"
"""``finish_reason`` of a generation this package stopped."""


@dataclass
class ExitResult:
    """Everything one monitored generation produced (also ``StreamInterrupted.partial``).

    Attributes:
        text: the answer (with the forced answer appended when forcing ran); never reasoning.
        reasoning: reasoning text (``reasoning_content`` deltas or ``<think>`` content).
        finish_reason: ``"entropy_exit"`` when this package stopped it, ``"interrupted"`` when
            the stream broke, else the server's.
        decision: the monitor's last decision.
        report: tokens generated and saved, how the stream ended, entropy summary, k.
        usage: ``prompt_tokens``/``completion_tokens``/``total_tokens``: the server's when it
            sent them for the whole call, else counted here (``report.usage_source``).
        tokens: every generated token with its top logprobs.
        forced_answer: the forced answer text, or None when no forcing ran.
        chunks: raw chunks, when the openai helpers were asked to keep them.
    """

    text: str
    reasoning: str
    finish_reason: str
    decision: Decision
    report: SavingsReport
    usage: dict[str, Any]
    tokens: list[TokenLogprob]
    forced_answer: str | None = None
    chunks: list[Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Retry:
    """How to ask again after a refusal: without the OpenAI logprob fields, plus ``extra_body``.

    Attributes:
        extra_body: request fields to add (``{"n_probs": k}`` for llama.cpp with tools).
        monitored: the retry still returns logprobs.
    """

    extra_body: dict[str, Any]
    monitored: bool

    def merged_extra_body(self, existing: dict[str, Any] | None) -> dict[str, Any] | None:
        """``existing`` without an earlier retry's fields, plus this retry's (None when empty)."""
        kept = {k: v for k, v in (existing or {}).items() if k not in _RETRY_FIELDS}
        merged = {**kept, **self.extra_body}
        return merged or None


_RETRY_FIELDS = ("n_probs",)

ATTEMPTS = 3
"""Requests a call makes at most to open its stream: the first, a retry with ``n_probs``
(llama.cpp with tools), one without logprobs (``on_missing="pass_through"``)."""

LOGPROB_FIELDS = ("logprobs", "top_logprobs")
"""The OpenAI request fields a retry after a refusal drops."""


@dataclass(frozen=True)
class ForcingPlan:
    """The short request that asks for the final answer after an exit.

    Attributes:
        messages: chat messages (OpenAI dicts) to append to the original conversation.
        prompt: the whole prompt (legacy completions), else None.
        extra_body: extra request fields (``continue_final_message`` for prefix continuation).
        max_tokens: the forcing budget.
        stop: stop sequences.
    """

    messages: list[dict[str, Any]]
    prompt: str | None
    extra_body: dict[str, Any]
    max_tokens: int
    stop: list[str]


def check_policy(policy: Any, owner: str) -> ExitPolicy:
    """``policy`` itself, or ``TypeError`` naming what was given instead (at construction)."""
    if not isinstance(policy, ExitPolicy):
        raise TypeError(
            f"{owner} needs policy=ExitPolicy(...), got {type(policy).__name__} ({policy!r}); "
            "build one with ExitPolicy(threshold=...) or ExitPolicy.from_calibration(...)"
        )
    return policy


class MonitoredCall:
    """One monitored call: request parameters, chunks in, decisions, forcing, the result.

    Args:
        policy: the exit rule.
        api: ``"chat"`` or ``"completions"`` (legacy prompt API).
        messages: the conversation as OpenAI message dicts (chat): for forcing and for
            estimating prompt tokens when the server sends no usage.
        prompt: the prompt text (completions).
        model: model id for the report and the token estimate.
        max_tokens: the generation's budget, for savings against the budget.
        force_answer: after an exit, ask for the final answer: None when the exit cut the
            reasoning, True after any exit, False never.
        forcing: how the answer is forced.
        ledger: records the report of this call.
        base_url: the server's URL (api.openai.com has no prefix continuation).
        terminal_required: a stream that ends without a finish reason is broken (true of every
            OpenAI-compatible server; False for framework models that never send one).
        reasoning_field: the client can send a ``reasoning_content`` field on an assistant
            message; if not, cut reasoning goes back inline in ``<think>`` tags.
        on_token: called with every token and the decision after its chunk.
        keep_tokens: keep every token on the result.
        logprobs_hint: how to ask for logprobs in the caller's framework, for the error raised
            when a stream carries text without them.
        probes: answer probes (``ProbeRule``): the stream stops only when that many consecutive
            short forced answers from the current prefix agree, and the agreed answer is the
            result; the policy's entropy decides when a probe is sent (or every N tokens).
    """

    def __init__(
        self,
        policy: ExitPolicy,
        *,
        api: Api = "chat",
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        force_answer: bool | None = None,
        forcing: AnswerForcing | None = None,
        ledger: SavingsLedger | None = None,
        base_url: str = "",
        terminal_required: bool = True,
        reasoning_field: bool = True,
        on_token: OnToken | None = None,
        keep_tokens: bool = True,
        logprobs_hint: str = "",
        probes: ProbeRule | None = None,
    ) -> None:
        self.policy = check_policy(policy, "MonitoredCall")
        self.api = api
        self.messages = messages or []
        self.prompt = prompt
        self.model = model
        self.max_tokens = max_tokens
        self.force_answer = force_answer
        self.forcing = forcing or AnswerForcing()
        self.ledger = ledger
        self.base_url = base_url
        self.terminal_required = terminal_required
        self.reasoning_field = reasoning_field
        self.on_token = on_token
        self.logprobs_hint = logprobs_hint
        self.session = ExitSession(policy, keep_tokens=keep_tokens)
        self.chunks_seen = 0
        self._ended: Ended | None = None
        self._forced: _Short | None = None  # the forcing request's stream
        self._prompt_estimate: int | None = None
        self._tried_n_probs = False
        self._probes = ProbeState(probes) if probes is not None else None
        self._probe: _Short | None = None  # the probe in flight
        self._probe_at = -1
        self._probe_due = False
        self._probes_done: list[_Short] = []
        self._agreed: _Short | None = None  # the probe whose answer the others agreed with
        self._started = time.perf_counter()

    # -- the request ----------------------------------------------------------------------

    def logprob_params(self) -> dict[str, Any]:
        """The request fields that ask an OpenAI-compatible server for the candidates."""
        if self.api == "chat":
            return {"logprobs": True, "top_logprobs": self.policy.top_k}
        return {"logprobs": self.policy.top_k}

    def refused(self, error: BaseException) -> Retry | None:
        """How to ask again after ``error`` refused the request, or None: not a refusal (re-raise).

        * llama.cpp refuses ``logprobs`` on a streamed request with tools ("not supported with
          tools + stream") but serves its native ``n_probs``: the retry asks for that, and the
          call stays monitored. Recognised by that message, so no extra request is made to
          find out which server this is.
        * Any other refusal (OpenAI's reasoning models; vLLM over ``--max-logprobs``, even as an
          error event in an HTTP 200 stream) raises ``LogprobsUnavailableError`` with the
          provider's message, or, under ``ExitPolicy(on_missing="pass_through")``, warns and
          retries without logprobs: the call then runs unmonitored (never an exit).

        The shim drops the OpenAI logprob fields from the request and adds ``extra_body``.
        """
        if not is_logprobs_refusal(error):
            return None
        message = provider_message(error)
        if not self._tried_n_probs and LLAMA_CPP_TOOLS_REFUSAL in message.lower():
            self._tried_n_probs = True
            return Retry({"n_probs": self.policy.top_k}, monitored=True)
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
        self.session.pass_through()
        return Retry({}, monitored=False)

    # -- the main stream ------------------------------------------------------------------

    def feed(self, parts: ChunkParts) -> list[TextDelta]:
        """Account for one chunk of the main stream; returns its text deltas."""
        self.chunks_seen += 1
        try:
            deltas = self.session.feed(parts)
        except LogprobsUnavailableError as error:
            if not self.logprobs_hint:
                raise
            raise LogprobsUnavailableError(
                f"the stream carries text but no logprobs ({self.logprobs_hint})",
                partial_text=error.partial_text,
            ) from error
        if self.on_token is not None and parts.tokens:
            decision = self.session.decision
            for token in parts.tokens:
                self.on_token(token, decision)
        if self._probes is not None and parts.tokens:
            self._probe_due = self._probe_is_due()
        return deltas

    @property
    def should_stop(self) -> bool:
        """Close the stream now (see ``ExitSession.should_stop`` for the guards).

        With answer probes: only once the probes agree (and the model has not finished).
        """
        if self._ended is not None:
            return False
        if self._probes is not None:
            return self._probes.agreed is not None and self.session.finish_reason is None
        return self.session.should_stop

    def end_main(self, *, cut: bool) -> list[TextDelta]:
        """The main stream is over: ``cut`` when the shim closed it on ``should_stop``.

        Returns the text held back while a tag was being decided, and after a cut on agreeing
        probes their answer (as a forced delta: no forcing request follows).
        """
        self._ended = "we_closed" if cut else "server_done"
        deltas = self.session.close_text()
        if cut and self._agreed is not None and self._agreed.answer.text:  # the probes' answer
            deltas.append(TextDelta(self._agreed.answer.text, Phase.ANSWER, forced=True))
        return deltas

    @property
    def cut(self) -> bool:
        return self._ended == "we_closed"

    # -- forcing --------------------------------------------------------------------------

    def wants_forcing(self) -> bool:
        """After a cut: force the answer (always, never, or when the cut was in the reasoning)."""
        if not self.cut or self.force_answer is False or self._agreed is not None:
            return False  # (the probes' agreed answer is already the forced answer)
        return self.force_answer is True or self.session.stop_in_reasoning

    def forcing_plan(self) -> ForcingPlan:
        """The forcing request; the answer it streams goes to ``feed_forced``."""
        plan, answer = self._answer_plan(self.forcing.max_tokens)
        self._forced = _Short(answer)
        return plan

    def _answer_plan(self, max_tokens: int) -> tuple[ForcingPlan, ForcedAnswer]:
        """A request for the answer from the text so far (forcing after a cut, or a probe)."""
        session, forcing = self.session, self.forcing
        stop = list(forcing.stop)
        if self.api == "completions":
            prompt = forcing.completion_prompt(self.prompt or "", session.text)
            return ForcingPlan([], prompt, {}, max_tokens, stop), ForcedAnswer(
                forcing, prefix="", cut_answer=session.text
            )
        tail, extra, prefix = forcing.chat_request(
            [],
            reasoning=session.reasoning,
            text=session.text,
            inline_think=session.inline_think or not self.reasoning_field,
            base_url=self.base_url,
        )
        forced = ForcedAnswer(forcing, prefix=prefix, cut_answer=session.text)
        return ForcingPlan(tail, None, extra, max_tokens, stop), forced

    # -- answer probes --------------------------------------------------------------------

    @property
    def wants_probe(self) -> bool:
        """Send a probe now (``probe_plan``), before reading on."""
        return self._probe_due and self._ended is None

    def _probe_is_due(self) -> bool:
        session = self.session
        if session.finish_reason is not None or session.tool_call_started or session.inside_number():
            return False  # the same guards as a stop: a probe's prefix is a cut
        assert self._probes is not None
        return self._probes.due(session.monitor.tokens_seen - 1, session.decision)

    def probe_plan(self) -> ForcingPlan:
        """The probe request: a short forced answer from the prefix read so far (the same
        request as forcing: prefix continuation, or a follow-up turn where there is no prefill).
        Its stream goes to ``run_probe`` (or chunk by chunk to ``feed_probe``, then
        ``finish_probe``)."""
        if self._probes is None:
            raise RuntimeError("probe_plan without MonitoredCall(probes=...)")
        self._probe_due = False
        self._probe_at = self.session.monitor.tokens_seen - 1
        plan, answer = self._answer_plan(self._probes.rule.max_tokens)
        self._probe = _Short(answer)
        return plan

    def feed_probe(self, parts: ChunkParts) -> None:
        """Account for one chunk of the probe's stream (its text is not shown)."""
        if self._probe is None:
            raise RuntimeError("feed_probe before probe_plan")
        self._probe.feed(parts)

    def finish_probe(self, *, failed: bool = False) -> bool:
        """The probe is over (``failed``: it broke; its answer counts as none). True when the
        probes now agree: the stream is to be cut (``should_stop``), the agreed answer is the
        result's forced answer."""
        probe, state = self._probe, self._probes
        if probe is None or state is None:
            raise RuntimeError("finish_probe before probe_plan")
        self._probe = None
        probe.answer.finish()
        self._probes_done.append(probe)
        broken = failed or (self.terminal_required and probe.finish is None)
        if state.record(self._probe_at, "" if broken else probe.answer.continuation):
            self._agreed = probe
        return self._agreed is not None

    def run_probe(
        self, parts: Iterable[ChunkParts], errors: tuple[type[Exception], ...] = (Exception,)
    ) -> bool:
        """Feed one probe's stream (``parts`` per chunk, after ``probe_plan``) and finish it. A
        stream that raises one of ``errors`` is a broken probe: its answer counts as none and the
        main stream goes on. Returns ``finish_probe``'s answer."""
        try:
            for chunk_parts in parts:
                self.feed_probe(chunk_parts)
        except errors:
            return self.finish_probe(failed=True)
        return self.finish_probe()

    async def arun_probe(
        self, parts: AsyncIterable[ChunkParts], errors: tuple[type[Exception], ...] = (Exception,)
    ) -> bool:
        """Async twin of ``run_probe``."""
        try:
            async for chunk_parts in parts:
                self.feed_probe(chunk_parts)
        except errors:
            return self.finish_probe(failed=True)
        return self.finish_probe()

    def feed_forced(self, parts: ChunkParts) -> list[TextDelta]:
        """Account for one chunk of the forcing stream; returns the answer text to show."""
        if self._forced is None:
            raise RuntimeError("feed_forced before forcing_plan")
        text = self._forced.feed(parts)
        return [TextDelta(text, Phase.ANSWER, forced=True)] if text else []

    def finish_forced(self) -> list[TextDelta]:
        """The forcing stream is over; returns the text held back (a possible echo)."""
        text = self._forced.answer.finish() if self._forced is not None else ""
        return [TextDelta(text, Phase.ANSWER, forced=True)] if text else []

    # -- the end --------------------------------------------------------------------------

    def finish(self, *, estimate_prompt: bool = True) -> ExitResult:
        """The result; ``StreamInterrupted`` when a stream ended without a finish reason.

        Estimating prompt tokens (when the server sent no usage) may load a tokenizer: async
        callers use ``afinish``, and a caller that must act before the stream is closed (the
        LangChain handler raises from inside it) passes ``estimate_prompt=False``.
        """
        self._check_complete()
        if estimate_prompt and self._needs_estimate():
            self._prompt_estimate = self._estimate_prompt()
        return self._build(self._ended or "server_done")

    async def afinish(self) -> ExitResult:
        """``finish`` without blocking the event loop (the estimate runs in a thread)."""
        self._check_complete()
        if self._needs_estimate():
            self._prompt_estimate = await asyncio.to_thread(self._estimate_prompt)
        return self._build(self._ended or "server_done")

    def interrupted(self, error: BaseException | None) -> StreamInterrupted:
        """The exception for a stream that broke; its ``partial`` has everything so far."""
        self.session.close_text()
        partial = self._build("broken")
        what = f": {type(error).__name__}: {error}" if error is not None else ""
        return StreamInterrupted(
            f"the stream broke after {partial.report.tokens_generated} tokens{what} "
            "(what came before is on .partial)",
            partial,
        )

    def _check_complete(self) -> None:
        if self._ended is None:
            self.end_main(cut=False)
        if not self.terminal_required:
            return
        if self._ended == "server_done" and self.session.finish_reason is None:
            raise self.interrupted(None) from _no_terminal("main")
        if self._forced is not None and self._forced.finish is None:
            raise self.interrupted(None) from _no_terminal("forcing")

    def count_prompt(self) -> None:
        """Estimate the prompt's tokens now (before the request: the handler, which cannot wait
        at the exit). The first count in a process loads a tokenizer."""
        self._prompt_estimate = self._estimate_prompt()

    async def acount_prompt(self) -> None:
        """``count_prompt`` off the event loop."""
        self._prompt_estimate = await asyncio.to_thread(self._estimate_prompt)

    def _needs_estimate(self) -> bool:
        usage = self.session.usage
        return self._prompt_estimate is None and not (usage and usage.get("prompt_tokens") is not None)

    def _estimate_prompt(self) -> int:
        if self.api == "chat":
            return count_message_tokens(self.messages, self.model).tokens
        return count_tokens(self.prompt or "", self.model).tokens

    def _build(self, ended: Ended) -> ExitResult:
        session = self.session
        server = session.usage
        prompt: Any = server.get("prompt_tokens") if server else None
        estimated = prompt is None
        if estimated:
            prompt = self._prompt_estimate
        completion: Any = None
        if ended == "server_done" and server and server.get("completion_tokens") is not None:
            completion = int(server["completion_tokens"])
        shorts = [*self._probes_done, *([self._forced] if self._forced is not None else [])]
        counted_here = any(short.server_tokens is None for short in shorts)
        from_server = completion is not None and not estimated and not counted_here
        report = SavingsReport.from_monitor(
            session.monitor,
            wall_time_s=time.perf_counter() - self._started,
            ended=ended,
            finish_reason=session.finish_reason,
            max_tokens=self.max_tokens,
            completion_tokens=completion,
            forced_answer_tokens=self._forced.tokens if self._forced is not None else 0,
            probe_tokens=sum(probe.tokens for probe in self._probes_done),
            probes=self._probes.probes if self._probes is not None else 0,
            usage_source="server" if from_server else "client",
            model=self.model,
            prompt_tokens=None if prompt is None else int(prompt),
            prompt_tokens_estimated=estimated and prompt is not None,
        )
        prompt_count = report.prompt_tokens or 0
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_count,
            "completion_tokens": report.tokens_generated,
            "total_tokens": prompt_count + report.tokens_generated,
        }
        if report.prompt_tokens_estimated:
            usage["estimated"] = True
        short = self._forced or self._agreed
        answer = short.answer if short is not None else None
        if ended == "we_closed":
            finish = ENTROPY_EXIT
        elif ended == "broken":
            finish = "interrupted"
        else:
            finish = session.finish_reason or "stop"
        result = ExitResult(
            text=session.text + (answer.text if answer is not None else ""),
            reasoning=session.reasoning,
            finish_reason=finish,
            decision=session.decision,
            report=report,
            usage=usage,
            tokens=session.tokens,
            forced_answer=answer.continuation if answer is not None else None,
        )
        if self.ledger is not None:
            self.ledger.record(report)
        record_call(self, result)  # OpenTelemetry span and counters (the otel extra), else nothing
        return result


class _Short:
    """One short request's stream (the forced answer, or a probe): its answer and its cost."""

    def __init__(self, answer: ForcedAnswer) -> None:
        self.answer = answer
        self.read = 0
        self.server_tokens: int | None = None  # the server's count, when it sent usage
        self.finish: str | None = None

    def feed(self, parts: ChunkParts) -> str:
        """Take one chunk; the answer text to show now.

        Reasoning-field text counts as answer: a server with a reasoning parser may stream the
        continuation of a cut reasoning as reasoning, but it is the answer that was asked for.
        """
        self.read += len(parts.tokens)
        usage = parts.usage
        if usage is not None and usage.get("completion_tokens") is not None:
            self.server_tokens = int(usage["completion_tokens"])
        if parts.finish_reason is not None:
            self.finish = parts.finish_reason
        return self.answer.feed(parts.reasoning + parts.content)

    @property
    def tokens(self) -> int:
        return self.read if self.server_tokens is None else self.server_tokens


def _no_terminal(which: str) -> ConnectionError:
    return ConnectionError(f"the {which} stream ended without a finish reason (no terminal chunk)")


def guarded(chunks: Iterable[T], call: MonitoredCall) -> Iterator[T]:
    """Iterate a stream; an error after its first chunk raises ``StreamInterrupted``.

    Before the first chunk the provider's own error propagates as a plain call would raise it
    (a rate limit, a bad request); after it, a transport error, invalid JSON, an error event or
    a timeout becomes ``StreamInterrupted`` with ``partial`` and the error as ``__cause__``.
    """
    iterator = iter(chunks)
    while True:
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        except Exception as error:
            if call.chunks_seen == 0:
                raise
            raise call.interrupted(error) from error
        yield chunk


async def aguarded(chunks: AsyncIterable[T], call: MonitoredCall) -> AsyncIterator[T]:
    """Async twin of ``guarded``."""
    iterator = aiter(chunks)
    while True:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except Exception as error:
            if call.chunks_seen == 0:
                raise
            raise call.interrupted(error) from error
        yield chunk
