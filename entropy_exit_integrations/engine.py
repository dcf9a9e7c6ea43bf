"""MonitoredCall: the one engine behind every integration, from request to report.

The engine is sans-IO (like h11): it never opens, reads or closes a stream itself. It says what
to do next, and one sync and one async driver (``driver.drive``/``driver.adrive``) carry that out
over a *transport*, the only thing an integration writes::

    call = MonitoredCall(options, fields=request_fields, messages=..., model=...)
    action = call.next_action()      # Open(spec) | Read(role) | Close(role) | Finish
    ...                              # the driver acts, then tells the engine what happened:
    call.opened(role)                # the stream of ``spec.role`` is open
    call.received(role, parts)       # a chunk (its ChunkParts); returns the text to show
    call.ended(role)                 # the stream ran out
    call.failed(role, error)         # it raised (a refusal retries; a probe counts as no answer;
                                     # anything else raises, with the partial result)
    call.closed(role)                # the driver closed it; returns the text held back

One ``RequestSpec`` describes the main, forcing and probe requests: the request fields with one
rule for what a short request does not forward (``SHORT_REQUEST_DROPS``), so forcing and probes
behave the same in every integration (llama.cpp refuses ``tools`` with ``logprobs`` + ``stream``).

Facts by construction: ``exited`` is ``ended == "we_closed"`` (the driver closed the stream
before the model finished); a stream that ends without a finish reason is broken, not finished;
usage is the server's when it sent one for the whole stream, else counted here, and the report
says which. The LangChain callback handler and LlamaIndex's event handler, which cannot drive a
call (the framework does), use the passive half: ``feed``, ``should_stop``, ``end_main``,
``finish``.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, cast

from .core.monitor import Decision
from .core.policy import ExitPolicy
from .core.probes import ProbeState
from .core.savings import Ended, SavingsReport
from .core.tokens import Phase, TokenLogprob
from .errors import (
    LLAMA_CPP_TOOLS_REFUSAL,
    EntropyExitWarning,
    LogprobsUnavailableError,
    StreamInterrupted,
    is_logprobs_refusal,
    names_field,
    provider_message,
)
from .forcing import ForcedAnswer
from .options import ExitOptions, OnToken
from .providers.parts import ChunkParts
from .providers.reasoning import resolve_format
from .session import ExitSession, TextDelta
from .telemetry import record_call
from .tokencount import count_message_tokens, count_tokens
from .traces import (
    LABEL_ANSWER_CHANGED,
    TRACE_SCHEMA,
    TRACE_VERSION,
    TraceSinkLike,
    problem_id,
    token_to_json,
    write_quietly,
)

Api = Literal["chat", "completions"]
Role = Literal["main", "forcing", "probe", "audit"]

ENTROPY_EXIT = "entropy_exit"
"""``finish_reason`` of a generation this package stopped."""

REPORT_KEY = "entropy_exit"
"""Where every integration puts the report as plain data: LangChain ``response_metadata`` and
agent state, LlamaIndex ``additional_kwargs``, handler run metadata."""

ATTEMPTS = 4
"""Requests a call makes at most to open its stream: the first, a retry without
``continuous_usage_stats`` (a server that rejects the field), a retry with ``n_probs``
(llama.cpp with tools), one without logprobs (``on_missing="pass_through"``)."""

CONTINUOUS_USAGE = "continuous_usage_stats"
STREAM_USAGE: dict[str, Any] = {"stream_options": {"include_usage": True, CONTINUOUS_USAGE: True}}
"""The ``usage_fields`` of the openai helpers and LlamaIndex: usage at the end of the stream
(OpenAI's ``include_usage``) and, where the server knows ``continuous_usage_stats`` (vLLM), the
exact prompt and completion counts in every chunk, so a cut stream's report has the server's
counts too. llama.cpp ignores the field; a server that rejects it by name (HTTP 400/422: the
OpenAI API's schema has no such field) gets one retry without it (``MonitoredCall.refused``).
Not sent through LangChain: ChatOpenAI replaces ``stream_options`` with its own."""

LOGPROB_FIELDS = ("logprobs", "top_logprobs")
"""The OpenAI request fields a retry after a refusal drops."""

SHORT_REQUEST_DROPS = (
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "response_format",
    "stream_options",
    "logprobs",
    "top_logprobs",
)
"""Request fields a forcing or probe request does not take from the main request: it asks for a
short text answer (no tools: llama.cpp refuses ``tools`` with ``logprobs`` + ``stream``), with
its own budget, stop sequences and one logprob per token (to count its tokens)."""

_RETRY_FIELDS = ("n_probs",)


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
            sent them for the whole call, else counted here (``report.usage_source``); with
            ``"estimated": True`` when the prompt tokens are an estimate.
        tokens: every generated token with its top logprobs (a ``TokenStore``: a compact
            sequence of ``TokenLogprob``, each built when read).
        forced_answer: the forced answer text, or None when no forcing ran.
        chunks: raw chunks, when the openai helpers were asked to keep them.
    """

    text: str
    reasoning: str
    finish_reason: str
    decision: Decision
    report: SavingsReport
    usage: dict[str, Any]
    tokens: Sequence[TokenLogprob]
    forced_answer: str | None = None
    chunks: list[Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RequestSpec:
    """One request to open: the main stream, the forcing request, or a probe.

    Attributes:
        role: ``"main"``, ``"forcing"`` or ``"probe"``.
        fields: the OpenAI-style request fields (the caller's, with this request's logprob
            fields, budget, stop and ``extra_body``), without the messages or prompt. A
            transport maps them onto its client (``create(**fields)``, call keyword arguments,
            model fields).
        messages: chat messages (OpenAI dicts) to append to the caller's conversation (the
            forcing and probe requests); empty for the main stream.
        prompt: the whole prompt of a short legacy-completions request; None: the caller's.
    """

    role: Role
    fields: Mapping[str, Any]
    messages: tuple[dict[str, Any], ...] = ()
    prompt: str | None = None


class Open(NamedTuple):
    """Open the stream ``spec`` describes, then tell ``opened(spec.role)``."""

    spec: RequestSpec


class Read(NamedTuple):
    """Read the next chunk of the ``role`` stream: ``received``, ``ended`` or ``failed``."""

    role: Role


class Close(NamedTuple):
    """Close the ``role`` stream (the server stops generating), then tell ``closed(role)``."""

    role: Role


class Finish(NamedTuple):
    """Build the result: ``finish()`` (sync) or ``await afinish()`` (async)."""


Action = Open | Read | Close | Finish
_READS: dict[str, Read] = {role: Read(role) for role in ("main", "forcing", "probe", "audit")}
_READ_MAIN = _READS["main"]
_FINISH = Finish()


class MonitoredCall:
    """One monitored call: what to request, chunks in, decisions, forcing, probes, the result.

    Args:
        options: the call's settings (``ExitOptions``), or just an ``ExitPolicy``.
        api: ``"chat"`` or ``"completions"`` (legacy prompt API).
        fields: the caller's OpenAI-style request fields (without messages/prompt): the main
            request adds the logprob fields to them; short requests drop
            ``SHORT_REQUEST_DROPS``. ``n`` above 1 is refused (``ValueError``).
        messages: the conversation as OpenAI message dicts (chat): for forcing and for
            estimating prompt tokens when the server sends no usage.
        prompt: the prompt text (completions).
        model: model id for the report and the token estimate.
        max_tokens: the generation's budget (default: ``fields``' ``max_tokens``).
        base_url: the server's URL (api.openai.com has no prefix continuation).
        terminal_required: a stream that ends without a finish reason is broken (true of every
            OpenAI-compatible server; False for framework models that never send one).
        reasoning_field: the client can send a ``reasoning_content`` field on an assistant
            message; if not, cut reasoning goes back inline in ``<think>`` tags.
        logprobs_hint: how to ask for logprobs in the caller's framework, for the error raised
            when a stream carries text without them.
        logprob_fields: the fields that ask for the candidates (default: the OpenAI ones for
            ``api``, with ``top_logprobs=policy.top_k``).
        usage_fields: fields that ask the server to stream usage (``stream_options``), added
            to the main request unless the caller set them.
        on_report: called with the report when the call ends, or breaks (the partial report).
    """

    def __init__(
        self,
        options: ExitOptions | ExitPolicy,
        *,
        api: Api = "chat",
        fields: Mapping[str, Any] | None = None,
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        base_url: str = "",
        terminal_required: bool = True,
        reasoning_field: bool = True,
        logprobs_hint: str = "",
        logprob_fields: Mapping[str, Any] | None = None,
        usage_fields: Mapping[str, Any] | None = None,
        on_report: Callable[[SavingsReport], None] | None = None,
    ) -> None:
        if not isinstance(options, ExitOptions):
            options = ExitOptions(policy=options)  # TypeError naming what was given instead
        self.options = options
        self.policy = policy = options.policy
        self.api = api
        self.fields = dict(fields or {})
        _refuse_several_choices(self.fields)
        self.messages = messages or []
        self.prompt = prompt
        self.model = model
        if max_tokens is None:
            budget = self.fields.get("max_completion_tokens", self.fields.get("max_tokens"))
            max_tokens = budget if isinstance(budget, int) else None
        self.max_tokens = max_tokens
        self.forcing = options.forcing
        self.base_url = base_url
        self.terminal_required = terminal_required
        self.reasoning_field = reasoning_field
        self.on_token: OnToken | None = options.on_token
        self.logprobs_hint = logprobs_hint
        self.on_report = on_report
        fmt = resolve_format(options.reasoning_format, model=model)
        keep_tokens = options.keep_tokens or options.trace_sink is not None
        self.session = ExitSession(policy, reasoning_format=fmt, keep_tokens=keep_tokens)
        self.chunks_seen = 0
        self._ended: Ended | None = None
        self._forced: _Short | None = None  # the forcing request's stream
        self._prompt_estimate: int | None = None
        self._tried_n_probs = False
        self._probes = ProbeState(options.probes) if options.probes is not None else None
        self._probe: _Short | None = None  # the probe in flight
        self._probe_at = -1
        self._probe_due = False
        self._probes_done: list[_Short] = []
        self._agreed: _Short | None = None  # the probe whose answer the others agreed with
        self._audit: _Short | None = None  # the audit's forced answer, once a decision was audited
        self._audit_at = -1  # tokens read when the audited decision came
        self._audit_failed = False
        self._started = time.perf_counter()
        if logprob_fields is None:
            chat = api == "chat"
            logprob_fields = (
                {"logprobs": True, "top_logprobs": policy.top_k} if chat else {"logprobs": policy.top_k}
            )
        self._logprob_fields = dict(logprob_fields)
        main = {**self.fields}
        for key, value in (*self._logprob_fields.items(), *(usage_fields or {}).items()):
            main.setdefault(key, value)
        self._main_fields = main
        self._usage_fields = dict(usage_fields or {})
        # continuous_usage_stats this call added (not the caller's): retried without it once
        self._continuous_usage = "stream_options" not in self.fields and CONTINUOUS_USAGE in (
            self._usage_fields.get("stream_options") or {}
        )
        self._structured = requires_structure(self.fields)
        self._tools = bool(self.fields.get("tools") or self.fields.get("functions"))
        self._textless = False
        self._attempts = 0
        self._next: Action = Open(RequestSpec("main", main))
        self._cutting = False

    # -- the driver's protocol ------------------------------------------------------------

    def next_action(self) -> Action:
        """What the driver does next."""
        return self._next

    def opened(self, role: Role) -> None:
        """The ``role`` stream is open: read it."""
        self._next = _READS[role]

    def received(self, role: Role, parts: ChunkParts) -> list[TextDelta]:
        """A chunk of the ``role`` stream; returns the text to show (main and forcing only)."""
        if role == "main":
            deltas = self.feed(parts)
            if self._probe_due and self._ended is None:
                self._next = Open(self.probe_spec())
            elif self.should_stop:
                self._next = self._stop()
            return deltas
        if role == "probe":
            self.feed_probe(parts)
            return []
        if role == "audit":
            assert self._audit is not None
            self._audit.feed(parts)
            return []
        return self.feed_forced(parts)

    def ended(self, role: Role) -> None:
        """The ``role`` stream ran out (the server finished it, or it broke without a word)."""
        if role == "probe":
            self.finish_probe()
        self._next = Close(role)

    def failed(self, role: Role, error: Exception) -> None:
        """The ``role`` stream raised ``error`` (opening or reading); the driver has closed it.

        * main, before its first chunk: a logprob refusal is retried as ``refused`` says
          (``Open`` of the retry is next); anything else is the provider's own error, re-raised.
        * main after its first chunk, and the forcing request: ``StreamInterrupted`` with the
          partial result (``__cause__`` is ``error``).
        * a probe: any error is a broken probe, whose answer counts as none; the main stream
          goes on. (One rule in every integration.) An audit likewise: it judges nothing.

        Call it from the ``except`` block that caught ``error``.
        """
        if role == "probe":
            self._probe_done(failed=True)
            self._next = self._after_read()
            return
        if role == "audit":  # a broken audit judges nothing; the stream goes on
            self._audit_failed = True
            self._next = _READ_MAIN
            return
        if role == "main" and self.chunks_seen == 0:
            self._attempts += 1
            retry = self.refused(error) if self._attempts < ATTEMPTS else None
            if retry is None:
                raise error
            self._next = Open(RequestSpec("main", retry))
            return
        raise self.interrupted(error) from error

    def closed(self, role: Role) -> list[TextDelta]:
        """The driver closed the ``role`` stream; returns the text released by it."""
        if role == "probe":
            self._next = self._after_read()
            return []
        if role == "audit":
            assert self._audit is not None
            self._audit.answer.finish()
            self._next = _READ_MAIN
            return []
        if role == "forcing":
            self._next = _FINISH
            return self.finish_forced()
        deltas = self.end_main(cut=self._cutting)
        self._next = Open(self.forcing_spec()) if self.wants_forcing() else _FINISH
        return deltas

    def _after_read(self) -> Action:
        return self._stop() if self.should_stop else _READ_MAIN

    def _stop(self) -> Action:
        """The policy says stop: close the main stream, or, for a sampled audit, ask for the
        answer the exit would give (``audit_spec``) and read on to the natural end."""
        rule = self.options.audit
        if rule is not None and rule.sample():
            return Open(self.audit_spec())
        self._cutting = True
        return Close("main")

    def audit_spec(self) -> RequestSpec:
        """The audit's request: the forced answer from the prefix read so far (as a probe)."""
        self._audit_at = self.session.monitor.tokens_seen
        spec, answer = self._short_spec("audit", self.forcing.max_tokens)
        self._audit = _Short(answer)
        return spec

    # -- the request ----------------------------------------------------------------------

    def refused(self, error: BaseException) -> dict[str, Any] | None:
        """The main request's fields to send after ``error`` refused it, or None: not a refusal.

        * llama.cpp refuses ``logprobs`` on a streamed request with tools ("not supported with
          tools + stream") but serves its native ``n_probs``: the retry asks for that, and the
          call stays monitored. Recognised by that message, so no extra request is made to
          find out which server this is.
        * A 400/422 that names ``continuous_usage_stats``, which this call added
          (``STREAM_USAGE``): the retry drops that field, here and in the short requests.
        * Any other refusal (OpenAI's reasoning models; vLLM over ``--max-logprobs``, even as an
          error event in an HTTP 200 stream) raises ``LogprobsUnavailableError`` with the
          provider's message, or, under ``ExitPolicy(on_missing="pass_through")``, warns and
          retries without logprobs: the call then runs unmonitored (never an exit).
        """
        if self._continuous_usage and names_field(error, CONTINUOUS_USAGE):
            self._continuous_usage = False
            options = {k: v for k, v in self._usage_fields["stream_options"].items() if k != CONTINUOUS_USAGE}
            self._usage_fields["stream_options"] = options
            self._main_fields = {**self._main_fields, "stream_options": options}
            return dict(self._main_fields)
        if not is_logprobs_refusal(error):
            return None
        message = provider_message(error)
        fields = {
            k: v for k, v in self._main_fields.items() if k not in (*LOGPROB_FIELDS, *self._logprob_fields)
        }
        extra = {k: v for k, v in (fields.pop("extra_body", None) or {}).items() if k not in _RETRY_FIELDS}
        if not self._tried_n_probs and LLAMA_CPP_TOOLS_REFUSAL in message.lower():
            self._tried_n_probs = True
            fields["extra_body"] = {**extra, "n_probs": self.policy.top_k}
            return fields
        if self.policy.on_missing == "raise":
            raise LogprobsUnavailableError.refused(message, top_k=self.policy.top_k) from error
        warnings.warn(
            f"the provider refused logprobs ({message}); this call runs unmonitored",
            EntropyExitWarning,
            stacklevel=3,
        )
        self.session.pass_through()
        if extra:
            fields["extra_body"] = extra
        return fields

    def _short_spec(self, role: Role, max_tokens: int) -> tuple[RequestSpec, ForcedAnswer]:
        """A request for the answer from the text so far (forcing after a cut, or a probe)."""
        session, forcing = self.session, self.forcing
        fields = {k: v for k, v in self.fields.items() if k not in SHORT_REQUEST_DROPS}
        fields.update(self._usage_fields)
        fields["max_tokens"] = max_tokens
        if forcing.stop:
            fields["stop"] = list(forcing.stop)
        if self.api == "completions":
            fields["logprobs"] = 1
            prompt = forcing.completion_prompt(self.prompt or "", session.text)
            answer = ForcedAnswer(forcing, prefix="", cut_answer=session.text)
            return RequestSpec(role, fields, prompt=prompt), answer
        fields.update(logprobs=True, top_logprobs=1)
        tail, extra, prefix = forcing.chat_request(
            [],
            reasoning=session.reasoning,
            text=session.text,
            inline_think=session.inline_think or not self.reasoning_field,
            base_url=self.base_url,
            reasoning_format=session.detected_format,
        )
        if extra:
            fields["extra_body"] = {**(fields.get("extra_body") or {}), **extra}
        answer = ForcedAnswer(forcing, prefix=prefix, cut_answer=session.text)
        return RequestSpec(role, fields, messages=tuple(tail)), answer

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
        self._textless = bool(parts.tokens) and not parts.generated_text and not parts.tool_call
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

        With answer probes: only once the probes agree (and the model has not finished). Never
        when the request requires a tool call or a structured answer (``requires_structure``:
        its text-less tokens are tool tokens, vLLM's guided decoding streams them before the
        tool call), nor, with tools merely bound, while the latest tokens came without text
        (they may be a tool call the server has not parsed yet).
        """
        if self._ended is not None or self._structured or (self._tools and self._textless):
            return False
        if self._audit is not None:
            return False  # an audited call is read to its end
        if self.max_tokens is not None and self.session.monitor.tokens_seen >= self.max_tokens:
            return False  # the whole budget is generated: nothing left to save, read the finish
        if self._probes is not None:
            return self._probes.agreed is not None and self.session.finish_reason is None
        return self.session.should_stop

    def end_main(self, *, cut: bool) -> list[TextDelta]:
        """The main stream is over: ``cut`` when it was closed on ``should_stop``.

        Returns the text held back while a tag was being decided, and after a cut on agreeing
        probes their answer (as a forced delta: no forcing request follows). A cut after the
        model already sent its finish reason is no exit: the whole budget was generated.
        """
        cut = cut and self.session.finish_reason is None
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
        force = self.options.force_answer
        if not self.cut or force is False or self._agreed is not None:
            return False  # (the probes' agreed answer is already the forced answer)
        return force is True or self.session.stop_in_reasoning

    def forcing_spec(self) -> RequestSpec:
        """The forcing request; the answer it streams goes to ``feed_forced``."""
        spec, answer = self._short_spec("forcing", self.forcing.max_tokens)
        self._forced = _Short(answer)
        return spec

    def feed_forced(self, parts: ChunkParts) -> list[TextDelta]:
        """Account for one chunk of the forcing stream; returns the answer text to show."""
        if self._forced is None:
            raise RuntimeError("feed_forced before forcing_spec")
        text = self._forced.feed(parts)
        return [TextDelta(text, Phase.ANSWER, forced=True)] if text else []

    def finish_forced(self) -> list[TextDelta]:
        """The forcing stream is over; returns the text held back (a possible echo)."""
        text = self._forced.answer.finish() if self._forced is not None else ""
        return [TextDelta(text, Phase.ANSWER, forced=True)] if text else []

    # -- answer probes --------------------------------------------------------------------

    def _probe_is_due(self) -> bool:
        session = self.session
        if session.finish_reason is not None or session.tool_call_started or session.inside_number():
            return False  # the same guards as a stop: a probe's prefix is a cut
        if self._structured or (self._tools and self._textless):
            return False
        assert self._probes is not None
        return self._probes.due(session.monitor.tokens_seen - 1, session.decision)

    def probe_spec(self) -> RequestSpec:
        """The probe request: a short forced answer from the prefix read so far (the same
        request as forcing). Its chunks go to ``feed_probe``, then ``finish_probe``."""
        if self._probes is None:
            raise RuntimeError("probe_spec without ExitOptions(probes=...)")
        self._probe_due = False
        self._probe_at = self.session.monitor.tokens_seen - 1
        spec, answer = self._short_spec("probe", self._probes.rule.max_tokens)
        self._probe = _Short(answer)
        return spec

    def feed_probe(self, parts: ChunkParts) -> None:
        """Account for one chunk of the probe's stream (its text is not shown)."""
        if self._probe is None:
            raise RuntimeError("feed_probe before probe_spec")
        self._probe.feed(parts)

    def finish_probe(self) -> bool:
        """The probe's stream ran out. True when the probes now agree (``should_stop``)."""
        return self._probe_done(failed=False)

    def _probe_done(self, *, failed: bool) -> bool:
        probe, state = self._probe, self._probes
        if probe is None or state is None:
            raise RuntimeError("a probe ended before probe_spec")
        self._probe = None
        probe.answer.finish()
        self._probes_done.append(probe)
        broken = failed or (self.terminal_required and probe.finish is None)
        if state.record(self._probe_at, "" if broken else probe.answer.continuation):
            self._agreed = probe
        return self._agreed is not None

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
        if server and server.get("completion_tokens") is not None:
            # the server's last count: the whole stream's, or, cut or broken with usage in every
            # chunk (continuous_usage_stats), its count up to the last chunk read
            completion = int(server["completion_tokens"])
        shorts = [*self._probes_done, *(s for s in (self._forced, self._audit) if s is not None)]
        counted_here = any(short.server_tokens is None for short in shorts)
        from_server = completion is not None and not estimated and not counted_here
        audit = self._audit
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
            audit_tokens=audit.tokens if audit is not None else 0,
            usage_source="server" if from_server else "client",
            model=self.model,
            prompt_tokens=None if prompt is None else int(prompt),
            prompt_tokens_estimated=estimated and prompt is not None,
        )
        if audit is not None:
            report = self._audited(report, audit, completion)
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
        sink = self.options.trace_sink
        if sink is not None:
            write_quietly(cast(TraceSinkLike, sink), self._trace(result))  # (a path became a sink)
        if self.options.ledger is not None:
            self.options.ledger.record(report)
        if self.on_report is not None:
            self.on_report(report)
        record_call(self.api, result)  # OpenTelemetry span and counters (the otel extra), else nothing
        return result

    def _trace(self, result: ExitResult) -> dict[str, Any]:
        """This call as a trace line (``traces``): graded against its own full answer."""
        report = result.report
        question = next((m.get("content") for m in reversed(self.messages) if m.get("role") == "user"), "")
        record: dict[str, Any] = {
            "schema": TRACE_SCHEMA,
            "version": TRACE_VERSION,
            "problem_id": problem_id(self.messages, self.prompt),
            "tokens": [token_to_json(token) for token in result.tokens],
            "text": result.text,
            "reasoning": result.reasoning,
            "correct": True,
            "reference": self.session.text,
            "label": LABEL_ANSWER_CHANGED,
            "question": question if isinstance(question, str) else self.prompt or "",
            "messages": self.messages,
            "finish_reason": report.finish_reason or result.finish_reason,
            "ended": report.ended,
            "wall_time_s": report.wall_time_s,
            "model": self.model,
            "k": self.policy.top_k,
            "max_tokens": self.max_tokens,
            "usage": result.usage,
        }
        forced = self._forced if self._forced is not None else self._audit
        if forced is not None:
            kept = self._audit_at if forced is self._audit else self.session.monitor.tokens_seen
            cue = self.forcing.cue
            record["forced"] = {
                str(kept): {"answer": forced.answer.continuation, "tokens": forced.tokens, "cue": cue}
            }
        if report.audited:
            record["audit"] = {
                "decision_index": self._audit_at - 1,
                "exit_answer": report.audit_exit_answer,
                "answer": report.audit_answer,
                "harmful": report.audit_harmful,
                "would_save": report.audit_would_save,
            }
        return record

    def _audited(self, report: SavingsReport, audit: _Short, completion: int | None) -> SavingsReport:
        """The report of an audited call: the exit's forced answer and the full run's text,
        whether the exit's was harmful (``rule.compare``), and what the exit would have saved
        (the main stream's tokens after the decision, net of the forced answer it would have
        asked for; negative when the exit would have cost more)."""
        rule = self.options.audit
        assert rule is not None
        exit_answer = audit.answer.continuation  # what the exit would have answered
        full = self.session.text
        judged = not self._audit_failed and (audit.finish is not None or not self.terminal_required)
        main = self.session.monitor.tokens_seen if completion is None else completion
        return replace(
            report,
            audited=True,
            audit_harmful=(not rule.compare(exit_answer, full)) if judged else None,
            audit_exit_answer=exit_answer,
            audit_answer=full,
            audit_would_save=main - self._audit_at - audit.tokens,
        )


_GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")


def requires_structure(fields: Mapping[str, Any]) -> bool:
    """The request requires a tool call or a structured answer, which a cut would break.

    ``tool_choice`` "required"/"any" or a named tool; ``response_format`` json_schema or
    json_object (or a schema class); vLLM's guided decoding fields in ``extra_body``.
    """
    choice = fields.get("tool_choice")
    if choice in ("required", "any") or isinstance(choice, Mapping):
        return True
    fmt = fields.get("response_format")
    if isinstance(fmt, type) or (
        isinstance(fmt, Mapping) and fmt.get("type") in ("json_schema", "json_object")
    ):
        return True
    extra = fields.get("extra_body")
    return isinstance(extra, Mapping) and any(key in extra for key in _GUIDED)


def _refuse_several_choices(fields: Mapping[str, Any]) -> None:
    n = fields.get("n")
    if n is not None and n != 1:
        raise ValueError(
            f"n={n}: a monitored call reads one choice, and one HTTP stream cannot stop one choice "
            "alone; make one call per sample instead (e.g. LangChain .batch([...] * n), or n "
            "separate requests), each with its own report"
        )


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
