"""The two loops of the package: carry out what the engine says, over an integration's transport.

``MonitoredCall`` (the sans-IO engine) decides; ``drive`` (sync) and ``adrive`` (async) are the
only places that open, read and close streams. An integration writes a *transport* (how its
client opens a ``RequestSpec``, turns a chunk into ``ChunkParts`` and closes a stream) and turns
what the driver yields into its framework's types::

    for out in drive(call, transport):
        if out.result is not None:      # the last item: the ExitResult
            ...
        elif out.chunk is not None:     # a chunk of the main stream, with the text to show
            ...
        else:                           # text released by the engine (held back, forced)
            ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Generator, Iterator
from typing import Any, NamedTuple, Protocol, TypeVar

from .engine import Close, ExitResult, MonitoredCall, Open, Read, RequestSpec
from .providers.parts import ChunkParts
from .session import TextDelta

C = TypeVar("C")


class Transport(Protocol[C]):
    """How one integration's client carries out the engine's requests (sync)."""

    def open(self, spec: RequestSpec) -> Iterator[C]:
        """Send the request; the stream of its chunks (``next()`` reads one)."""
        ...

    def parts(self, chunk: C) -> ChunkParts:
        """What the engine needs of one chunk."""
        ...

    def close(self, stream: Iterator[C]) -> None:
        """Close the stream, and its HTTP response, so the server stops generating."""
        ...


class AsyncTransport(Protocol[C]):
    """Async twin of ``Transport``."""

    def open(self, spec: RequestSpec) -> Awaitable[AsyncIterator[C]]: ...

    def parts(self, chunk: C) -> ChunkParts: ...

    def close(self, stream: AsyncIterator[C]) -> Awaitable[Any]: ...


class Output(NamedTuple):
    """One step of a driven call, for the integration to pass on.

    Attributes:
        chunk: a chunk of the main stream (None for text the engine released).
        deltas: the text pieces to show (answer or reasoning; ``forced`` marks forced answer).
        result: the ``ExitResult``, on the last item only.
    """

    chunk: Any
    deltas: list[TextDelta]
    result: ExitResult | None = None


def drive(call: MonitoredCall, transport: Transport[C]) -> Generator[Output, None, None]:
    """Run ``call`` over ``transport`` to its result (the last item). Closing this generator
    early closes every open stream."""
    streams: dict[str, Any] = {}
    try:
        while True:
            action = call.next_action()
            if type(action) is Read:
                role = action.role
                try:
                    chunk = next(streams[role])
                except StopIteration:
                    call.ended(role)
                    continue
                except Exception as error:
                    _close_quietly(transport, streams.pop(role))
                    call.failed(role, error)
                    continue
                deltas = call.received(role, transport.parts(chunk))
                if role == "main":
                    yield Output(chunk, deltas)
                elif deltas:
                    yield Output(None, deltas)
            elif type(action) is Open:
                role = action.spec.role
                try:
                    streams[role] = transport.open(action.spec)
                except Exception as error:
                    call.failed(role, error)
                    continue
                call.opened(role)
            elif type(action) is Close:
                stream = streams.pop(action.role, None)
                if stream is not None:
                    transport.close(stream)
                deltas = call.closed(action.role)
                if deltas:
                    yield Output(None, deltas)
            else:
                yield Output(None, [], call.finish())
                return
    finally:
        for stream in streams.values():
            _close_quietly(transport, stream)


async def adrive(call: MonitoredCall, transport: AsyncTransport[C]) -> AsyncGenerator[Output, None]:
    """Async twin of ``drive``."""
    streams: dict[str, Any] = {}
    try:
        while True:
            action = call.next_action()
            if type(action) is Read:
                role = action.role
                try:
                    chunk = await anext(streams[role])
                except StopAsyncIteration:
                    call.ended(role)
                    continue
                except Exception as error:
                    await _aclose_quietly(transport, streams.pop(role))
                    call.failed(role, error)
                    continue
                deltas = call.received(role, transport.parts(chunk))
                if role == "main":
                    yield Output(chunk, deltas)
                elif deltas:
                    yield Output(None, deltas)
            elif type(action) is Open:
                role = action.spec.role
                try:
                    streams[role] = await transport.open(action.spec)
                except Exception as error:
                    call.failed(role, error)
                    continue
                call.opened(role)
            elif type(action) is Close:
                stream = streams.pop(action.role, None)
                if stream is not None:
                    await transport.close(stream)
                deltas = call.closed(action.role)
                if deltas:
                    yield Output(None, deltas)
            else:
                yield Output(None, [], await call.afinish())
                return
    finally:
        for stream in streams.values():
            await _aclose_quietly(transport, stream)


def _close_quietly(transport: Transport[Any], stream: Any) -> None:
    with contextlib.suppress(Exception):
        transport.close(stream)


async def _aclose_quietly(transport: AsyncTransport[Any], stream: Any) -> None:
    with contextlib.suppress(Exception):
        await transport.close(stream)
