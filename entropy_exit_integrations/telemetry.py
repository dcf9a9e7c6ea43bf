"""OpenTelemetry spans and counters for every monitored call (the optional ``otel`` extra).

With ``opentelemetry-api`` installed (``pip install "entropy-exit-integrations[otel]"``), every
call that ``MonitoredCall`` finishes (the openai helpers, ``ChatEntropyExit``, the LangChain
handlers, ``EntropyExitLLM``, ``EntropyExitEventHandler``) emits one span and adds to four
counters, through the global tracer and meter providers unless ``configure`` names others.
Without it nothing is imported and nothing is emitted: the first call tries the import once
and every later call only reads a cached flag.

The span (kind CLIENT, named ``"{gen_ai.operation.name} {model}"`` as the GenAI semantic
conventions ask, e.g. ``"chat smollm2"``) covers the call: it is emitted when the call ends,
with its start time set back by the report's ``wall_time_s``, so spans that other
instrumentation opened during the call (HTTP clients) are its siblings, not its children. A
stream that broke has status ERROR and ``error.type="StreamInterrupted"``.

Span attributes (omitted when unknown):
    GenAI conventions: ``gen_ai.operation.name`` (``chat`` | ``text_completion``),
    ``gen_ai.request.model``, ``gen_ai.request.max_tokens``, ``gen_ai.usage.input_tokens``
    (estimated when ``entropy_exit.prompt_tokens_estimated``), ``gen_ai.usage.output_tokens``
    (answer forcing included), ``gen_ai.response.finish_reasons``.
    ``entropy_exit.*``: ``exited``, ``exit_reason``, ``ended``, ``exit_token_index``,
    ``decision_token_index``, ``tokens_saved_vs_budget``, ``tokens_saved_vs_expected``,
    ``saved_fraction``, ``aggregate_entropy``, ``threshold``, ``calibrated``, ``k``,
    ``estimator``, ``unknown_tokens``, ``reasoning_tokens``, ``forced_answer_tokens``, ``probes``,
    ``probe_tokens``,
    ``usage_source``, ``prompt_tokens_estimated``; with sampled audits ``audit.audited``,
    ``audit.harmful``, ``audit.would_save``, ``audit.tokens``.

Counters (attributes ``gen_ai.request.model`` when known and ``entropy_exit.exited``):
    ``entropy_exit.calls`` (one per call), ``entropy_exit.exits`` (one per exit),
    ``entropy_exit.tokens.generated`` and ``entropy_exit.tokens.saved`` (against the budget:
    calls without ``max_tokens`` add nothing), ``entropy_exit.audit.calls`` and
    ``entropy_exit.audit.harmful`` (audited exit decisions, and those whose answer changed).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

SCOPE = "entropy_exit_integrations"
"""Instrumentation scope name of the tracer and the meter."""

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_available: bool | None = None  # None: not checked yet
_enabled = True
_tracer_provider: Any = None
_meter_provider: Any = None
_instruments: _Instruments | None = None


class _Instruments:
    """The tracer, the counters and the API pieces the span needs (imported once)."""

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import metrics, trace

        from ._version import __version__

        self.tracer = (
            tracer_provider.get_tracer(SCOPE, __version__)
            if tracer_provider is not None
            else trace.get_tracer(SCOPE, __version__)
        )
        meter = (
            meter_provider.get_meter(SCOPE, __version__)
            if meter_provider is not None
            else metrics.get_meter(SCOPE, __version__)
        )
        self.client = trace.SpanKind.CLIENT
        self.error = trace.Status(trace.StatusCode.ERROR, "the stream broke (StreamInterrupted)")
        self.calls = meter.create_counter(
            "entropy_exit.calls", unit="{call}", description="Monitored LLM calls"
        )
        self.exits = meter.create_counter(
            "entropy_exit.exits", unit="{call}", description="Calls stopped early by the entropy policy"
        )
        self.generated = meter.create_counter(
            "entropy_exit.tokens.generated",
            unit="{token}",
            description="Completion tokens generated (answer forcing included)",
        )
        self.audits = meter.create_counter(
            "entropy_exit.audit.calls", unit="{call}", description="Exit decisions audited (read to the end)"
        )
        self.harmful = meter.create_counter(
            "entropy_exit.audit.harmful",
            unit="{call}",
            description="Audited exit decisions whose answer differed from the full run's",
        )
        self.saved = meter.create_counter(
            "entropy_exit.tokens.saved",
            unit="{token}",
            description="Tokens saved against the max_tokens budget (an upper bound), net of forcing",
        )


def configure(*, tracer_provider: Any = None, meter_provider: Any = None, enabled: bool = True) -> None:
    """Where spans and counters go: these providers, else the global ones; or nowhere.

    Args:
        tracer_provider: an OpenTelemetry ``TracerProvider`` (default: the global one, looked up
            through the API's proxy, so one set later is used too).
        meter_provider: an OpenTelemetry ``MeterProvider`` (default: the global one).
        enabled: False stops emitting (without the ``otel`` extra nothing is emitted anyway).
    """
    global _tracer_provider, _meter_provider, _enabled, _instruments
    with _lock:
        _tracer_provider, _meter_provider, _enabled = tracer_provider, meter_provider, enabled
        _instruments = None


def available() -> bool:
    """True when ``opentelemetry-api`` can be imported (checked once, then cached)."""
    global _available
    if _available is None:
        try:
            import opentelemetry.metrics  # noqa: F401
            import opentelemetry.trace  # noqa: F401
        except ImportError:
            _available = False
        else:
            _available = True
    return _available


def record_call(api: str, result: Any) -> None:
    """Emit the span and the counters of one finished (or broken) call; never raises.

    Called once per result by ``MonitoredCall`` (the ledger records the same reports), with
    the call's API (``"chat"`` or ``"completions"``) and its ``ExitResult``.
    """
    if not _enabled or _available is False:
        return
    try:
        instruments = _instruments or _setup()
        if instruments is not None:
            _emit(instruments, api, result)
    except Exception:  # observability must never break a call
        _log.warning("entropy_exit telemetry failed; the call itself is unaffected", exc_info=True)


def _setup() -> _Instruments | None:
    global _instruments
    with _lock:
        if _instruments is None and available():
            _instruments = _Instruments(_tracer_provider, _meter_provider)
        return _instruments


def span_attributes(api: str, result: Any) -> dict[str, Any]:
    """The span's attributes for this call (unknown values left out)."""
    report = result.report
    values: dict[str, Any] = {
        "gen_ai.operation.name": "chat" if api == "chat" else "text_completion",
        "gen_ai.request.model": report.model,
        "gen_ai.request.max_tokens": report.max_tokens,
        "gen_ai.usage.input_tokens": report.prompt_tokens,
        "gen_ai.usage.output_tokens": report.tokens_generated,
        "gen_ai.response.finish_reasons": [result.finish_reason],
        "entropy_exit.exited": report.exited,
        "entropy_exit.exit_reason": report.exit_reason,
        "entropy_exit.ended": report.ended,
        "entropy_exit.exit_token_index": report.exit_token_index,
        "entropy_exit.decision_token_index": report.decision_token_index,
        "entropy_exit.tokens_saved_vs_budget": report.tokens_saved_vs_budget,
        "entropy_exit.tokens_saved_vs_expected": report.tokens_saved_vs_expected,
        "entropy_exit.saved_fraction": report.saved_fraction,
        "entropy_exit.aggregate_entropy": report.aggregate_entropy,
        "entropy_exit.threshold": report.threshold,
        "entropy_exit.calibrated": report.calibrated,
        "entropy_exit.k": report.k,
        "entropy_exit.estimator": report.estimator,
        "entropy_exit.unknown_tokens": report.unknown_tokens,
        "entropy_exit.reasoning_tokens": report.reasoning_tokens,
        "entropy_exit.forced_answer_tokens": report.forced_answer_tokens,
        "entropy_exit.probes": report.probes,
        "entropy_exit.probe_tokens": report.probe_tokens,
        "entropy_exit.audit.audited": report.audited,
        "entropy_exit.audit.harmful": report.audit_harmful,
        "entropy_exit.audit.would_save": report.audit_would_save,
        "entropy_exit.audit.tokens": report.audit_tokens if report.audited else None,
        "entropy_exit.usage_source": report.usage_source,
        "entropy_exit.prompt_tokens_estimated": report.prompt_tokens_estimated,
    }
    return {key: value for key, value in values.items() if value is not None}


def _emit(instruments: _Instruments, api: str, result: Any) -> None:
    report = result.report
    attributes = span_attributes(api, result)
    operation = attributes["gen_ai.operation.name"]
    end = time.time_ns()
    start = end - int(report.wall_time_s * 1e9)
    name = f"{operation} {report.model}" if report.model else operation
    span = instruments.tracer.start_span(
        name, kind=instruments.client, attributes=attributes, start_time=start
    )
    if report.ended == "broken":
        span.set_attribute("error.type", "StreamInterrupted")
        span.set_status(instruments.error)
    span.end(end_time=end)

    counted: dict[str, Any] = {"entropy_exit.exited": report.exited}
    if report.model:
        counted["gen_ai.request.model"] = report.model
    instruments.calls.add(1, counted)
    if report.exited:
        instruments.exits.add(1, counted)
    if report.audited:
        instruments.audits.add(1, counted)
        if report.audit_harmful:
            instruments.harmful.add(1, counted)
    instruments.generated.add(report.tokens_generated, counted)
    if report.tokens_saved_vs_budget is not None:
        instruments.saved.add(report.tokens_saved_vs_budget, counted)
