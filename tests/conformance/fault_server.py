"""A fault-injecting OpenAI-compatible SSE server for the conformance tests.

A real HTTP server on 127.0.0.1 (stdlib ``ThreadingHTTPServer`` in a thread) that serves
``POST /v1/chat/completions`` as a server-sent-event stream, the way OpenAI, vLLM and llama.cpp do:
``data: {chunk}\\n\\n`` lines in a chunked HTTP/1.1 body, then ``data: [DONE]``. Every request
pops the next ``Script`` from a queue (the main stream, then the forcing request...), and the
server records what it received and what it managed to send:

* ``Served.body``: the request's JSON body;
* ``Served.chunks_sent``: script chunks written before the end, the fault or the client's close;
* ``Served.disconnected``: the client closed the connection before the script's end (seen as
  EOF on the socket, or a broken pipe / reset on write);
* ``Served.completed``: the whole script went out, ended the way the script says.

Faults (indices are positions in ``Script.chunks``, checked before that chunk is sent):

* ``close_after=N``: N chunks, then the HTTP body ends cleanly (zero-length chunk): no
  ``finish_reason`` chunk, no usage, no ``[DONE]``. Transport-wise nothing is wrong.
* ``invalid_json_at=N``: a ``data:`` line that is not JSON goes out before chunk N.
* ``reset_at=N``: N chunks, a short pause, then the socket is aborted
  (``SO_LINGER`` 0, close: the client gets a TCP reset).
* ``error_event_at=N``: N chunks, then ``data: {"error": {...}}`` (what vLLM/OpenAI send when
  generation fails mid-stream), then the body ends.
* ``stall_at=N``: N chunks, then silence for ``stall_s`` seconds (ended early when the client
  goes away), then the rest.

Server behaviours a script can take on:

* ``reject_field="a.b"``: a server that does not know request field ``a.b`` (the OpenAI API with
  ``stream_options.continuous_usage_stats``): a request that has it gets HTTP 400 naming it, in
  the OpenAI API's error shape, and the script stays queued for the next request.
* ``continuous_usage=True``: vLLM's ``continuous_usage_stats``: when the request asks for it,
  every chunk carries ``usage`` with the prompt tokens and the completion tokens so far (a
  recorded chunk keeps its own); when it does not, chunks with choices carry none.

The builders (``token_chunk``, ``finish_chunk``, ``usage_chunk``, ``tool_call_chunk``,
``role_chunk``) write chunks in llama.cpp's shape: one token per chunk, ``bytes`` null, the
sampled token among its own ``top_logprobs``.
"""

from __future__ import annotations

import json
import math
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "m"
SERVER_PROMPT_TOKENS = 17
"""``prompt_tokens`` of the server's usage block: not what any client-side estimate gives."""

CONFIDENT_LOGPROB = -0.0005
"""Sampled logprob of a confident token; its 4 alternatives are at -9..-12 (about 0.01 bits)."""


# -- chunk builders ----------------------------------------------------------------------------


def _chunk(
    delta: dict[str, Any], *, logprobs: list[dict[str, Any]] | None = None, finish_reason: str | None = None
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [choice],
    }


def token_entry(
    text: str,
    *,
    confident: bool | None = True,
    k: int = 5,
    nan: bool = False,
    bad_candidates: bool = False,
) -> dict[str, Any]:
    """One ``logprobs.content`` entry.

    ``confident=True``: the sampled token has almost all the mass (~0.01 bits);
    ``False``: k equally likely candidates (log2 k bits, the maximum);
    ``None``: no candidates at all (an *unknown* token).
    ``nan``: the sampled token's logprob is NaN (the JSON literal ``NaN``), here and in its top list.
    ``bad_candidates``: every candidate but the sampled one is ``-Infinity`` or the -9999 sentinel,
    so a renormalising estimator sees one candidate with all the mass.
    """
    if nan:
        top = [{"token": text, "logprob": math.nan, "bytes": None}]
        top += [{"token": f"alt{i}", "logprob": -1.0 - i, "bytes": None} for i in range(1, k)]
        return {"token": text, "logprob": math.nan, "bytes": None, "top_logprobs": top}
    if bad_candidates:
        top = [{"token": text, "logprob": -0.7, "bytes": None}]
        top += [
            {"token": f"alt{i}", "logprob": -math.inf if i % 2 else -9999.0, "bytes": None}
            for i in range(1, k)
        ]
        return {"token": text, "logprob": -0.7, "bytes": None, "top_logprobs": top}
    if confident is None:
        return {"token": text, "logprob": -0.5, "bytes": None, "top_logprobs": []}
    if confident:
        sampled = CONFIDENT_LOGPROB
        others = [-9.0 - i for i in range(k - 1)]
    else:
        sampled = -math.log(k)
        others = [-math.log(k)] * (k - 1)
    top = [{"token": text, "logprob": sampled, "bytes": None}]
    top += [{"token": f"alt{i}", "logprob": v, "bytes": None} for i, v in enumerate(others, 1)]
    return {"token": text, "logprob": sampled, "bytes": None, "top_logprobs": top}


