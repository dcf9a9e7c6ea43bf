"""Early exit over the openai SDK: stream, decide, really stop, force the answer, report.

Works with ``openai.OpenAI``/``openai.AsyncOpenAI`` pointed at any OpenAI-compatible server that
streams logprobs (OpenAI, vLLM, llama.cpp, SGLang, Together, Fireworks, Ollama's ``/v1``).

Example (against the embedded server, ``entropy-exit serve``)::

    import openai
    from entropy_exit_integrations import ExitPolicy
    from entropy_exit_integrations.openai import stream_chat

    client = openai.OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="none")
    result = stream_chat(
        client,
        policy=ExitPolicy(threshold=1.0, min_tokens=8),
        model="smollm2",
        messages=[{"role": "user", "content": "What is 7 + 5?"}],
        max_tokens=200,
    )
    print(result.text, result.finish_reason, result.report)

On exit the HTTP response is closed (``Stream.close()``), so the server stops generating.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai

from .core.policy import ExitPolicy
from .core.probes import ProbeRule
from .core.savings import SavingsLedger
from .engine import (
    ATTEMPTS,
    ENTROPY_EXIT,
    LOGPROB_FIELDS,
    Api,
    ExitResult,
    ForcingPlan,
    MonitoredCall,
    OnToken,
    TextDelta,
    aguarded,
    check_policy,
    guarded,
)
from .forcing import AnswerForcing
from .providers.completions import parse_completion_chunk
from .providers.openai_chat import parse_chat_chunk
from .providers.parts import ChunkParts

_PROBE_ERRORS = (openai.APIError, httpx.HTTPError, ValueError)
"""What a probe may fail with (ValueError: invalid JSON) without ending the call."""
_NOT_FORWARDED = ("max_tokens", "max_completion_tokens", "n", "stop", "tools", "tool_choice")


class _MonitoredStream:
    """What the sync and async streams share: the call, its request and, once iterated, its result."""

    def __init__(
        self,
        client: Any,
        api: Api,
        policy: ExitPolicy,
        options: dict[str, Any],
        create_kwargs: dict[str, Any],
    ) -> None:
        check_policy(policy, f"{'stream_chat' if api == 'chat' else 'stream_completion'}()")
        self._client = client
        self._api = api
        self._create = client.chat.completions.create if api == "chat" else client.completions.create
        self._parse = parse_chat_chunk if api == "chat" else parse_completion_chunk
        self._chunks: list[Any] | None = [] if options.pop("keep_chunks") else None
        budget = create_kwargs.get("max_completion_tokens", create_kwargs.get("max_tokens"))
        self._call = MonitoredCall(
            policy,
            api=api,
            messages=list(create_kwargs.get("messages") or []),
            prompt=str(create_kwargs.get("prompt") or ""),
            model=create_kwargs.get("model"),
            max_tokens=int(budget) if budget is not None else None,
            base_url=str(getattr(client, "base_url", "") or ""),
            **options,
        )
        request = {**create_kwargs, "stream": True}
        for key, value in self._call.logprob_params().items():
            request.setdefault(key, value)
        request.setdefault("stream_options", {"include_usage": True})
        self._request = request
        self._result: ExitResult | None = None
        self._stream: Any = None

    @property
    def result(self) -> ExitResult:
        if self._result is None:
            raise RuntimeError("the stream has not finished: iterate it to the end first")
        return self._result

    def _retry(self, request: dict[str, Any], error: openai.APIError, attempt: int) -> dict[str, Any]:
        """The request to send after ``error``, as the engine says; re-raises what is no refusal."""
        retry = self._call.refused(error) if attempt < ATTEMPTS - 1 else None
        if retry is None:
            raise error
        request = {k: v for k, v in request.items() if k not in (*LOGPROB_FIELDS, "extra_body")}
        extra = retry.merged_extra_body(self._request.get("extra_body"))
        return request if extra is None else {**request, "extra_body": extra}

    def _feed(self, chunk: Any) -> list[TextDelta]:
        if self._chunks is not None:
            self._chunks.append(chunk)
        return self._call.feed(self._parse(chunk))

    def _short_request(self, plan: ForcingPlan) -> dict[str, Any]:
        """The request of a forcing plan (the final answer after a cut, or a probe)."""
        request = {k: v for k, v in self._request.items() if k not in _NOT_FORWARDED}
        request.update(stream=True, max_tokens=plan.max_tokens)
        if plan.stop:
            request["stop"] = plan.stop
        if self._api == "completions":
            request.update(prompt=plan.prompt, logprobs=1)
        else:
            request.update(messages=[*request["messages"], *plan.messages], logprobs=True, top_logprobs=1)
        if plan.extra_body:
            request["extra_body"] = {**(request.get("extra_body") or {}), **plan.extra_body}
        return request

    def _done(self, result: ExitResult) -> None:
        result.chunks = self._chunks
        self._result = result


class ExitStream(_MonitoredStream):
    """Iterate the text of a monitored generation as it streams; ``result`` once it ends.

    >>> with iter_chat(client, policy=policy, model=m, messages=msgs) as stream:  # doctest: +SKIP
    ...     for delta in stream:
    ...         print(delta.text, end="")
    ...     print(stream.result.report)
    """

    def __enter__(self) -> ExitStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP response (the server stops generating)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _open(self) -> Iterator[Any]:
        """The main stream with its first chunk read, so that a refusal in its first event (vLLM)
        is retried like one at the request."""
        request = self._request
        for attempt in range(ATTEMPTS):
            try:
                self._stream = self._create(**request)
                chunks = iter(self._stream)
                first = next(chunks, None)
                return itertools.chain(() if first is None else (first,), chunks)
            except openai.APIError as error:
                self.close()
                request = self._retry(request, error, attempt)
        raise AssertionError("unreachable")

    def _probe(self) -> None:
        """One answer probe, while the server goes on generating the main stream."""
        call = self._call
        call.run_probe(self._probe_parts(self._short_request(call.probe_plan())), _PROBE_ERRORS)

    def _probe_parts(self, request: dict[str, Any]) -> Iterator[ChunkParts]:
        with self._create(**request) as probe:
            for chunk in probe:
                yield self._parse(chunk)

    def __iter__(self) -> Iterator[TextDelta]:
        call = self._call
        try:
            for chunk in guarded(self._open(), call):
                yield from self._feed(chunk)
                if call.wants_probe:
                    self._probe()
                if call.should_stop:
                    break
            self.close()
            yield from call.end_main(cut=call.should_stop)
            if call.wants_forcing():
                request = self._short_request(call.forcing_plan())
                try:
                    self._stream = self._create(**request)
                except Exception as error:
                    raise call.interrupted(error) from error
                for chunk in guarded(self._stream, call):
                    yield from call.feed_forced(self._parse(chunk))
                self.close()
                yield from call.finish_forced()
        finally:
            self.close()
        self._done(call.finish())


class AsyncExitStream(_MonitoredStream):
    """Async twin of ExitStream: ``async for delta in stream``, then ``stream.result``."""

    async def __aenter__(self) -> AsyncExitStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP response (the server stops generating)."""
        if self._stream is not None:
            await self._stream.close()
            self._stream = None

    async def _open(self) -> AsyncIterator[Any]:
        """Async twin of ``ExitStream._open``."""
        request = self._request
        for attempt in range(ATTEMPTS):
            try:
                self._stream = await self._create(**request)
                chunks = aiter(self._stream)
                first = await anext(chunks, None)
                return _achain(first, chunks)
            except openai.APIError as error:
                await self.aclose()
                request = self._retry(request, error, attempt)
        raise AssertionError("unreachable")

    async def _probe(self) -> None:
        """Async twin of ``ExitStream._probe``."""
        call = self._call
        await call.arun_probe(self._probe_parts(self._short_request(call.probe_plan())), _PROBE_ERRORS)

    async def _probe_parts(self, request: dict[str, Any]) -> AsyncIterator[ChunkParts]:
        async with await self._create(**request) as probe:
            async for chunk in probe:
                yield self._parse(chunk)

    async def __aiter__(self) -> AsyncIterator[TextDelta]:
        call = self._call
        try:
            async for chunk in aguarded(await self._open(), call):
                for delta in self._feed(chunk):
                    yield delta
                if call.wants_probe:
                    await self._probe()
                if call.should_stop:
                    break
            await self.aclose()
            for delta in call.end_main(cut=call.should_stop):
                yield delta
            if call.wants_forcing():
                request = self._short_request(call.forcing_plan())
                try:
                    self._stream = await self._create(**request)
                except Exception as error:
                    raise call.interrupted(error) from error
                async for chunk in aguarded(self._stream, call):
                    for delta in call.feed_forced(self._parse(chunk)):
                        yield delta
                await self.aclose()
                for delta in call.finish_forced():
                    yield delta
        finally:
            await self.aclose()
        self._done(await call.afinish())


