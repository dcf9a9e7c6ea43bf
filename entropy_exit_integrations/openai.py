"""Early exit over the openai SDK: stream, decide, really stop, force the answer, report.

Works with ``openai.OpenAI``/``openai.AsyncOpenAI`` pointed at any OpenAI-compatible server that
streams logprobs (OpenAI, vLLM, llama.cpp, SGLang, Together, Fireworks, Ollama's ``/v1``).

Example (against the embedded server, ``entropy-exit serve``)::

    import openai
    from entropy_exit_integrations import ExitPolicy
    from entropy_exit_integrations.openai import stream_chat

    client = openai.OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="none")
    result = stream_chat(client, policy=ExitPolicy(threshold=1.0, min_tokens=8), model="smollm2",
                         messages=[{"role": "user", "content": "What is 7 + 5?"}], max_tokens=200)
    print(result.text, result.finish_reason, result.report)

On exit the HTTP response is closed (``Stream.close()``), so the server stops generating.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai

from .driver import Output, adrive, drive
from .engine import ENTROPY_EXIT, STREAM_USAGE, Api, ExitResult, MonitoredCall, RequestSpec
from .options import OPTION_NAMES, ExitOptions
from .providers.completions import parse_completion_chunk
from .providers.openai_chat import parse_chat_chunk
from .providers.reasoning import ReasoningFormat, resolve_format
from .session import TextDelta


class _Transport:
    """The openai SDK as the driver's transport: ``create(stream=True)`` and ``Stream.close()``.
    With ``AsyncOpenAI`` both return what ``adrive`` awaits."""

    def __init__(self, client: Any, api: Api, create_kwargs: dict[str, Any]) -> None:
        self.create = client.chat.completions.create if api == "chat" else client.completions.create
        self.parts = parse_chat_chunk if api == "chat" else parse_completion_chunk
        self.api = api
        self.messages = list(create_kwargs.get("messages") or [])
        self.prompt = create_kwargs.get("prompt")

    def open(self, spec: RequestSpec) -> Any:
        request = {**spec.fields, "stream": True}
        if self.api == "chat":
            request["messages"] = [*self.messages, *spec.messages]
        else:
            request["prompt"] = self.prompt if spec.prompt is None else spec.prompt
        return self.create(**request)

    def close(self, stream: Any) -> Any:
        return stream.close()


class _MonitoredStream:
    """What the sync and async streams share: the call, its transport and, at the end, its result."""

    _drive: Any  # drive or adrive

    def __init__(self, client: Any, api: Api, create_kwargs: dict[str, Any]) -> None:
        owner = "stream_chat()" if api == "chat" else "stream_completion()"
        fields = {name: create_kwargs.pop(name, None) for name in OPTION_NAMES}
        options = ExitOptions.build(create_kwargs.pop("options", None), owner, **fields)
        self._chunks: list[Any] | None = [] if create_kwargs.pop("keep_chunks", False) else None
        self._call = MonitoredCall(
            options,
            api=api,
            fields={k: v for k, v in create_kwargs.items() if k not in ("messages", "prompt", "stream")},
            messages=list(create_kwargs.get("messages") or []),
            prompt=str(create_kwargs.get("prompt") or ""),
            model=create_kwargs.get("model"),
            base_url=str(getattr(client, "base_url", "") or ""),
            usage_fields=STREAM_USAGE,
        )
        self._result: ExitResult | None = None
        self._steps = type(self)._drive(self._call, _Transport(client, api, create_kwargs))

    @property
    def result(self) -> ExitResult:
        if self._result is None:
            raise RuntimeError("the stream has not finished: iterate it to the end first")
        return self._result

    def _take(self, out: Output) -> list[TextDelta]:
        if out.result is not None:
            out.result.chunks = self._chunks
            self._result = out.result
        elif out.chunk is not None and self._chunks is not None:
            self._chunks.append(out.chunk)
        return out.deltas


class ExitStream(_MonitoredStream):
    """Iterate the text of a monitored generation as it streams; ``result`` once it ends.

    Example (``entropy-exit serve`` prints the URL)::

        client = openai.OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="none")
        messages = [{"role": "user", "content": "What is 7 + 5?"}]
        with iter_chat(client, policy=ExitPolicy(threshold=1.0), model="smollm2",
                       messages=messages, max_tokens=100) as stream:
            for delta in stream:
                print(delta.text, end="")
        print(stream.result.report)
    """

    _drive = staticmethod(drive)

    def __enter__(self) -> ExitStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP response (the server stops generating)."""
        self._steps.close()

    def __iter__(self) -> Iterator[TextDelta]:
        for out in self._steps:
            yield from self._take(out)