def token_chunk(
    text: str,
    *,
    confident: bool | None = True,
    k: int = 5,
    reasoning: bool = False,
    nan: bool = False,
    bad_candidates: bool = False,
) -> dict[str, Any]:
    """A one-token chunk: ``delta.content`` (or ``delta.reasoning_content``) plus its logprobs."""
    entry = token_entry(text, confident=confident, k=k, nan=nan, bad_candidates=bad_candidates)
    delta = {"reasoning_content": text} if reasoning else {"content": text}
    return _chunk(delta, logprobs=[entry])


def role_chunk() -> dict[str, Any]:
    """The first chunk: the assistant role, no text, no logprobs."""
    return _chunk({"role": "assistant", "content": ""})


def finish_chunk(reason: str = "stop") -> dict[str, Any]:
    """The terminal chunk: an empty delta with ``finish_reason``."""
    return _chunk({}, finish_reason=reason)


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    """OpenAI's trailing usage chunk (``choices: []``)."""
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [],
        "usage": _usage(prompt, completion),
    }


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _has_field(body: dict[str, Any], dotted: str) -> bool:
    value: Any = body
    for name in dotted.split("."):
        if not isinstance(value, dict) or name not in value:
            return False
        value = value[name]
    return True


def tool_call_chunk(
    arguments: str,
    *,
    name: str | None = None,
    call_id: str | None = None,
    confident: bool | None = True,
    k: int = 5,
) -> dict[str, Any]:
    """A piece of a streamed tool call (the first piece carries ``name`` and ``call_id``).

    It carries a logprob entry for its token (what llama.cpp sends with ``n_probs``).
    """
    function: dict[str, Any] = {"arguments": arguments}
    call: dict[str, Any] = {"index": 0, "function": function}
    if name is not None:
        function["name"] = name
        call["id"] = call_id or "call_1"
        call["type"] = "function"
    entry = token_entry(arguments or name or "", confident=confident, k=k)
    return _chunk({"tool_calls": [call]}, logprobs=[entry])


def completion_tokens_of(chunks: Iterable[dict[str, Any]]) -> int:
    """Tokens the chunks carry (one per logprob entry): what the server reports as usage."""
    total = 0
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            total += len(((choice.get("logprobs") or {}).get("content")) or [])
    return total


def text_of(chunks: Iterable[dict[str, Any]], *, reasoning: bool = False) -> str:
    """Concatenated ``content`` (or ``reasoning_content``) of the chunks."""
    key = "reasoning_content" if reasoning else "content"
    return "".join(
        (choice.get("delta") or {}).get(key) or ""
        for chunk in chunks
        for choice in chunk.get("choices") or []
    )


# -- scripts -----------------------------------------------------------------------------------


@dataclass
class Script:
    """What the server sends for one request (see the module docstring for the faults)."""

    chunks: list[dict[str, Any]]
    close_after: int | None = None
    invalid_json_at: int | None = None
    reset_at: int | None = None
    error_event_at: int | None = None
    stall_at: int | None = None
    stall_s: float = 5.0
    send_usage: bool = True
    prompt_tokens: int = SERVER_PROMPT_TOKENS
    done: bool = True
    delay_s: float = 0.0
    """Pause after each chunk from ``delay_from`` on, so a client close is seen before the end."""
    delay_from: int = 0
    reject_field: str | None = None
    continuous_usage: bool = False

    @property
    def usage(self) -> dict[str, int]:
        completion = completion_tokens_of(self.chunks)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


def script(
    tokens: Iterable[dict[str, Any]],
    *,
    finish: str | None = "stop",
    **options: Any,
) -> Script:
    """A script of a role chunk, the given chunks and (unless ``finish=None``) a finish chunk."""
    chunks = [role_chunk(), *tokens]
    if finish is not None:
        chunks.append(finish_chunk(finish))
    return Script(chunks, **options)


@dataclass
class Served:
    """What happened to one request."""

    path: str
    body: dict[str, Any]
    script: Script | None
    chunks_sent: int = 0
    disconnected: bool = False
    completed: bool = False
    rejected: bool = False
    """Answered HTTP 400 (``Script.reject_field``); the script stayed queued."""
    usage_sent: bool = False
    done_sent: bool = False
    sent_at: list[float] = field(default_factory=list, repr=False)
    """``time.monotonic()`` after each script chunk went out."""
    disconnected_at: float | None = None
    """When the server noticed the client had gone (resolution: the pause between chunks)."""
    ended: threading.Event = field(default_factory=threading.Event, repr=False)

    def mark_disconnected(self) -> None:
        self.disconnected = True
        self.disconnected_at = time.monotonic()

    def close_latency(self, chunks_read: int) -> float:
        """Seconds from sending the last chunk the client read (``chunks_read`` of them) to
        noticing that the client had closed the stream."""
        assert self.disconnected_at is not None, "the client never closed the stream"
        return self.disconnected_at - self.sent_at[chunks_read - 1]


