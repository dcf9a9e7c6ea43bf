"""The external-server suite: the cases a real OpenAI-compatible server can produce, against yours.

Run it against any server that streams logprobs (llama.cpp ``llama-server``, vLLM, SGLang...)::

    ENTROPY_EXIT_EXTERNAL_URL=http://127.0.0.1:8000/v1 python -m pytest tests/external -rs

Configuration (environment variables):

* ``ENTROPY_EXIT_EXTERNAL_URL``: the OpenAI-compatible base URL, ``.../v1``. Without it every
  test here is skipped with one reason in the ``-rs`` summary, and costs nothing.
* ``ENTROPY_EXIT_EXTERNAL_MODEL``: the model id; default: the first id of ``GET /v1/models``.
* ``ENTROPY_EXIT_EXTERNAL_API_KEY``: sent as the bearer token; default ``"none"``.

Why not ``ENTROPY_EXIT_BASE_URL`` / ``ENTROPY_EXIT_MODEL`` (the names issue 13 suggests): the
package already reads both, with other meanings. ``ENTROPY_EXIT_BASE_URL`` turns every
``LocalServer`` into a pointer at that server, so in a normal ``pytest`` run the embedded-server
fixtures (``llama_server``, ``reasoning_server`` with its thinking template, the module-fresh
servers) would all silently become your server and the llama.cpp-specific tests would fail;
``ENTROPY_EXIT_MODEL`` is the path of a GGUF file for ``LocalServer``, and a model id there makes
every embedded server fail to start ("model file 'smollm2-135m-instruct' (from
ENTROPY_EXIT_MODEL) does not exist"). Distinct names let both suites run in one environment.

A set URL whose server does not answer fails every test here (never a skip: a run against a dead
server has tested nothing). The only other skips are capabilities the server lacks: Prometheus
metrics (llama.cpp ``--metrics``: ``llamacpp:requests_processing``,
``llamacpp:tokens_predicted_total``; vLLM: ``vllm:num_requests_running``,
``vllm:generation_tokens_total``) for the server-side stop checks, and a reasoning field
(``delta.reasoning_content`` / ``delta.reasoning``) for the reasoning-phase tests.

Use a server nobody else is loading while the suite runs: the stop checks read server-wide gauges
and counters.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from entropy_exit_integrations.lab.local.server import _parse_metrics as parse_prometheus

ENV_URL = "ENTROPY_EXIT_EXTERNAL_URL"
ENV_MODEL = "ENTROPY_EXIT_EXTERNAL_MODEL"
ENV_API_KEY = "ENTROPY_EXIT_EXTERNAL_API_KEY"

SKIP_REASON = f"external-server suite: set {ENV_URL}=http://host:port/v1 to run it against your server"

TIMEOUT = 120.0
"""Seconds a client waits for the server (a first request may load or compile things)."""

STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
"""A prompt every chat model answers at length: it uses the whole budget, so an exit saves."""

REASONING_PROMPT = [{"role": "user", "content": "What is 7 + 5? Think step by step."}]

MAX_TOKENS = 48
MIN_TOKENS = 8
EXIT_THRESHOLD = 10.0
"""Above log2(k + 1) bits for any k <= 20 (4.39 at k = 20): every known token reads as confident,
so the policy exits exactly when ``min_tokens`` allows, whatever the model."""

IN_FLIGHT = 16
"""Tokens a server may generate after the client closed, per stream (llama.cpp: about 6; vLLM:
about 4, 63 over 16 streams in the issue's measurement)."""


@dataclass(frozen=True)
class External:
    """The server under test."""

    base_url: str
    model: str
    api_key: str

    @property
    def root_url(self) -> str:
        url = self.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=TIMEOUT)

    def aclient(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=TIMEOUT
        )


@dataclass(frozen=True)
class MetricNames:
    """One server family's Prometheus names: gauges that are 0 when idle, the generated-tokens counter."""

    server: str
    busy: tuple[str, ...]
    tokens: str


