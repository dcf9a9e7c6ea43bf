"""EntropyExitCallbackHandler: watch (and optionally abort) any LangChain chat model run.

The handler reads the logprobs of every streamed token from ``on_llm_new_token(chunk=...)``
and keeps one ``ExitSession`` per ``run_id``, so concurrent runs (``.batch``, parallel branches)
never mix. With ``on_exit="raise"`` it raises ``EntropyExit`` from the token callback once the
model is confident: ``raise_error = True`` makes LangChain propagate it, which unwinds the
model's HTTP stream (ChatOpenAI iterates it inside a ``with`` block), so the server stops
generating. ``on_exit="record"`` only reports.

Two things the model must do for the handler to see anything:

* **stream**: the handler is a streaming callback handler (the same mechanism LangChain's own
  ``astream_events`` uses), so ``invoke``/``batch`` of a chat model it is attached to take the
  streaming path. A model that cannot stream (no ``_stream``, or ``disable_streaming=True``)
  sends no token events; the handler then fails at the end of the run with
  ``NoTokenEventsError`` saying so. ``ChatOpenAI(streaming=True)`` or ``.bind(stream=True)``
  force streaming explicitly.
* **send logprobs**: ``ChatOpenAI(logprobs=True, top_logprobs=20)`` or
  ``model.bind(logprobs=True, top_logprobs=20)``; otherwise ``LogprobsUnavailableError``.

Example (``entropy-exit serve`` prints the base URL)::

    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI
    from entropy_exit_integrations import EntropyExit, ExitPolicy
    from entropy_exit_integrations.langchain import EntropyExitCallbackHandler

    llm = ChatOpenAI(base_url="http://127.0.0.1:8080/v1", api_key="none", model="smollm2",
                     logprobs=True, top_logprobs=20, max_tokens=200)
    chain = ChatPromptTemplate.from_template("{q}") | llm | StrOutputParser()
    handler = EntropyExitCallbackHandler(ExitPolicy(threshold=1.0, min_tokens=8))
    try:
        chain.invoke({"q": "What is 7 + 5?"}, config={"callbacks": [handler]})
    except EntropyExit as exit_:
        print(exit_.partial_text, exit_.report)
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.outputs import LLMResult

from ..core.policy import ExitPolicy
from ..core.savings import SavingsLedger, SavingsReport
from ..core.tokens import Phase
from ..errors import EntropyExit, EntropyExitError, LogprobsUnavailableError
from ..providers.frameworks import tokens_from_langchain_chunk
from ..providers.parts import ChunkParts
from ..session import ExitSession

try:  # the marker LangChain uses to decide that invoke() must stream (astream_events uses it)
    from langchain_core.tracers._streaming import _StreamingCallbackHandler as _StreamingMarker
except ImportError:  # pragma: no cover - older/newer core without it: streaming must be asked for
    _StreamingMarker = object  # type: ignore[assignment,misc]

OnExit = Literal["raise", "record"]
REPORT_KEY = "entropy_exit"
"""Key of the report in ``response_metadata`` / ``generation_info`` / run metadata."""

LANGCHAIN_HINT = (
    "with LangChain: ChatOpenAI(logprobs=True, top_logprobs=20) or model.bind(logprobs=True, top_logprobs=20)"
)


class NoTokenEventsError(EntropyExitError, RuntimeError):
    """A monitored run produced text without streaming it, so nothing could be measured."""


def parts_from_chunk(chunk: Any) -> ChunkParts:
    """ChunkParts of a LangChain ``ChatGenerationChunk`` or ``AIMessageChunk``."""
    message = getattr(chunk, "message", chunk)
    text = getattr(chunk, "text", None)
    if not isinstance(text, str):
        text = getattr(message, "text", "")
        text = text() if callable(text) else text
    info = getattr(chunk, "generation_info", None) or {}
    metadata = getattr(message, "response_metadata", None) or {}
    extra = getattr(message, "additional_kwargs", None) or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning") or ""
    if not isinstance(reasoning, str):
        reasoning = ""
    phase = Phase.REASONING if reasoning and not text else Phase.ANSWER
    tokens = tokens_from_langchain_chunk(chunk, phase)
    usage = getattr(message, "usage_metadata", None)
    return ChunkParts(
        content=text or "",
        reasoning=reasoning,
        tokens=tokens or (),
        has_logprobs=tokens is not None,
        finish_reason=info.get("finish_reason") or metadata.get("finish_reason"),
        usage=openai_usage(usage) if usage else None,
        tool_call=bool(getattr(message, "tool_call_chunks", None) or getattr(message, "tool_calls", None)),
    )


def openai_usage(usage: Any) -> dict[str, Any]:
    """LangChain ``usage_metadata`` -> the provider's ``prompt/completion_tokens`` block."""
    return {
        "prompt_tokens": usage.get("input_tokens", 0),
        "completion_tokens": usage.get("output_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
    }


def feed_with_hint(session: ExitSession, parts: ChunkParts, hint: str = LANGCHAIN_HINT) -> None:
    """``session.feed`` with the LangChain way of asking for logprobs added to the error."""
    try:
        session.feed(parts)
    except LogprobsUnavailableError as error:
        raise LogprobsUnavailableError(
            f"the chat model streamed text but no logprobs ({hint})",
            partial_text=error.partial_text,
        ) from error


class _Run:
    __slots__ = ("session", "events", "report")

    def __init__(self, session: ExitSession) -> None:
        self.session = session
        self.events = 0
        self.report: SavingsReport | None = None


class _Monitors:
    """The framework-facing logic shared by the sync and async handlers."""

    def __init__(self, policy: ExitPolicy, on_exit: OnExit, ledger: SavingsLedger | None) -> None:
        if on_exit not in ("raise", "record"):
            raise ValueError(f"on_exit must be 'raise' or 'record', got {on_exit!r}")
        self.policy = policy
        self.on_exit = on_exit
        self.ledger = ledger
        self.reports: dict[UUID, SavingsReport] = {}
        self._runs: dict[UUID, _Run] = {}
        self._lock = threading.Lock()

    def start(self, run_id: UUID, kwargs: dict[str, Any]) -> None:
        params = kwargs.get("invocation_params") or {}
        budget = params.get("max_tokens") or params.get("max_completion_tokens")
        model = params.get("model_name") or params.get("model")
        session = ExitSession(
            self.policy, max_tokens=int(budget) if budget else None, model=model, keep_tokens=False
        )
        with self._lock:
            self._runs[run_id] = _Run(session)

    def token(self, run_id: UUID, chunk: Any) -> None:
        run = self._runs.get(run_id)
        if run is None or chunk is None or run.report is not None:
            return
        run.events += 1
        was_stopping = run.session.should_stop
        feed_with_hint(run.session, parts_from_chunk(chunk))
        if self.on_exit == "raise" and run.session.should_stop and not was_stopping:
            report = self._finish(run_id, run)
            raise EntropyExit(run.session.text, report, reasoning=run.session.reasoning)

    def end(self, run_id: UUID, response: LLMResult) -> None:
        with self._lock:
            run = self._runs.pop(run_id, None)
        if run is None:
            return
        if run.events == 0 and _has_text(response):
            raise NoTokenEventsError(
                "EntropyExitCallbackHandler saw no streamed tokens for this run, so it could not "
                "measure anything: the model answered without streaming. Use a model that "
                "implements streaming, and force it with ChatOpenAI(streaming=True) or "
                "model.bind(stream=True); do not set disable_streaming=True"
            )
        report = run.report or self._finish(run_id, run)
        data = report.to_dict()
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                if message is not None:
                    message.response_metadata.setdefault(REPORT_KEY, data)
                else:
                    generation.generation_info = {**(generation.generation_info or {}), REPORT_KEY: data}

    def error(self, run_id: UUID) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def _finish(self, run_id: UUID, run: _Run) -> SavingsReport:
        run.session.close_text()
        run.report = run.session.report()
        self.reports[run_id] = run.report
        if self.ledger is not None:
            self.ledger.record(run.report)
        return run.report


def _has_text(response: LLMResult) -> bool:
    return any(getattr(g, "text", "") for gens in response.generations for g in gens)


class _Common:
    """Attributes and helpers both handlers expose."""

    _monitors: _Monitors

    @property
    def policy(self) -> ExitPolicy:
        return self._monitors.policy

    @property
    def on_exit(self) -> OnExit:
        return self._monitors.on_exit  # type: ignore[return-value]

    @property
    def ledger(self) -> SavingsLedger | None:
        return self._monitors.ledger

    @property
    def reports(self) -> dict[UUID, SavingsReport]:
        """Report of every finished run, by ``run_id``."""
        return self._monitors.reports

    # Streaming marker: pass-through taps, only there so that invoke() streams.
    def tap_output_iter(self, run_id: UUID, output: Iterator[Any]) -> Iterator[Any]:
        return output

    def tap_output_aiter(self, run_id: UUID, output: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return output


class EntropyExitCallbackHandler(_Common, BaseCallbackHandler, _StreamingMarker):  # type: ignore[misc]
    """Monitors every chat-model run it sees; raises ``EntropyExit`` on exit or only reports.

    Args:
        policy: the exit rule.
        on_exit: ``"raise"`` aborts the generation with ``EntropyExit`` (carrying the partial
            text and the ``SavingsReport``); ``"record"`` lets it finish and only reports.
        ledger: records the report of every run.

    After each run the report is on ``handler.reports[run_id]``, in the ledger, and (for runs
    that finish) in the message's ``response_metadata["entropy_exit"]``, which tracers such as
    LangSmith record with the run's outputs.
    """

    raise_error = True
    run_inline = True

    def __init__(
        self, policy: ExitPolicy, on_exit: OnExit = "raise", ledger: SavingsLedger | None = None
    ) -> None:
        super().__init__()
        self._monitors = _Monitors(policy, on_exit, ledger)

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._monitors.start(run_id, kwargs)

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._monitors.start(run_id, kwargs)

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        self._monitors.token(run_id, chunk)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._monitors.end(run_id, response)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._monitors.error(run_id)


class AsyncEntropyExitCallbackHandler(_Common, AsyncCallbackHandler, _StreamingMarker):  # type: ignore[misc]
    """Async twin of ``EntropyExitCallbackHandler`` (same arguments, same behaviour)."""

    raise_error = True
    run_inline = True

    def __init__(
        self, policy: ExitPolicy, on_exit: OnExit = "raise", ledger: SavingsLedger | None = None
    ) -> None:
        super().__init__()
        self._monitors = _Monitors(policy, on_exit, ledger)

    async def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._monitors.start(run_id, kwargs)

    async def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._monitors.start(run_id, kwargs)

    async def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        self._monitors.token(run_id, chunk)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._monitors.end(run_id, response)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._monitors.error(run_id)