class _Disconnected(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self.close_connection = True
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        fault = self.server.fault
        scripted = fault.pop_script() if self.path.rstrip("/").endswith("/chat/completions") else None
        if scripted is not None and scripted.reject_field and _has_field(body, scripted.reject_field):
            fault.push_front(scripted)
            served = Served(self.path, body, None, rejected=True)
            fault.record(served)
            try:
                self._unknown_parameter(scripted.reject_field)
            finally:
                served.ended.set()
            return
        served = Served(self.path, body, scripted)
        fault.record(served)
        try:
            if scripted is None:
                self._json_error(
                    500 if self.path.rstrip("/").endswith("/chat/completions") else 404,
                    f"fault server: no script queued for request {len(fault.served)} to {self.path}",
                )
                return
            self._stream(served, scripted)
        finally:
            served.ended.set()

    def _unknown_parameter(self, name: str) -> None:
        """The OpenAI API's answer to a request field it does not know."""
        error = {
            "message": f"Unknown parameter: '{name}'.",
            "type": "invalid_request_error",
            "param": name,
            "code": "unknown_parameter",
        }
        self._json_error(400, "", error=error)

    def _json_error(self, status: int, message: str, *, error: dict[str, Any] | None = None) -> None:
        data = json.dumps({"error": error or {"message": message, "type": "server_error"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    # -- the stream ---------------------------------------------------------------------------

    def _client_gone(self) -> bool:
        """EOF (or a reset) waiting on the socket: the client closed its end."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _write(self, served: Served, data: bytes) -> None:
        if self._client_gone():
            served.mark_disconnected()
            raise _Disconnected
        try:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        except OSError as error:  # BrokenPipeError, ConnectionResetError
            served.mark_disconnected()
            raise _Disconnected from error

    def _event(self, served: Served, payload: str) -> None:
        self._write(served, f"data: {payload}\n\n".encode())

    def _end_body(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def _stream(self, served: Served, s: Script) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        options = served.body.get("stream_options") or {}
        continuous = s.continuous_usage and bool(options.get("continuous_usage_stats"))
        generated = 0
        try:
            for index, chunk in enumerate(s.chunks):
                if s.close_after == index:
                    self._end_body()  # a clean end of the HTTP body, a truncated SSE stream
                    return
                if s.reset_at == index:
                    self._reset()
                    return
                if s.invalid_json_at == index:
                    self._event(served, '{"choices": [{"index": 0, "delta": {"content": "x"')
                if s.error_event_at == index:
                    error = {"error": {"message": "fault server: generation failed", "type": "server_error"}}
                    self._event(served, json.dumps(error))
                    self._end_body()
                    return
                if s.stall_at == index:
                    self._stall(served, s.stall_s)
                if continuous:
                    generated += completion_tokens_of([chunk])
                    chunk = {"usage": _usage(s.prompt_tokens, generated), **chunk}  # (a recording's own wins)
                elif s.continuous_usage and chunk.get("choices"):
                    chunk = {k: v for k, v in chunk.items() if k != "usage"}  # not asked: vLLM sends none
                self._event(served, json.dumps(chunk))
                served.chunks_sent += 1
                served.sent_at.append(time.monotonic())
                if s.delay_s and index >= s.delay_from:
                    time.sleep(s.delay_s)
            if s.send_usage:
                usage = s.usage
                self._event(
                    served, json.dumps(usage_chunk(usage["prompt_tokens"], usage["completion_tokens"]))
                )
                served.usage_sent = True
            if s.done:
                self._event(served, "[DONE]")
                served.done_sent = True
            self._end_body()
            served.completed = True
        except _Disconnected:
            return

    def _stall(self, served: Served, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.server.fault.stopping.is_set():
            if self._client_gone():
                served.mark_disconnected()
                raise _Disconnected
            time.sleep(0.01)

    def _reset(self) -> None:
        time.sleep(0.02)  # what was sent stays readable on Linux: the client reads it, then the reset
        sock = self.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fault: FaultServer


class FaultServer:
    """The server, its script queue and its log; ``start``/``stop`` (or ``with``)."""

    def __init__(self) -> None:
        self._scripts: deque[Script] = deque()
        self._lock = threading.Lock()
        self.served: list[Served] = []
        self.stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FaultServer:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.fault = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not running"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripts and log ------------------------------------------------------------------------

    def push(self, *scripts: Script, times: int = 1) -> None:
        """Queue scripts, one per expected request, in order (``times`` repeats the group)."""
        with self._lock:
            for _ in range(times):
                self._scripts.extend(scripts)

    def push_front(self, scripted: Script) -> None:
        with self._lock:
            self._scripts.appendleft(scripted)

    def pop_script(self) -> Script | None:
        with self._lock:
            return self._scripts.popleft() if self._scripts else None

    def record(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    def reset(self) -> None:
        """Forget queued scripts and the log (between tests)."""
        with self._lock:
            self._scripts.clear()
            self.served = []

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._scripts)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request body received, in order."""
        with self._lock:
            return [s.body for s in self.served]

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every request received so far has been served to its end (or its fault)."""
        deadline = time.monotonic() + timeout
        for served in list(self.served):
            served.ended.wait(max(0.0, deadline - time.monotonic()))
