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

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import openai

from .core.monitor import Decision
from .core.policy import ExitPolicy
from .core.savings import SavingsLedger, SavingsReport
from .core.tokens import Phase, TokenLogprob
from .errors import StreamInterrupted, is_logprobs_refusal
from .forcing import AnswerForcing, ForcedAnswer
from .providers.completions import parse_completion_chunk
from .providers.openai_chat import parse_chat_chunk
from .providers.parts import ChunkParts
from .session import ExitSession
from .tokencount import count_message_tokens, count_tokens

Api = Literal["chat", "completions"]
OnToken = Callable[[TokenLogprob, Decision], None]

ENTROPY_EXIT = "entropy_exit"
"""``finish_reason`` of a generation this package stopped."""

_STREAM_ERRORS = (httpx.HTTPError, openai.APIError)


@dataclass(frozen=True)
class TextDelta:
    """A piece of streamed text: reasoning or answer, and whether it came from answer forcing."""

    text: str
    phase: Phase = Phase.ANSWER
    forced: bool = False


@dataclass
class ExitResult:
    """Everything one monitored generation produced.

    Attributes:
        text: the answer (with the forced answer appended when forcing ran).
        reasoning: reasoning text (``reasoning_content`` deltas or ``<think>`` content).
        finish_reason: ``"entropy_exit"`` when this package stopped it, else the provider's.
        decision: the monitor's last decision.
        report: tokens generated and saved, entropy summary, k, unknown tokens.
        usage: provider usage when it came; else counted (``usage["estimated"]`` says so).
        tokens: every generated token with its top logprobs.
        forced_answer: the forced answer text, or None when no forcing ran.
        chunks: raw chunks, when ``keep_chunks=True``.
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


class _Run:
    """The I/O-free part of one call, shared by the sync and async streams."""

    def __init__(
        self,
        client: Any,
        api: Api,
        policy: ExitPolicy,
        force_answer: bool | None,
        forcing: AnswerForcing | None,
        ledger: SavingsLedger | None,
        on_token: OnToken | None,
        keep_chunks: bool,
        create_kwargs: dict[str, Any],
    ) -> None:
        self.api = api
        self.policy = policy
        self.force_answer = force_answer
        self.forcing = forcing or AnswerForcing()
        self.ledger = ledger
        self.on_token = on_token
        self.base_url = str(getattr(client, "base_url", "") or "")
        self.request = _with_logprobs(api, policy, create_kwargs)
        self.parse = parse_chat_chunk if api == "chat" else parse_completion_chunk
        self.session = ExitSession(
            policy,
            max_tokens=_max_tokens(create_kwargs),
            model=create_kwargs.get("model"),
            stream_pieces=True,
        )
        self.chunks: list[Any] | None = [] if keep_chunks else None
        self.forced_tokens = 0
        self.forcing_usage: dict[str, Any] | None = None
        self.forced: ForcedAnswer | None = None

    def handle(self, chunk: Any) -> list[TextDelta]:
        if self.chunks is not None:
            self.chunks.append(chunk)
        parts = self.parse(chunk)
        decision = self.session.feed(parts)
        if self.on_token is not None:
            for token in parts.tokens:
                self.on_token(token, decision)
        return self.drained()

    def drained(self) -> list[TextDelta]:
        return [TextDelta(text, phase) for phase, text in self.session.drain()]

    @property
    def should_stop(self) -> bool:
        return self.session.should_stop

    def wants_forcing(self) -> bool:
        if not self.session.should_stop or self.force_answer is False:
            return False
        return self.force_answer is True or self.session.exited_in_reasoning

    def forcing_request(self) -> dict[str, Any]:
        """Create-kwargs of the short request that asks for the final answer."""
        session = self.session
        request = {
            k: v
            for k, v in self.request.items()
            if k not in ("max_tokens", "max_completion_tokens", "n", "stop")
        }
        request.update(stream=True, max_tokens=self.forcing.max_tokens)
        if self.forcing.stop:
            request["stop"] = list(self.forcing.stop)
        if self.api == "completions":
            request["prompt"] = self.forcing.completion_prompt(request["prompt"], session.text)
            request["logprobs"] = 1
            self.forced = ForcedAnswer(self.forcing, prefix="", cut_answer=session.text)
            return request
        messages, extra, prefix = self.forcing.chat_request(
            list(request["messages"]),
            reasoning=session.reasoning,
            text=session.text,
            inline_think=session.inline_think,
            base_url=self.base_url,
        )
        request.update(messages=messages, logprobs=True, top_logprobs=1)
        if extra:
            request["extra_body"] = {**(request.get("extra_body") or {}), **extra}
        self.forced = ForcedAnswer(self.forcing, prefix=prefix, cut_answer=session.text)
        return request

    def handle_forced(self, chunk: Any) -> list[TextDelta]:
        parts: ChunkParts = self.parse(chunk)
        self.forced_tokens += len(parts.tokens)
        if parts.usage is not None:
            self.forcing_usage = parts.usage
        assert self.forced is not None
        text = self.forced.feed(parts.content)
        return [TextDelta(text, Phase.ANSWER, forced=True)] if text else []

    def finish_forced(self) -> list[TextDelta]:
        text = self.forced.finish() if self.forced is not None else ""
        return [TextDelta(text, Phase.ANSWER, forced=True)] if text else []

    def result(self, *, interrupted: bool = False) -> ExitResult:
        session = self.session
        session.close_text()
        forced = self.forced.continuation if self.forced is not None else None
        if self.forced is not None and self.forced.text:
            session.add_forced_answer(self.forced.text)
        forced_tokens = self.forced_tokens
        if self.forcing_usage and self.forcing_usage.get("completion_tokens") is not None:
            forced_tokens = int(self.forcing_usage["completion_tokens"])
        prompt_tokens, estimated = self._prompt_tokens()
        report = session.report(
            forced_answer_tokens=forced_tokens,
            exit_reason="interrupted" if interrupted else None,
            prompt_tokens=prompt_tokens,
            prompt_tokens_estimated=estimated,
        )
        if self.ledger is not None:
            self.ledger.record(report)
        usage = session.usage_block(report)
        if estimated:
            usage["estimated"] = True
        if session.should_stop:
            finish = ENTROPY_EXIT
        elif interrupted:
            finish = "interrupted"
        else:
            finish = session.finish_reason or "stop"
        return ExitResult(
            text=session.text,
            reasoning=session.reasoning,
            finish_reason=finish,
            decision=session.decision,
            report=report,
            usage=usage,
            tokens=session.tokens,
            forced_answer=forced,
            chunks=self.chunks,
        )

    def _prompt_tokens(self) -> tuple[int | None, bool]:
        usage = self.session.usage
        if usage and usage.get("prompt_tokens") is not None:
            return int(usage["prompt_tokens"]), False
        model = self.request.get("model")
        if self.api == "chat":
            return count_message_tokens(list(self.request.get("messages") or []), model).tokens, True
        count = count_tokens(str(self.request.get("prompt") or ""), model)
        return count.tokens, True

    def interrupted(self, error: BaseException) -> StreamInterrupted:
        partial = self.result(interrupted=True)
        return StreamInterrupted(
            f"stream broke after {partial.report.tokens_generated} tokens: {error}", partial
        )


def _with_logprobs(api: Api, policy: ExitPolicy, kwargs: dict[str, Any]) -> dict[str, Any]:
    request = dict(kwargs)
    request["stream"] = True
    if api == "chat":
        request.setdefault("logprobs", True)
        request.setdefault("top_logprobs", policy.top_k)
    else:
        request.setdefault("logprobs", policy.top_k)
    request.setdefault("stream_options", {"include_usage": True})
    return request


def _max_tokens(kwargs: dict[str, Any]) -> int | None:
    value = kwargs.get("max_completion_tokens", kwargs.get("max_tokens"))
    return int(value) if value is not None else None


def _create(client: Any, api: Api) -> Any:
    return client.chat.completions.create if api == "chat" else client.completions.create


class _MonitoredStream:
    """What the sync and async streams share: the run and, once iterated, its result."""

    def __init__(self, client: Any, run: _Run) -> None:
        self._client = client
        self._run = run
        self._result: ExitResult | None = None
        self._stream: Any = None

    @property
    def result(self) -> ExitResult:
        if self._result is None:
            raise RuntimeError("the stream has not finished: iterate it to the end first")
        return self._result


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

    def __iter__(self) -> Iterator[TextDelta]:
        run = self._run
        try:
            self._stream = _open(self._client, run, run.request)
            for chunk in self._stream:
                yield from run.handle(chunk)
                if run.should_stop:
                    break
            self.close()
            run.session.close_text()
            yield from run.drained()
            if run.wants_forcing():
                self._stream = _open(self._client, run, run.forcing_request())
                for chunk in self._stream:
                    yield from run.handle_forced(chunk)
                self.close()
                yield from run.finish_forced()
        except _STREAM_ERRORS as error:
            raise run.interrupted(error) from error
        finally:
            self.close()
        self._result = run.result()


def _open(client: Any, run: _Run, request: dict[str, Any]) -> Any:
    try:
        return _create(client, run.api)(**request)
    except openai.APIStatusError as error:
        if not is_logprobs_refusal(error):
            raise
        run.session.refuse_logprobs(error)  # raises unless the policy passes such calls through
        return _create(client, run.api)(**_without_logprobs(request))


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

    async def __aiter__(self) -> AsyncIterator[TextDelta]:
        run = self._run
        try:
            self._stream = await _aopen(self._client, run, run.request)
            async for chunk in self._stream:
                for delta in run.handle(chunk):
                    yield delta
                if run.should_stop:
                    break
            await self.aclose()
            run.session.close_text()
            for delta in run.drained():
                yield delta
            if run.wants_forcing():
                self._stream = await _aopen(self._client, run, run.forcing_request())
                async for chunk in self._stream:
                    for delta in run.handle_forced(chunk):
                        yield delta
                await self.aclose()
                for delta in run.finish_forced():
                    yield delta
        except _STREAM_ERRORS as error:
            raise run.interrupted(error) from error
        finally:
            await self.aclose()
        self._result = run.result()


async def _aopen(client: Any, run: _Run, request: dict[str, Any]) -> Any:
    try:
        return await _create(client, run.api)(**request)
    except openai.APIStatusError as error:
        if not is_logprobs_refusal(error):
            raise
        run.session.refuse_logprobs(error)
        return await _create(client, run.api)(**_without_logprobs(request))


def _without_logprobs(request: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k not in ("logprobs", "top_logprobs")}


def iter_chat(
    client: openai.OpenAI,
    *,
    policy: ExitPolicy,
    force_answer: bool | None = None,
    forcing: AnswerForcing | None = None,
    ledger: SavingsLedger | None = None,
    on_token: OnToken | None = None,
    keep_chunks: bool = False,
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
        **create_kwargs: passed to ``client.chat.completions.create``; ``stream``, ``logprobs``,
            ``top_logprobs`` (policy.top_k) and ``stream_options`` are added when absent.
    """
    run = _Run(client, "chat", policy, force_answer, forcing, ledger, on_token, keep_chunks, create_kwargs)
    return ExitStream(client, run)