KNOWN_METRICS = (
    MetricNames(
        "llama.cpp",
        ("llamacpp:requests_processing", "llamacpp:requests_deferred"),
        "llamacpp:tokens_predicted_total",
    ),
    MetricNames(
        "vLLM", ("vllm:num_requests_running", "vllm:num_requests_waiting"), "vllm:generation_tokens_total"
    ),
)


def _total(values: dict[str, float], name: str) -> float | None:
    """Sum of a metric over its label sets (vLLM labels every series with model and engine)."""
    found = [v for key, v in values.items() if key == name or key.startswith(name + "{")]
    return sum(found) if found else None


class ServerMetrics:
    """Reads the server's ``/metrics``: is it still generating, and how many tokens has it generated."""

    def __init__(self, url: str, headers: dict[str, str], names: MetricNames) -> None:
        self.url = url
        self.headers = headers
        self.names = names

    @property
    def server(self) -> str:
        return self.names.server

    def read(self) -> dict[str, float]:
        response = httpx.get(self.url, headers=self.headers, timeout=10.0)
        response.raise_for_status()
        return parse_prometheus(response.text)

    def busy(self) -> float:
        values = self.read()
        return sum(_total(values, name) or 0.0 for name in self.names.busy)

    def tokens(self) -> float:
        value = _total(self.read(), self.names.tokens)
        assert value is not None, f"{self.names.tokens} vanished from {self.url}"
        return value

    def wait_idle(self, timeout: float) -> float:
        """Seconds until every busy gauge reads 0; ``AssertionError`` if still busy after ``timeout``."""
        started = time.perf_counter()
        while True:
            busy = self.busy()
            elapsed = time.perf_counter() - started
            if busy == 0:
                return elapsed
            if elapsed > timeout:
                raise AssertionError(
                    f"{self.server} still busy ({busy:g} request(s) in {', '.join(self.names.busy)}) "
                    f"{timeout} s after the client closed: the server did not stop generating"
                )
            time.sleep(0.01)

    def settled_tokens(self, timeout: float = 2.0) -> float:
        """The tokens counter once it stops moving (llama.cpp updates it when a task ends)."""
        last = self.tokens()
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            time.sleep(0.05)
            now = self.tokens()
            if now == last:
                return now
            last = now
        return last


class StopEvidence:
    """Server-side evidence that closing a stream stopped the generation.

    ``before`` waits for the server to be idle (a stream an earlier test cut may still be ending),
    then reads the tokens counter; ``check`` asserts the server is idle within ``idle_within`` s
    of the calls returning, and generated no more than the clients read plus ``IN_FLIGHT`` per
    stream (and no fewer than they read).
    """

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        metrics.wait_idle(timeout=30.0)
        self.before = metrics.settled_tokens()

    def check(self, read: list[int], idle_within: float = 1.0) -> tuple[float, float]:
        idle_after = self.metrics.wait_idle(timeout=idle_within)
        generated = self.metrics.settled_tokens() - self.before
        total = sum(read)
        assert total <= generated <= total + IN_FLIGHT * len(read), (
            f"{self.metrics.server} generated {generated:g} tokens for {len(read)} stream(s) whose "
            f"clients read {total} (allowed: up to {IN_FLIGHT} in flight per stream)"
        )
        return idle_after, generated


@dataclass(frozen=True)
class Probe:
    """A capability: available, or why not."""

    value: Any = None
    missing: str = ""


