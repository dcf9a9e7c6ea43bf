"""The generators behind every call style of ``EntropyExitLLM``.

``run``/``arun`` yield the inner LLM's streamed responses as they come, stop once the policy says
so (closing the inner generator *and* the captured HTTP response), optionally stream a forced
answer, and end with one extra response carrying the whole text, the per-token logprobs and the
report.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any

from ._drive import Call
from .closing import ResponseCapture


def _pull(inner: Iterator[Any], capture: ResponseCapture) -> Iterator[Any]:
    """Iterate ``inner`` with the capture active around each step (where the request is made)."""
    while True:
        with capture.active():
            try:
                item = next(inner)
            except StopIteration:
                return
        yield item


async def _apull(inner: AsyncIterator[Any], capture: ResponseCapture) -> AsyncIterator[Any]:
    while True:
        with capture.active():
            try:
                item = await inner.__anext__()
            except StopAsyncIteration:
                return
        yield item


def _close(inner: Any, capture: ResponseCapture) -> None:
    close = getattr(inner, "close", None)
    if close is not None:
        close()
    capture.close()


async def _aclose(inner: Any, capture: ResponseCapture) -> None:
    aclose = getattr(inner, "aclose", None)
    if aclose is not None:
        await aclose()
    await capture.aclose()


def _start(call: Call) -> tuple[Any, list[Any]]:
    """Open the main stream and read its first response (where the request is made).

    A provider that refuses logprobs (llama.cpp does with tools + stream) raises
    ``LogprobsUnavailableError``, or, with ``on_missing="pass_through"``, is asked again
    without logprobs and passed through unmonitored.
    """
    for attempt in (0, 1):
        inner = None
        try:
            with call.capture.active():
                inner = call.open()
                try:
                    return inner, [next(inner)]
                except StopIteration:
                    return inner, []
        except Exception as error:
            _close(inner, call.capture)
            if attempt or not call.refused(error):
                raise
    raise AssertionError("unreachable")


async def _astart(call: Call) -> tuple[Any, list[Any]]:
    for attempt in (0, 1):
        inner = None
        try:
            with call.capture.active():
                inner = await call.aopen()
                try:
                    return inner, [await inner.__anext__()]
                except StopAsyncIteration:
                    return inner, []
        except Exception as error:
            await _aclose(inner, call.capture)
            if attempt or not call.refused(error):
                raise
    raise AssertionError("unreachable")


def run(call: Call) -> Generator[Any, None, None]:
    """The sync generator behind every sync call style."""
    inner = None
    try:
        inner, first = _start(call)
        for response in itertools.chain(first, _pull(inner, call.capture)):
            yield call.handle(response)
            if call.session.should_stop:
                break
    finally:
        _close(inner, call.capture)
    if call.wants_forcing():
        inner = None
        try:
            with call.capture.active():
                inner = call.open_forcing()
            for response in _pull(inner, call.capture):
                piece = call.handle_forced(response)
                if piece is not None:
                    yield piece
        finally:
            _close(inner, call.capture)
        piece = call.finish_forcing()
        if piece is not None:
            yield piece
    yield call.final()


async def arun(call: Call) -> AsyncGenerator[Any, None]:
    """The async generator behind every async call style."""
    inner = None
    try:
        inner, first = await _astart(call)
        for response in first:
            yield call.handle(response)
        if not call.session.should_stop:
            async for response in _apull(inner, call.capture):
                yield call.handle(response)
                if call.session.should_stop:
                    break
    finally:
        await _aclose(inner, call.capture)
    if call.wants_forcing():
        inner = None
        try:
            with call.capture.active():
                inner = await call.aopen_forcing()
            async for response in _apull(inner, call.capture):
                piece = call.handle_forced(response)
                if piece is not None:
                    yield piece
        finally:
            await _aclose(inner, call.capture)
        piece = call.finish_forcing()
        if piece is not None:
            yield piece
    yield call.final()