async def _achain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    if first is not None:
        yield first
    async for chunk in rest:
        yield chunk


def _options(
    force_answer: bool | None,
    forcing: AnswerForcing | None,
    ledger: SavingsLedger | None,
    on_token: OnToken | None,
    keep_chunks: bool,
    probes: ProbeRule | None,
) -> dict[str, Any]:
    return {
        "force_answer": force_answer,
        "forcing": forcing,
        "ledger": ledger,
        "on_token": on_token,
        "keep_chunks": keep_chunks,
        "probes": probes,
    }


def iter_chat(
    client: openai.OpenAI,
    *,
    policy: ExitPolicy,
    force_answer: bool | None = None,
    forcing: AnswerForcing | None = None,
    ledger: SavingsLedger | None = None,
    on_token: OnToken | None = None,
    keep_chunks: bool = False,
    probes: ProbeRule | None = None,
    **create_kwargs: Any,
) -> ExitStream:
    """A monitored chat stream to iterate (text deltas), with ``.result`` at the end.

    Args:
        client: an ``openai.OpenAI`` client.
        policy: the exit rule.
        force_answer: after an exit, ask for the final answer: None (default) when the exit cut
            the reasoning phase, True after any exit, False never.
        forcing: how the answer is forced (style, budget, cue).
        ledger: records the report of this call.
        on_token: called with every token and the decision after its chunk.
        keep_chunks: keep the raw chunks on the result.
        probes: answer probes (``ProbeRule``): stop only when consecutive short forced answers
            agree; the agreed answer is the result's ``forced_answer``, probe tokens are counted.
            The client reads each probe while the server goes on generating the main stream
            (a second slot: llama-server ``--parallel``, vLLM).
        **create_kwargs: passed to ``client.chat.completions.create``; ``stream``, ``logprobs``,
            ``top_logprobs`` (policy.top_k) and ``stream_options`` are added when absent.
    """
    options = _options(force_answer, forcing, ledger, on_token, keep_chunks, probes)
    return ExitStream(client, "chat", policy, options, create_kwargs)