def probe_metrics(external: External) -> Probe:
    url = external.root_url + "/metrics"
    headers = {"Authorization": f"Bearer {external.api_key}"}
    try:
        response = httpx.get(url, headers=headers, timeout=10.0)
    except httpx.HTTPError as error:
        return Probe(missing=f"GET {url} failed ({type(error).__name__}: {error})")
    if response.status_code != 200:
        return Probe(missing=f"GET {url} answered {response.status_code} (llama.cpp needs --metrics)")
    values = parse_prometheus(response.text)
    for names in KNOWN_METRICS:
        if _total(values, names.busy[0]) is not None and _total(values, names.tokens) is not None:
            return Probe(ServerMetrics(url, headers, names))
    wanted = "; ".join(f"{n.server}: {n.busy[0]} and {n.tokens}" for n in KNOWN_METRICS)
    return Probe(missing=f"{url} has none of the known metric pairs ({wanted})")


def reasoning_delta(delta: Any) -> str:
    """The reasoning text of a streamed delta, read from the raw fields (not the package's parser)."""
    if delta is None:
        return ""
    extra = getattr(delta, "model_extra", None) or {}
    value = (
        getattr(delta, "reasoning_content", None) or extra.get("reasoning_content") or extra.get("reasoning")
    )
    return value if isinstance(value, str) else ""


NO_REASONING = (
    "the server streamed no delta.reasoning_content / delta.reasoning for a reasoning prompt "
    "(llama.cpp: a thinking chat template with --jinja --reasoning-format deepseek; vLLM: "
    "--reasoning-parser with a model whose vocabulary has the think tags)"
)


@dataclass(frozen=True)
class StreamShape:
    """What the server's stream for a reasoning prompt looks like (one probe request).

    Attributes:
        reasoning: some delta carried ``reasoning_content`` / ``reasoning``.
        first_token_on_role_chunk: the first chunk with a choice has ``content: null`` and yet
            carries the first token's logprobs (llama.cpp does this when that token is reasoning).
    """

    reasoning: bool
    first_token_on_role_chunk: bool


def probe_stream_shape(external: External) -> StreamShape:
    stream = external.client().chat.completions.create(
        model=external.model,
        messages=REASONING_PROMPT,
        max_tokens=24,
        temperature=0,
        logprobs=True,
        top_logprobs=1,
        stream=True,
    )
    reasoning = first_on_role = False
    first = True
    with stream:
        for chunk in stream:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if first:
                entries = (choice.logprobs.content if choice.logprobs else None) or []
                first_on_role = choice.delta is not None and choice.delta.content is None and bool(entries)
                first = False
            reasoning = reasoning or bool(reasoning_delta(choice.delta))
    return StreamShape(reasoning, first_on_role)


# -- what the suite found in the package (strict xfails, applied where the server shows them) ------

LLAMAINDEX_ASYNC_LOSES_FIRST_TOKEN = (
    "package gap: EntropyExitLLM.achat/astream_chat over llama-index-llms-openai never sees the "
    "first token when the server puts its logprobs on the content-less role chunk (llama.cpp, "
    "reasoning first): LlamaIndex's async _astream_chat skips a first chunk with content None "
    "and no tool calls (the sync path does not), so the report counts one token fewer than the "
    "server generated and than every other integration"
)


def known_issues(
    request: pytest.FixtureRequest,
    driver: Any,
    shape: StreamShape,
    *,
    compares_counts: bool = False,
) -> None:
    """Mark the test ``xfail(strict=True)`` where this server shows a known package gap.

    ``compares_counts``: it compares token counts with another integration's. (The callback
    handler's blindness to reasoning that ChatOpenAI drops, found here first, is fixed: a run
    of text-less tokens is read as hidden reasoning.)
    """
    if compares_counts and driver.id == "llamaindex-async" and shape.first_token_on_role_chunk:
        request.applymarker(pytest.mark.xfail(strict=True, reason=LLAMAINDEX_ASYNC_LOSES_FIRST_TOKEN))


# -- no URL: one skip for the whole folder ----------------------------------------------------------


def _skip_reason() -> str:
    reason = SKIP_REASON
    if os.environ.get("ENTROPY_EXIT_BASE_URL"):
        reason += " (ENTROPY_EXIT_BASE_URL is set, but that one redirects the embedded-server fixtures)"
    return reason


