"""Traces from production: every monitored call written in the package's trace format.

``ExitOptions(trace_sink="calls.jsonl")`` (or a ``TraceSink``, or any callable taking a dict)
writes one JSON line per finished call, audited or not, in the ``entropy-exit-trace`` format
that ``entropy-exit calibrate --traces`` reads: the per-token top-k logprobs, the text, the
reasoning, the usage and the request's messages; for an audited call also the decision index
and both answers (``audit``) and the audit's forced answer (``forced``, keyed by tokens kept).

Production has no gold answer: a trace is graded against its own full answer (``"label":
"answer_changed"``, ``correct: true``, ``reference`` = the run's answer), so an exit counts as
harmful when the answer it would have returned differs from the full run's. That label is
conservative: an exit that changes a wrong answer into a right one, or rewords a right one,
also counts as harmful, so a threshold recalibrated on it errs toward exiting less.

Only calls the server finished (``"ended": "server_done"``) are full generations; cut calls are
written too (``"ended": "we_closed"``) for the record, and calibration skips them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .core.tokens import TokenLogprob

TRACE_SCHEMA = "entropy-exit-trace"
TRACE_VERSION = 1
LABEL_ANSWER_CHANGED = "answer_changed"
"""The harm label of a production trace: its reference is its own full answer."""

_log = logging.getLogger(__name__)


def token_to_json(token: TokenLogprob) -> list[Any]:
    """``[text, logprob or null, [top tokens], [top logprobs], phase]``: a token in a trace."""
    return [token.token, token.logprob, list(token.top_tokens), list(token.top_logprobs), token.phase.value]


def problem_id(messages: Sequence[dict[str, Any]], prompt: str | None) -> str:
    """A stable id of the question: a hash of the request's messages (or prompt)."""
    data = json.dumps(list(messages) if messages else prompt or "", sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


class TraceSink:
    """Appends trace lines to a file, thread and task safe, rotating it by size.

    Args:
        path: the JSONL file (its folder is created).
        max_bytes: rotate once the file is larger: ``calls.jsonl`` becomes ``calls.jsonl.1``
            (and ``.1`` becomes ``.2``..., up to ``backups``).
        backups: rotated files kept.

    Each call writes one line under a lock (a short blocking write, also from async code). A
    failing write is logged and never breaks the monitored call.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_bytes: int = 64 * 2**20, backups: int = 3
    ) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError(f"TraceSink: max_bytes >= 1 and backups >= 0, got {max_bytes}, {backups}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()

    def __call__(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                    self._rotate()
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(line)
            except OSError:
                _log.warning(
                    "entropy_exit trace sink %s failed; the call is unaffected", self.path, exc_info=True
                )

    def _rotate(self) -> None:
        if self.backups == 0:
            self.path.unlink()
            return
        for index in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            newer = self.path.with_name(f"{self.path.name}.{index - 1}") if index > 1 else self.path
            if newer.exists():
                newer.replace(older)


TraceSinkLike = TraceSink | Callable[[dict[str, Any]], Any]


def as_sink(value: Any) -> TraceSinkLike | None:
    """A sink from what ``ExitOptions(trace_sink=...)`` was given: a path, a sink or a callable."""
    if value is None or callable(value):
        return value
    if isinstance(value, (str, os.PathLike)):
        return TraceSink(value)
    raise TypeError(
        f"ExitOptions: trace_sink must be a path, a TraceSink or a callable, got {type(value).__name__}"
    )


def write_quietly(sink: TraceSinkLike, record: dict[str, Any]) -> None:
    """Hand ``record`` to ``sink``; a sink's failure is logged, never raised into the call."""
    try:
        sink(record)
    except Exception:  # observability must never break a call
        _log.warning("entropy_exit trace sink failed; the call is unaffected", exc_info=True)
