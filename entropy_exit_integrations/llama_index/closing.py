"""Really stopping a LlamaIndex stream: capture the httpx response and close it.

Closing llama-index-llms-openai's generator leaves the openai SDK's HTTP response open (kept
alive by reference cycles), so the server goes on generating. So an httpx ``response`` hook on
the clients of ``http_clients()`` records each response, when its headers arrive, in the
``ResponseCapture`` active in the current context (a ``ContextVar``: concurrent calls never see
each other's); on exit the integration closes what it captured. Outside a capture it does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import httpx

ACTIVE: ContextVar[ResponseCapture | None] = ContextVar("entropy_exit_llama_index_capture", default=None)


def record_response(response: httpx.Response) -> None:
    """httpx sync ``response`` hook: hand the response to the active capture, if any."""
    capture = ACTIVE.get()
    if capture is not None:
        capture.responses.append(response)


async def arecord_response(response: httpx.Response) -> None:
    """httpx async ``response`` hook (AsyncClient hooks must be coroutines)."""
    record_response(response)


class ResponseCapture:
    """The httpx responses opened while ``active()``; ``close``/``aclose`` shut them."""

    def __init__(self) -> None:
        self.responses: list[httpx.Response] = []

    @contextlib.contextmanager
    def active(self) -> Iterator[ResponseCapture]:
        token = ACTIVE.set(self)
        try:
            yield self
        finally:
            ACTIVE.reset(token)

    def close(self) -> None:
        """Close every captured sync response (a no-op for ones already closed)."""
        responses, self.responses = self.responses, []
        for response in responses:
            if isinstance(response.stream, httpx.SyncByteStream):
                with contextlib.suppress(Exception):
                    response.close()
            else:  # an async response in a sync context: keep it for aclose
                self.responses.append(response)

    async def aclose(self) -> None:
        """Close every captured response, sync or async."""
        responses, self.responses = self.responses, []
        for response in responses:
            with contextlib.suppress(Exception):
                if isinstance(response.stream, httpx.AsyncByteStream):
                    await response.aclose()
                else:
                    response.close()


def http_clients(**kwargs: Any) -> tuple[httpx.Client, httpx.AsyncClient]:
    """An ``(http_client, async_http_client)`` pair with the capture hooks installed: pass them to
    the inner LLM's public ``http_client=``/``async_http_client=`` (``EntropyExitLLM``'s example)
    so that an exit closes the HTTP response and the server stops. ``kwargs`` go to both
    clients (the openai SDK's defaults: timeouts, connection limits)."""
    import openai

    return (
        openai.DefaultHttpxClient(event_hooks={"response": [record_response]}, **kwargs),
        openai.DefaultAsyncHttpxClient(event_hooks={"response": [arecord_response]}, **kwargs),
    )