def aiter_chat(
    client: openai.AsyncOpenAI,
    *,
    policy: ExitPolicy,
    force_answer: bool | None = None,
    forcing: AnswerForcing | None = None,
    ledger: SavingsLedger | None = None,
    on_token: OnToken | None = None,
    keep_chunks: bool = False,
    probes: ProbeRule | None = None,
    **create_kwargs: Any,
) -> AsyncExitStream:
    """Async twin of ``iter_chat`` for ``openai.AsyncOpenAI``."""
    options = _options(force_answer, forcing, ledger, on_token, keep_chunks, probes)
    return AsyncExitStream(client, "chat", policy, options, create_kwargs)


def iter_completion(
    client: openai.OpenAI,
    *,
    policy: ExitPolicy,
    force_answer: bool | None = None,
    forcing: AnswerForcing | None = None,
    ledger: SavingsLedger | None = None,
    on_token: OnToken | None = None,
    keep_chunks: bool = False,
    probes: ProbeRule | None = None,
    **create_kwargs: Any,
) -> ExitStream:
    """``iter_chat`` for the legacy Completions API (``logprobs=policy.top_k`` is added)."""
    options = _options(force_answer, forcing, ledger, on_token, keep_chunks, probes)
    return ExitStream(client, "completions", policy, options, create_kwargs)


def aiter_completion(
    client: openai.AsyncOpenAI,
    *,
    policy: ExitPolicy,
    force_answer: bool | None = None,
    forcing: AnswerForcing | None = None,
    ledger: SavingsLedger | None = None,
    on_token: OnToken | None = None,
    keep_chunks: bool = False,
    probes: ProbeRule | None = None,
    **create_kwargs: Any,
) -> AsyncExitStream:
    """Async twin of ``iter_completion``."""
    options = _options(force_answer, forcing, ledger, on_token, keep_chunks, probes)
    return AsyncExitStream(client, "completions", policy, options, create_kwargs)


def _drain(stream: ExitStream) -> ExitResult:
    with stream:
        for _ in stream:
            pass
    return stream.result


async def _adrain(stream: AsyncExitStream) -> ExitResult:
    async with stream:
        async for _ in stream:
            pass
    return stream.result


def stream_chat(client: openai.OpenAI, *, policy: ExitPolicy, **kwargs: Any) -> ExitResult:
    """Run a monitored chat completion to its end (or its early exit); see ``iter_chat``."""
    return _drain(iter_chat(client, policy=policy, **kwargs))


async def astream_chat(client: openai.AsyncOpenAI, *, policy: ExitPolicy, **kwargs: Any) -> ExitResult:
    """Async twin of ``stream_chat``."""
    return await _adrain(aiter_chat(client, policy=policy, **kwargs))


def stream_completion(client: openai.OpenAI, *, policy: ExitPolicy, **kwargs: Any) -> ExitResult:
    """Run a monitored legacy completion to its end (or its early exit)."""
    return _drain(iter_completion(client, policy=policy, **kwargs))


async def astream_completion(client: openai.AsyncOpenAI, *, policy: ExitPolicy, **kwargs: Any) -> ExitResult:
    """Async twin of ``stream_completion``."""
    return await _adrain(aiter_completion(client, policy=policy, **kwargs))


__all__ = [
    "ENTROPY_EXIT",
    "AsyncExitStream",
    "ExitResult",
    "ExitStream",
    "TextDelta",
    "aiter_chat",
    "aiter_completion",
    "astream_chat",
    "astream_completion",
    "iter_chat",
    "iter_completion",
    "stream_chat",
    "stream_completion",
]