class AsyncExitStream(_MonitoredStream):
    """Async twin of ExitStream: ``async for delta in stream``, then ``stream.result``."""

    _drive = staticmethod(adrive)

    async def __aenter__(self) -> AsyncExitStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP response (the server stops generating)."""
        await self._steps.aclose()

    async def __aiter__(self) -> AsyncIterator[TextDelta]:
        async for out in self._steps:
            for delta in self._take(out):
                yield delta


def iter_chat(
    client: openai.OpenAI, *, options: ExitOptions | None = None, keep_chunks: bool = False, **kwargs: Any
) -> ExitStream:
    """A monitored chat stream to iterate (text deltas), with ``.result`` at the end.

    Args:
        client: an ``openai.OpenAI`` client.
        options: the call's ``ExitOptions``; or pass its fields instead (``policy=`` at least).
        keep_chunks: keep the raw chunks on the result.
        **kwargs: the option fields, and ``client.chat.completions.create``'s arguments;
            ``stream``, ``logprobs``, ``top_logprobs`` (policy.top_k) and ``stream_options``
            are added when absent. ``n`` above 1 is refused (one call per sample).
    """
    return ExitStream(client, "chat", {"options": options, "keep_chunks": keep_chunks, **kwargs})


def aiter_chat(client: openai.AsyncOpenAI, **kwargs: Any) -> AsyncExitStream:
    """Async twin of ``iter_chat`` for ``openai.AsyncOpenAI`` (the same arguments)."""
    return AsyncExitStream(client, "chat", kwargs)


def iter_completion(client: openai.OpenAI, **kwargs: Any) -> ExitStream:
    """``iter_chat`` for the legacy Completions API (``logprobs=policy.top_k`` is added)."""
    return ExitStream(client, "completions", kwargs)


def aiter_completion(client: openai.AsyncOpenAI, **kwargs: Any) -> AsyncExitStream:
    """Async twin of ``iter_completion``."""
    return AsyncExitStream(client, "completions", kwargs)


def detect_reasoning_format(
    base_url: str, *, model: str | None = None, timeout: float = 5.0
) -> ReasoningFormat:
    """The reasoning format of a server's raw output, for ``ExitOptions(reasoning_format=...)``.

    One request: llama.cpp's ``GET /props`` (read by ``format_from_props``); a server without it
    (vLLM, OpenAI) falls back to the model-family table (``format_for_model(model)``), then ``"auto"``.

    >>> detect_reasoning_format("http://127.0.0.1:8080/v1")  # doctest: +SKIP
    'auto'
    """
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        response = httpx.get(f"{root}/props", timeout=timeout)
        props = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        props = None
    return resolve_format("auto", model=model, props=props if isinstance(props, dict) else None)


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


def stream_chat(client: openai.OpenAI, **kwargs: Any) -> ExitResult:
    """Run a monitored chat completion to its end (or its early exit); see ``iter_chat``."""
    return _drain(iter_chat(client, **kwargs))


async def astream_chat(client: openai.AsyncOpenAI, **kwargs: Any) -> ExitResult:
    """Async twin of ``stream_chat``."""
    return await _adrain(aiter_chat(client, **kwargs))


def stream_completion(client: openai.OpenAI, **kwargs: Any) -> ExitResult:
    """Run a monitored legacy completion to its end (or its early exit); see ``iter_completion``."""
    return _drain(iter_completion(client, **kwargs))


async def astream_completion(client: openai.AsyncOpenAI, **kwargs: Any) -> ExitResult:
    """Async twin of ``stream_completion``."""
    return await _adrain(aiter_completion(client, **kwargs))


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
    "detect_reasoning_format",
    "iter_chat",
    "iter_completion",
    "stream_chat",
    "stream_completion",
]
