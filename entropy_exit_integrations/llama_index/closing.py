"""Really stopping a LlamaIndex stream: capture the httpx response and close it.

llama-index-llms-openai iterates the openai SDK's stream inside its own generator; closing that
generator leaves the HTTP response open (the SDK stream is kept alive by reference cycles), so
the server goes on generating. The fix used here: an httpx ``response`` event hook on the client
that the LLM's openai client uses. The hook runs when the response headers arrive, before the
body is read, and records the response in the ``ResponseCapture`` active in the current context
(a ``ContextVar``, so concurrent calls in threads or asyncio tasks never see each other's
responses). On exit the integration closes what it captured; the server sees the disconnect.
Outside a capture the hook does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import httpx

_ACTIVE: ContextVar[ResponseCapture | None] = ContextVar("entropy_exit_llama_index_capture", default=None)


def record_response(response: httpx.Response) -> None:
    """httpx sync ``response`` hook: hand the response to the active capture, if any."""
    capture = _ACTIVE.get()
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
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

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
    """An ``(http_client, async_http_client)`` pair with the capture hooks installed.

    Pass them to ``OpenAI``/``OpenAILike`` yourself when you build the LLM; ``EntropyExitLLM``
    otherwise installs the hooks itself (``install_hooks``). ``kwargs`` go to both clients (the
    openai SDK's defaults: timeouts, connection limits, redirects).
    """
    return _sync_client(**kwargs), _async_client(**kwargs)


def _add_hook(client: Any, hook: Any) -> bool:
    if not isinstance(client, (httpx.Client, httpx.AsyncClient)):
        return False
    hooks = client.event_hooks
    if hook not in hooks.get("response", []):
        client.event_hooks = {**hooks, "response": [*hooks.get("response", []), hook]}
    return True


def install_hooks(llm: Any) -> bool:
    """Make an openai-SDK based LlamaIndex LLM (``OpenAI``, ``OpenAILike``...) capturable.

    Adds the hook to the httpx client the LLM's openai client already has, or to the
    ``http_client``/``async_http_client`` it was given, or gives it hooked clients. Returns
    False for an LLM that does not talk through an openai SDK client (its streams are then
    closed only by closing its generator).
    """
    if not hasattr(llm, "_http_client") or not hasattr(llm, "_async_http_client"):
        return False
    installed = False
    for client_attr, http_attr, hook, make in (
        ("_client", "_http_client", record_response, _sync_client),
        ("_aclient", "_async_http_client", arecord_response, _async_client),
    ):
        sdk_client = getattr(llm, client_attr, None)
        if sdk_client is not None and _add_hook(getattr(sdk_client, "_client", None), hook):
            installed = True
        own = getattr(llm, http_attr, None)
        if own is not None:
            installed = _add_hook(own, hook) or installed
        elif sdk_client is None:
            setattr(llm, http_attr, make())
            installed = True
    return installed


def _sync_client(**kwargs: Any) -> httpx.Client:
    import openai

    return openai.DefaultHttpxClient(event_hooks={"response": [record_response]}, **kwargs)


def _async_client(**kwargs: Any) -> httpx.AsyncClient:
    import openai

    return openai.DefaultAsyncHttpxClient(event_hooks={"response": [arecord_response]}, **kwargs)