class _SkippedModule(pytest.Module):
    """A test module of this folder when no URL is given: skipped before it is even imported."""

    def collect(self) -> Any:
        pytest.skip(_skip_reason())  # one line, so ``-rs`` groups every module under one reason


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Any, parent: Any) -> Any:
    if os.environ.get(ENV_URL, "").strip():
        return None
    return _SkippedModule.from_parent(parent, path=module_path)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def external() -> External:
    """The configured server; skips the whole folder (one reason) when no URL is given."""
    url = os.environ.get(ENV_URL, "").strip()
    if not url:
        pytest.skip(_skip_reason())
    api_key = os.environ.get(ENV_API_KEY, "").strip() or "none"
    model = os.environ.get(ENV_MODEL, "").strip()
    probe = External(url, model, api_key)
    try:
        models = probe.client().models.list()
        ids = [m.id for m in models.data]
    except (openai.APIError, httpx.HTTPError) as error:
        pytest.fail(f"{ENV_URL}={url}: no OpenAI-compatible server answers ({error})", pytrace=False)
    if not model:
        if not ids:
            pytest.fail(f"{url}/models lists no model: set {ENV_MODEL}", pytrace=False)
        model = ids[0]
    return External(url, model, api_key)


@pytest.fixture(autouse=True)
def _needs_external(external: External) -> None:
    """Every test here needs the server (and is skipped, with one reason, without a URL)."""


@pytest.fixture(scope="session")
def _metrics_probe(external: External) -> Probe:
    return probe_metrics(external)


@pytest.fixture
def metrics(_metrics_probe: Probe) -> ServerMetrics:
    """The server's metrics; skips (naming what is missing) when the server exposes none we know."""
    if _metrics_probe.value is None:
        pytest.skip(f"no server-side stop check without server metrics: {_metrics_probe.missing}")
    return _metrics_probe.value


@pytest.fixture(scope="session")
def shape(external: External) -> StreamShape:
    """How the server streams a reasoning prompt (one request per session)."""
    return probe_stream_shape(external)


@pytest.fixture
def reasoning(shape: StreamShape) -> None:
    """Skips (with the reason) when the server streams no reasoning field."""
    if not shape.reasoning:
        pytest.skip(f"no reasoning phase: {NO_REASONING}")


@dataclass(frozen=True)
class Plain:
    """A plain (unmonitored, non-streamed) temperature-0 call: what the model says, and the usage."""

    text: str
    reasoning: str
    finish_reason: str
    completion_tokens: int
    prompt_tokens: int


def message_reasoning(message: Any) -> str:
    """The reasoning of a non-streamed message (``reasoning_content``, or vLLM's newer ``reasoning``)."""
    extra = getattr(message, "model_extra", None) or {}
    value = (
        getattr(message, "reasoning_content", None)
        or extra.get("reasoning_content")
        or extra.get("reasoning")
    )
    return value if isinstance(value, str) else ""


@pytest.fixture(scope="session")
def plain(external: External) -> Any:
    """``plain(messages, max_tokens=MAX_TOKENS) -> Plain``, one request per distinct call per session."""
    cache: dict[tuple[str, int], Plain] = {}

    def call(messages: list[dict[str, str]], max_tokens: int = MAX_TOKENS) -> Plain:
        key = (repr(messages), max_tokens)
        if key not in cache:
            reply = external.client().chat.completions.create(
                model=external.model, messages=messages, max_tokens=max_tokens, temperature=0
            )
            choice = reply.choices[0]
            assert reply.usage is not None, "the server sent no usage for a plain call"
            cache[key] = Plain(
                text=choice.message.content or "",
                reasoning=message_reasoning(choice.message),
                finish_reason=choice.finish_reason,
                completion_tokens=reply.usage.completion_tokens,
                prompt_tokens=reply.usage.prompt_tokens,
            )
        return cache[key]

    return call
