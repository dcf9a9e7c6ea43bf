"""OpenTelemetry spans and counters of monitored calls (SDK in-memory exporter and reader).

The openai helper runs over a real recorded llama.cpp stream served through an httpx mock
transport (tests/data/recordings/llamacpp_chat_top20.jsonl: 12 tokens, "17 + 25 = 32.").
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from entropy_exit_integrations import ExitPolicy, StreamInterrupted, telemetry
from entropy_exit_integrations.driver import drive
from entropy_exit_integrations.engine import MonitoredCall
from entropy_exit_integrations.openai import astream_chat, stream_chat
from entropy_exit_integrations.providers import parse_chat_chunk
from tests.unit_tests.recordings import load_chunks

ROOT = Path(__file__).resolve().parents[2]
TOP20 = "llamacpp_chat_top20.jsonl"
MODEL = "smollm2-135m-instruct"
ALWAYS = ExitPolicy(threshold=5.0, min_tokens=3)  # above log2(20): confident from the start
NEVER = ExitPolicy(threshold=0.0)


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        telemetry.configure(
            tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[self.reader])
        )

    def counters(self) -> dict[str, dict[tuple, int]]:
        """Counter name -> {sorted attribute items: value}."""
        out: dict[str, dict[tuple, int]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "entropy_exit_integrations"
                for metric in scope.metrics:
                    points = out.setdefault(metric.name, {})
                    for point in metric.data.data_points:
                        points[tuple(sorted(point.attributes.items()))] = point.value
        return out


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    collected = Telemetry()
    yield collected
    telemetry.configure()


def _client(is_async: bool = False) -> Any:
    body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in load_chunks(TOP20)) + b"data: [DONE]\n\n"

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    kwargs = {"base_url": "http://127.0.0.1:8080/v1", "api_key": "none", "max_retries": 0}
    if is_async:
        return openai.AsyncOpenAI(
            **kwargs, http_client=httpx.AsyncClient(transport=httpx.MockTransport(respond))
        )
    return openai.OpenAI(**kwargs, http_client=httpx.Client(transport=httpx.MockTransport(respond)))


def _ask(policy: ExitPolicy) -> Any:
    messages = [{"role": "user", "content": "What is 17 + 25?"}]
    return stream_chat(
        _client(), policy=policy, model=MODEL, messages=messages, max_tokens=64, force_answer=False
    )


def test_an_exit_emits_a_genai_span_with_the_report(otel: Telemetry) -> None:
    result = _ask(ALWAYS)
    report = result.report
    assert report.exited
    (span,) = otel.spans.get_finished_spans()
    assert span.name == f"chat {MODEL}" and span.kind is SpanKind.CLIENT
    assert span.instrumentation_scope.name == "entropy_exit_integrations"
    assert span.status.status_code is StatusCode.UNSET
    attrs = dict(span.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.request.max_tokens"] == 64
    assert attrs["gen_ai.usage.input_tokens"] == report.prompt_tokens > 0
    assert attrs["gen_ai.usage.output_tokens"] == report.tokens_generated == result.usage["completion_tokens"]
    assert attrs["gen_ai.response.finish_reasons"] == ("entropy_exit",)
    assert attrs["entropy_exit.exited"] is True
    assert attrs["entropy_exit.exit_reason"] == "entropy_exit"
    assert attrs["entropy_exit.ended"] == "we_closed"
    assert attrs["entropy_exit.tokens_saved_vs_budget"] == 64 - report.tokens_generated > 0
    assert attrs["entropy_exit.exit_token_index"] == report.exit_token_index
    assert attrs["entropy_exit.decision_token_index"] == report.decision_token_index == 2
    assert math.isclose(attrs["entropy_exit.aggregate_entropy"], report.aggregate_entropy)
    assert attrs["entropy_exit.threshold"] == 5.0
    assert attrs["entropy_exit.calibrated"] is False
    assert attrs["entropy_exit.k"] == 20
    assert attrs["entropy_exit.unknown_tokens"] == 0
    assert attrs["entropy_exit.forced_answer_tokens"] == 0
    assert attrs["entropy_exit.usage_source"] == "client"  # a cut stream gets no usage block
    assert attrs["entropy_exit.prompt_tokens_estimated"] is True
    assert "entropy_exit.tokens_saved_vs_expected" not in attrs  # uncalibrated: unknown, left out
    assert span.end_time - span.start_time == pytest.approx(report.wall_time_s * 1e9, abs=1e6)


def test_no_exit_and_the_counters(otel: Telemetry) -> None:
    exited = _ask(ALWAYS).report
    finished = _ask(NEVER).report
    assert not finished.exited and finished.ended == "server_done"
    spans = otel.spans.get_finished_spans()
    attrs = dict(spans[1].attributes)
    assert attrs["entropy_exit.exited"] is False and attrs["entropy_exit.ended"] == "server_done"
    assert attrs["entropy_exit.exit_reason"] == "stop"
    assert attrs["entropy_exit.tokens_saved_vs_budget"] == 0
    assert attrs["entropy_exit.usage_source"] == "server"
    assert attrs["gen_ai.usage.output_tokens"] == finished.tokens_generated == 12  # the server's usage
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert "entropy_exit.decision_token_index" not in attrs
    yes = (("entropy_exit.exited", True), ("gen_ai.request.model", MODEL))
    no = (("entropy_exit.exited", False), ("gen_ai.request.model", MODEL))
    assert otel.counters() == {
        "entropy_exit.calls": {yes: 1, no: 1},
        "entropy_exit.exits": {yes: 1},
        "entropy_exit.tokens.generated": {yes: exited.tokens_generated, no: 12},
        "entropy_exit.tokens.saved": {yes: 64 - exited.tokens_generated, no: 0},
    }


async def test_async_helper_emits_the_same_span(otel: Telemetry) -> None:
    messages = [{"role": "user", "content": "q"}]
    result = await astream_chat(
        _client(is_async=True),
        policy=ALWAYS,
        model=MODEL,
        messages=messages,
        max_tokens=64,
        force_answer=False,
    )
    (span,) = otel.spans.get_finished_spans()
    assert span.attributes["entropy_exit.exited"] is True
    assert span.attributes["gen_ai.usage.output_tokens"] == result.report.tokens_generated


def test_a_broken_stream_is_an_error_span(otel: Telemetry) -> None:
    chunks = load_chunks(TOP20)[:5]

    def stream() -> Iterator[dict]:
        yield from chunks
        raise httpx.ReadError("connection reset")

    class Transport:
        parts = staticmethod(parse_chat_chunk)

        def open(self, spec: object) -> Iterator[dict]:
            return stream()

        def close(self, stream: object) -> None:
            pass

    call = MonitoredCall(NEVER, model="m")
    with pytest.raises(StreamInterrupted) as raised:
        list(drive(call, Transport()))
    (span,) = otel.spans.get_finished_spans()
    assert span.name == "chat m"
    assert span.status.status_code is StatusCode.ERROR
    attrs = dict(span.attributes)
    assert attrs["error.type"] == "StreamInterrupted"
    assert attrs["entropy_exit.ended"] == "broken" and attrs["entropy_exit.exit_reason"] == "interrupted"
    assert attrs["gen_ai.usage.output_tokens"] == raised.value.partial.report.tokens_generated == 4
    assert "gen_ai.request.max_tokens" not in attrs and "entropy_exit.tokens_saved_vs_budget" not in attrs
    assert "entropy_exit.tokens.saved" not in otel.counters()  # no budget: nothing to count


def test_completions_operation_and_no_model(otel: Telemetry) -> None:
    call = MonitoredCall(NEVER, api="completions", prompt="p", max_tokens=8, terminal_required=False)
    call.finish(estimate_prompt=False)
    (span,) = otel.spans.get_finished_spans()
    assert span.name == "text_completion"
    assert span.attributes["gen_ai.operation.name"] == "text_completion"
    assert "gen_ai.request.model" not in span.attributes
    assert otel.counters()["entropy_exit.calls"] == {(("entropy_exit.exited", False),): 1}


def test_disabled_emits_nothing(otel: Telemetry) -> None:
    telemetry.configure(enabled=False)
    _ask(ALWAYS)
    assert otel.spans.get_finished_spans() == ()


def test_a_failing_exporter_never_breaks_the_call(otel: Telemetry, monkeypatch: Any) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("exporter down")

    monkeypatch.setattr(telemetry, "_emit", boom)
    assert _ask(ALWAYS).report.exited


BLOCKED = textwrap.dedent(
    """
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Block())

    from entropy_exit_integrations import ExitPolicy, telemetry
    from entropy_exit_integrations.engine import MonitoredCall
    from entropy_exit_integrations.providers import parse_chat_chunk

    top = [{"token": "a", "logprob": -0.001}, {"token": "b", "logprob": -9.0}]
    entry = {"token": "a", "logprob": -0.001, "top_logprobs": top}
    chunk = {"choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [entry]},
                          "finish_reason": None}]}
    for _ in range(2):
        call = MonitoredCall(ExitPolicy(threshold=4.0, min_tokens=2), model="m", max_tokens=10)
        for _ in range(3):
            call.feed(parse_chat_chunk(chunk))
            if call.should_stop:
                break
        call.end_main(cut=call.should_stop)
        report = call.finish(estimate_prompt=False).report
        assert report.exited and report.tokens_generated == 2, report
    assert telemetry.available() is False
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    assert not loaded, loaded
    print("ok")
    """
)


def test_without_opentelemetry_nothing_is_imported_or_emitted() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", BLOCKED], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok" and "telemetry" not in done.stderr
