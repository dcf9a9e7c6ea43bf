"""``LocalServer``: run llama.cpp's ``llama-server`` on a loopback port for as long as you need it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from entropy_exit_integrations.errors import ServerError

from .binary import ensure_server_binary
from .model import ensure_model
from .pins import ENV_BASE_URL, ENV_MODEL_ID, MODEL_ALIAS

# Loopback calls must not go through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_BIND_ERRORS = ("couldn't bind", "address already in use", "failed to bind")


class LocalServer:
    """A llama.cpp server process (or an existing OpenAI-compatible server) for local use.

    On ``start()`` (or entering the context, sync or async) it finds the binary and the model
    (``ensure_server_binary``, ``ensure_model``), starts ``llama-server`` on a free loopback port,
    waits for ``/health`` and reads the model id from ``/v1/models``. ``stop()`` (or leaving the
    context, also on an exception) terminates it, then kills it if it does not exit in time; a
    finalizer does the same at interpreter exit, and on Linux the server also gets SIGTERM if
    the Python process dies.

    If ``base_url`` or ``$ENTROPY_EXIT_BASE_URL`` is set, nothing is started: the object points at
    that server (e.g. your own llama.cpp or vLLM), with ``model`` from ``model_id``,
    ``$ENTROPY_EXIT_MODEL_ID`` or the server's ``/v1/models``.

    Example:
        >>> from openai import OpenAI
        >>> with LocalServer(parallel=1) as server:
        ...     client = OpenAI(base_url=server.base_url, api_key="sk-no-key")
        ...     reply = client.chat.completions.create(
        ...         model=server.model,
        ...         messages=[{"role": "user", "content": "Say hi."}],
        ...         max_tokens=5, logprobs=True, top_logprobs=20,
        ...     )
        ...     len(reply.choices[0].logprobs.content[0].top_logprobs)
        20

        The same, asynchronously, and reading the server's Prometheus metrics:

        >>> async def main() -> float:
        ...     async with LocalServer(parallel=1) as server:
        ...         return server.metrics()["llamacpp:requests_processing"]
        >>> asyncio.run(main())
        0.0
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        threads: int | None = None,
        ctx_size: int = 4096,
        parallel: int = 2,
        metrics: bool = True,
        alias: str = MODEL_ALIAS,
        extra_args: Sequence[str] = (),
        model_path: str | os.PathLike[str] | None = None,
        model_sha256: str | None = None,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        base_url: str | None = None,
        model_id: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Configure (nothing starts until ``start()``).

        Args:
            port: port to listen on; ``None`` picks a free one. A busy port raises ``ServerError``.
            host: interface to bind (loopback by default).
            threads: CPU threads (``--threads``); ``None`` means ``default_threads()``, half the
                CPUs. llama.cpp's threads synchronise by spinning, so when they do not each get a
                free core they collapse: measured on 2 busy cores, 2 threads gave 1.5-5 tokens/s
                where 1 thread gave 26-53 (uncontended, 2 threads give about 67).
            ctx_size: context size *per slot*; the server gets ``-c ctx_size * parallel``.
            parallel: number of slots, i.e. streams served at once (``-np``).
            metrics: expose Prometheus ``/metrics`` (needed by ``metrics()``/``wait_until_idle()``).
            alias: model id the server reports (``--alias``).
            extra_args: more ``llama-server`` arguments, appended as given.
            model_path: a GGUF file instead of the default SmolLM2 (used as given).
            model_sha256: expected sha256 of ``model_path`` (checked when given).
            binary: a ``llama-server`` executable instead of ``ensure_server_binary()``. Without
                ``entropy-exit setup`` having built it (and installed the model), ``start()``
                fails at once naming that command: a server never installs or compiles anything.
            startup_timeout: seconds to wait for ``/health`` to say ok.
            stop_timeout: seconds to wait after SIGTERM before SIGKILL.
            base_url: use this running OpenAI-compatible server instead of starting one.
            model_id: model id to report for ``base_url``.
            log_path: file for the server's output; default: a temporary file removed on stop.
        """
        if parallel < 1 or ctx_size < 1:
            raise ServerError(f"parallel and ctx_size must be >= 1 (got {parallel}, {ctx_size})")
        self.host = host
        self.port = port
        self.threads = threads if threads is not None else default_threads()
        self.ctx_size = ctx_size
        self.parallel = parallel
        self.metrics_enabled = metrics
        self.alias = alias
        self.extra_args = list(extra_args)
        self.model_path = Path(model_path) if model_path is not None else None
        self.model_sha256 = model_sha256
        self.binary = Path(binary) if binary is not None else None
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        external = base_url or os.environ.get(ENV_BASE_URL) or None
        self.external = external is not None
        self._model_id = model_id or (os.environ.get(ENV_MODEL_ID) or None if self.external else None)
        self._root_url = _root_of(external) if external else None
        self._log_path = Path(log_path) if log_path is not None else None
        self._own_log_dir: Path | None = None
        self._log_handle: IO[bytes] | None = None
        self._last_tail = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> LocalServer:
        """Start the server (or check the external one) and wait until it is ready.

        Returns:
            ``self``.

        Raises:
            ServerError: port in use, binary/model missing or corrupt, the process exited during
                start-up (message ends with its log tail) or ``/health`` timed out.
        """
        if self.external:
            self._model_id = self._model_id or self._fetch_model_id(timeout=10.0)
            return self
        if self.is_running:
            return self
        auto_port = self.port is None
        if not auto_port and _port_in_use(self.host, self.port):  # type: ignore[arg-type]
            raise ServerError(
                f"port {self.port} on {self.host} is already in use; pick another or pass port=None"
            )
        binary = self.binary or ensure_server_binary()
        if not Path(binary).is_file():
            raise ServerError(f"llama-server binary {str(binary)!r} does not exist")
        model = ensure_model(self.model_path, sha256=self.model_sha256)
        for attempt in range(3 if auto_port else 1):
            port = _free_port(self.host) if auto_port else self.port
            try:
                self._spawn(self.command(binary, model, port))  # type: ignore[arg-type]
                self.port = port
                self._wait_ready()
                return self
            except ServerError as exc:
                self._own_log_dir = None  # keep the log of a failed start for inspection
                self.stop()
                if not (auto_port and attempt < 2 and any(m in str(exc).lower() for m in _BIND_ERRORS)):
                    raise
                self.port = None
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server: SIGTERM, wait ``stop_timeout`` s, then SIGKILL. Safe to call twice."""
        if self.process is not None:
            self._last_tail = self.log_tail()
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._log_handle = None
        if self._own_log_dir is not None:
            shutil.rmtree(self._own_log_dir, ignore_errors=True)
            self._own_log_dir = None
            self._log_path = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalServer:
        starting = asyncio.ensure_future(asyncio.to_thread(self.start))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await starting
            await asyncio.to_thread(self.stop)
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- what callers use ---------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        """``http://host:port`` (no ``/v1``)."""
        if self._root_url is not None:
            return self._root_url
        if self.port is None:
            raise ServerError("the server has not been started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL (``.../v1``), for ``openai.OpenAI(base_url=...)``."""
        return self.root_url + "/v1"

    @property
    def model(self) -> str:
        """Model id the server reports at ``/v1/models`` (the ``alias`` for a started server)."""
        return self._model_id or self.alias

    @property
    def is_running(self) -> bool:
        """True while the started process is alive (always False for an external server)."""
        return self.process is not None and self.process.poll() is None and self._finalizer is not None

    @property
    def log_path(self) -> Path | None:
        """File holding the server's stdout and stderr (None for an external server)."""
        return self._log_path

    def log_tail(self, lines: int = 40) -> str:
        """Last ``lines`` lines of the server's log (kept after ``stop()``)."""
        if self._log_path is None or not self._log_path.exists():
            return "\n".join(self._last_tail.splitlines()[-lines:])
        with open(self._log_path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def metrics(self, timeout: float = 5.0) -> dict[str, float]:
        """The server's Prometheus ``/metrics`` as ``{name: value}`` (labels kept in the name).

        Raises:
            ServerError: metrics are disabled or the server does not answer.
        """
        status, body = _http_get(self.root_url + "/metrics", timeout)
        if status == 0:
            raise ServerError(f"no server answers at {self.root_url}")
        if status != 200:
            raise ServerError(
                f"GET /metrics answered {status}: start the server with metrics=True ({body[:200]!r})"
            )
        return _parse_metrics(body)

    def wait_until_idle(self, timeout: float = 5.0, poll_interval: float = 0.01) -> float:
        """Wait until ``llamacpp:requests_processing`` is 0; return the seconds that took.

        Raises:
            ServerError: still busy after ``timeout`` seconds.
        """
        started = time.perf_counter()
        while True:
            busy = self.metrics().get("llamacpp:requests_processing", 0.0)
            elapsed = time.perf_counter() - started
            if busy == 0:
                return elapsed
            if elapsed > timeout:
                raise ServerError(f"server still processing {busy:g} request(s) after {timeout} s")
            time.sleep(poll_interval)

    def command(self, binary: str | os.PathLike[str], model: str | os.PathLike[str], port: int) -> list[str]:
        """The ``llama-server`` command line this object runs."""
        cmd = [
            str(binary),
            "--model",
            str(model),
            "--host",
            self.host,
            "--port",
            str(port),
            "--ctx-size",
            str(self.ctx_size * self.parallel),
            "--parallel",
            str(self.parallel),
            "--alias",
            self.alias,
        ]
        cmd += ["--threads", str(self.threads)]
        if self.metrics_enabled:
            cmd.append("--metrics")
        return cmd + self.extra_args

    def __repr__(self) -> str:
        where = self._root_url or (f"{self.host}:{self.port}" if self.port else "not started")
        state = "external" if self.external else ("running" if self.is_running else "stopped")
        return f"LocalServer({where}, model={self.model!r}, {state})"

    # -- internals ----------------------------------------------------------------------------

    def _spawn(self, cmd: list[str]) -> None:
        if self._log_path is None:
            self._own_log_dir = Path(tempfile.mkdtemp(prefix="entropy-exit-server-"))
            self._log_path = self._own_log_dir / "llama-server.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self._log_path, "wb")  # noqa: SIM115 - closed by the finalizer
        self._log_handle.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log_handle.flush()
        try:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if _pdeathsig_safe() else None,
            )
        except OSError as exc:
            self._log_handle.close()
            raise ServerError(f"cannot run {cmd[0]}: {exc}") from exc
        self._finalizer = weakref.finalize(
            self, _terminate, self.process, self._log_handle, self.stop_timeout
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"llama-server exited with code {code} during start-up "
                    f"(log: {self._log_path}); last log lines:\n{self.log_tail()}"
                )
            status, _ = _http_get(self.root_url + "/health", timeout=1.0)
            if status == 200:
                self._model_id = self._fetch_model_id(timeout=5.0)
                return
            time.sleep(0.05)
        raise ServerError(
            f"llama-server did not become healthy within {self.startup_timeout} s; "
            f"last log lines:\n{self.log_tail()}"
        )

    def _fetch_model_id(self, timeout: float) -> str:
        status, body = _http_get(self.root_url + "/v1/models", timeout)
        if status != 200:
            raise ServerError(
                f"no OpenAI-compatible server answers at {self.base_url} (GET /v1/models: {status})"
            )
        try:
            return str(json.loads(body)["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ServerError(f"unexpected /v1/models answer from {self.base_url}: {body[:200]!r}") from exc


def default_threads() -> int:
    """Half the CPUs, at least 1: leaves room for the client and keeps llama.cpp from thrashing."""
    return max(1, (os.cpu_count() or 2) // 2)


def _parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition as ``{name_with_labels: value}`` (``prometheus_client``'s parser).

    A sample with labels is keyed ``name{label="value",...}`` in the order the server gave them.
    """
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return values


def _root_of(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _http_get(url: str, timeout: float) -> tuple[int, str]:
    """GET ``url`` bypassing proxies; returns (status, body), status 0 if unreachable."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _terminate(process: subprocess.Popen[Any], log_handle: IO[bytes], timeout: float) -> None:
    """SIGTERM, wait, SIGKILL, wait; then close the log file."""
    try:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
    finally:
        log_handle.close()


_LIBC: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _LIBC = ctypes.CDLL(None, use_errno=True)


def _pdeathsig_safe() -> bool:
    """PR_SET_PDEATHSIG fires when the *thread* that forked exits: use it from the main thread only."""
    return _LIBC is not None and threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send SIGTERM to the server if the Python process dies."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
