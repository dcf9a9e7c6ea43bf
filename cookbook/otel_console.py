"""Savings in your traces: every monitored call emits an OpenTelemetry span and counters.

    pip install "entropy-exit-integrations[otel]" opentelemetry-sdk
    python cookbook/otel_console.py                      # starts the embedded llama.cpp server
    python cookbook/otel_console.py --base-url http://127.0.0.1:8080/v1 --model my-model

Sets a global tracer and meter provider (the same code that sends spans to Jaeger, Tempo or
Honeycomb with an OTLP exporter instead of the console), makes one call that exits early and one
that runs to the end, prints both spans (GenAI attributes plus ``entropy_exit.*``) and the
counters. Nothing in the calls mentions OpenTelemetry: with the ``otel`` extra installed, every
integration (openai helpers, LangChain, LlamaIndex) reports through the global providers.
"""

from __future__ import annotations

import argparse

import openai
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.lab.local import LocalServer
from entropy_exit_integrations.openai import stream_chat


def main() -> None:
    parser = argparse.ArgumentParser(description="entropy early exit, seen in OpenTelemetry spans")
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the embedded one)")
    parser.add_argument("--model")
    args = parser.parse_args()

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()  # a PeriodicExportingMetricReader(OTLPMetricExporter()) in production
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    question = [
        {
            "role": "user",
            "content": "A baker has 12 loaves and sells 5. How many are left? Explain step by step.",
        }
    ]
    # Uncalibrated thresholds, to show both outcomes: 5 bits is above log2(20), so the first call
    # stops as soon as min_tokens allows; 0 never exits.
    policies = {
        "exits": ExitPolicy(threshold=4.0, min_tokens=4),
        "runs to the end": ExitPolicy(threshold=0.0),
    }
    reports = {}
    with LocalServer(parallel=1, base_url=args.base_url) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-no-key")
        for label, policy in policies.items():
            print(f"--- call that {label}: its span ---", flush=True)
            result = stream_chat(
                client,
                policy=policy,
                force_answer=False,
                model=args.model or server.model,
                messages=question,
                max_tokens=64,
                temperature=0,
            )
            reports[label] = result.report
    print("--- counters ---")
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    print(f"{metric.name} {dict(point.attributes)} = {point.value}")
    tracer_provider.shutdown()
    assert reports["exits"].exited and not reports["runs to the end"].exited


if __name__ == "__main__":
    main()
