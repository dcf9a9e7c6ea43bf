"""``EntropyExitEventHandler``: entropy and savings of every LLM call, via LlamaIndex instrumentation."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from typing import Any

from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent

from ..core.policy import ExitPolicy
from ..core.savings import SavingsLedger, SavingsReport
from ..engine import REPORT_KEY, MonitoredCall
from ..providers.parts import ChunkParts
from ._responses import parts_of, text_of, tokens_from_llama_logprobs
from .closing import ACTIVE

_dispatcher = get_dispatcher(__name__)
_OPEN_QUERIES: ContextVar[tuple[list[LLMCallRecord], ...]] = ContextVar(
    "entropy_exit_open_queries", default=()
)


@dataclass(frozen=True)
class LLMCallRecord:
    """One LLM call seen by the handler.

    Attributes:
        span_id: the instrumentation span of the call.
        report: what the call cost. From an ``EntropyExitLLM`` it is that wrapper's own report
            (a real exit); from any other LLM it is measured here and never says "exited".
        source: ``"wrapper"`` or ``"monitor"``.
        would_exit_at: token index where the policy would have stopped a monitored call.
        tokens_after_exit: tokens generated after that point: what an exit would have saved
            (0 for wrapper records, whose savings are in the report).
    """

    span_id: str | None
    report: SavingsReport
    source: str
    would_exit_at: int | None = None
    tokens_after_exit: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "report": self.report.to_dict()}


class EntropyExitEventHandler(BaseEventHandler):
    """Records the entropy and the (possible) savings of every LLM call in an app.

    For an ``EntropyExitLLM`` call it records the report the wrapper attached (not its inner
    LLM's call again); for any other LLM it reads the logprobs of the streamed chunks (or of the
    final response) and records where the policy *would* have exited and what that would have
    saved. It only records: LlamaIndex swallows a handler's exceptions, so a handler cannot
    abort a generation; use ``EntropyExitLLM`` to stop early.

    Example::

        from llama_index.core.instrumentation import get_dispatcher
        handler = EntropyExitEventHandler(policy=ExitPolicy(threshold=1.0))
        get_dispatcher().add_event_handler(handler)
        response = query_engine.query("...")
        response.metadata["entropy_exit"]      # the records of the LLM calls this query made
        handler.records, handler.summary()     # every call so far
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    policy: Any = Field(description="ExitPolicy used to measure calls of plain LLMs.")
    ledger: Any = Field(default_factory=SavingsLedger, description="Ledger of every recorded report.")
    records: list[LLMCallRecord] = Field(default_factory=list)

    _calls: dict[str, MonitoredCall] = PrivateAttr(default_factory=dict)  # of plain LLMs, by span
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        if not isinstance(self.policy, ExitPolicy):
            raise TypeError(f"policy must be an ExitPolicy, got {type(self.policy).__name__}")
        # A handler must never raise: missing logprobs become a warning and unknown tokens.
        self.policy = replace(self.policy, on_missing="pass_through")

    @classmethod
    def class_name(cls) -> str:
        return "EntropyExitEventHandler"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if ACTIVE.get() is not None:
            return  # an EntropyExitLLM is driving this LLM: the wrapper's own events report it
        name = type(event).__name__
        if name in ("LLMChatStartEvent", "LLMCompletionStartEvent"):
            self._start(event)
        elif name in ("LLMChatInProgressEvent", "LLMCompletionInProgressEvent"):
            self._progress(event)
        elif name in ("LLMChatEndEvent", "LLMCompletionEndEvent"):
            self._end(event)
        elif name == "QueryStartEvent":
            _OPEN_QUERIES.set((*_OPEN_QUERIES.get(), []))
        elif name == "QueryEndEvent":
            self._query_end(event)

    def _start(self, event: Any) -> None:
        model = getattr(event, "model_dict", None) or {}
        if model.get("class_name") == "EntropyExitLLM":
            return  # the wrapper's end event carries its own report
        max_tokens = model.get("num_output")
        call = MonitoredCall(
            self.policy,
            max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None,
            model=model.get("model_name"),
            terminal_required=False,  # events carry responses, not the wire
        )
        with self._lock:
            self._calls[event.span_id] = call

    def _progress(self, event: Any) -> None:
        call = self._calls.get(event.span_id)
        if call is not None:
            call.feed(parts_of(event.response))

    def _end(self, event: Any) -> None:
        with self._lock:
            call = self._calls.pop(event.span_id, None)
        response = getattr(event, "response", None)
        extra = getattr(response, "additional_kwargs", None) or {}
        if REPORT_KEY in extra:
            report = SavingsReport.from_dict(extra[REPORT_KEY])
            self._record(LLMCallRecord(event.span_id, report, "wrapper"))
            return
        if call is None or response is None:
            return
        if call.chunks_seen == 0:  # not streamed
            call.feed(_whole_response_parts(response))
        report = call.finish().report  # never cut: exited=False, decision_token_index says where
        would_at = report.decision_token_index
        after = report.tokens_generated - (would_at + 1) if would_at is not None else 0
        self._record(LLMCallRecord(event.span_id, report, "monitor", would_at, after))

    def _record(self, record: LLMCallRecord) -> None:
        with self._lock:
            self.records.append(record)
        self.ledger.record(record.report)
        for collected in _OPEN_QUERIES.get():
            collected.append(record)

    def _query_end(self, event: Any) -> None:
        open_queries = _OPEN_QUERIES.get()
        if not open_queries:
            return
        collected = open_queries[-1]
        _OPEN_QUERIES.set(open_queries[:-1])
        response = getattr(event, "response", None)
        if response is None or not hasattr(response, "metadata"):
            return
        if response.metadata is None:
            response.metadata = {}
        response.metadata[REPORT_KEY] = [record.to_dict() for record in collected]

    def summary(self) -> dict[str, Any]:
        """Ledger totals plus what exits would have saved on the monitored (plain) calls."""
        with self._lock:
            monitored = [r for r in self.records if r.source == "monitor"]
        return {
            **self.ledger.summary(),
            "monitored_calls": len(monitored),
            "would_exit": sum(r.would_exit_at is not None for r in monitored),
            "would_save_tokens": sum(r.tokens_after_exit for r in monitored),
        }


def _whole_response_parts(response: Any) -> ChunkParts:
    """A non-streamed response: LlamaIndex's ``.logprobs`` (all tokens), else its raw response."""
    tokens = tokens_from_llama_logprobs(getattr(response, "logprobs", None))
    if not tokens:
        tokens = parts_of(response).tokens
    return ChunkParts(content=text_of(response), tokens=tokens, has_logprobs=bool(tokens))


class EntropyExitReportEvent(BaseEvent):
    """The report of one ``EntropyExitLLM`` call, dispatched when the call ends or breaks.

    ``span_id`` is the call's instrumentation span (the one its ``LLMChatEndEvent`` or
    ``LLMCompletionEndEvent`` carries). ``report`` is ``SavingsReport.to_dict()``: for a stream
    that broke, the partial report (``ended == "broken"``).
    """

    report: dict[str, Any]

    @classmethod
    def class_name(cls) -> str:
        return "EntropyExitReportEvent"


def dispatch_report(report: SavingsReport, span_id: str | None) -> None:
    """Dispatch an ``EntropyExitReportEvent`` to every LlamaIndex event handler."""
    _dispatcher.event(EntropyExitReportEvent(report=report.to_dict(), span_id=span_id))