def aiter_chat(
    client: openai.AsyncOpenAI,
    *,
    policy: ExitPolicy,
    force_answer: bool | None = None,
    forcing: AnswerForcing | None = None,
    ledger: SavingsLedger | None = None,
    on_token: OnToken | None = None,
    keep_chunks: bool = False,
    **create_kwargs: Any,
) -> AsyncExitStream:
    """Async twin of ``iter_chat`` for ``openai.AsyncOpenAI``."""
    run = _Run(client, "chat", policy, force_answer, forcing, ledger, on_token, keep_chunks, create_kwargs)
    return AsyncExitStream(client, run)


def iter_completion(
    client: openai.OpenAI,
    *,
    policy: ExitPolicy,
    force_answer: bool | None = None,
    forcing: AnswerForcing | None = None,
    ledger: SavingsLedger | None = None,
    on_token: OnToken | None = None,
    keep_chunks: bool = False,
    **create_kwargs: Any,
) -> ExitStream:
    """``iter_chat`` for the legacy Completions API (``logprobs=policy.top_k`` is added)."""
    run = _Run(
        client, "completions", policy, force_answer, forcing, ledger, on_token, keep_chunks, create_kwargs
    )
    return ExitStream(client, run)


def aiter_completion(
    client: openai.AsyncOpenAI,
    *,
    policy: ExitPolicy,
    force_answer: bool | None = None,
    forcing: AnswerForcing | None = None,
    ledger: SavingsLedger | None = None,
    on_token: OnToken | None = None,
    keep_chunks: bool = False,
    **create_kwargs: Any,
) -> AsyncExitStream:
    """Async twin of ``iter_completion``."""
    run = _Run(
        client, "completions", policy, force_answer, forcing, ledger, on_token, keep_chunks, create_kwargs
    )
    return AsyncExitStream(client, run)


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
