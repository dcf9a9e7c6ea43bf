"""Recorded traces: the file format, converters into it (raw stream chunks, per-token top-k
lists, OpenAI/vLLM responses), and forced answers.

Traces let ``entropy-exit calibrate --traces`` and ``entropy-exit bench --traces`` run with no
model at hand: record full greedy generations anywhere (a GPU server, any client), copy the file,
calibrate and benchmark offline. Only answers forced at exit points need a model; they are cached.

Trace file (JSONL), schema ``entropy-exit-trace`` version 1
-----------------------------------------------------------
One JSON object per line, one full generation (never cut early) per line:

======================  ========  ===============================================================
field                   required  meaning
======================  ========  ===============================================================
``schema``, ``version`` yes*      ``"entropy-exit-trace"``, ``1`` (*rows without them are read as
                                  the unversioned format of earlier releases, which is the same)
``problem_id``          yes       a stable id of the question
``tokens``              yes       every generated token, in order: ``[text, logprob or null,
                                  [top tokens], [top logprobs], "reasoning" | "answer"]``
                                  (natural-log logprobs; ``[]`` when none were sent)
``text``                yes       the answer text (the content; reasoning goes in ``reasoning``)
``correct``             yes       the full run's final answer, graded: ``true`` or ``false`` (a
                                  JSON boolean; anything else is refused, naming the line)
``question``            no        the question (used to force answers when ``messages`` is absent)
``reference``           no        the reference answer (needed to grade forced answers)
``kind``                no        grader: ``"numeric"`` (default) or ``"math"``
``reasoning``           no        reasoning text
``finish_reason``       no        the server's (default ``"stop"``)
``wall_time_s``         no        request time, seconds (default 0)
``model``, ``k``,       no        model id, top logprobs requested, generation budget
``max_tokens``
``messages``            no        the request's chat messages (default: the kind's system prompt
                                  and the question)
``forced``              no        answers forced after an exit, keyed by tokens kept (exit index
                                  + 1) as a string: ``{"41": {"answer": " 42", "tokens": 3,
                                  "cue": "\\n\\nFinal answer:"}}``
``label``               no        ``"answer_changed"``: a production trace written by a trace
                                  sink (``ExitOptions(trace_sink=...)``), graded against its own
                                  full answer (``correct`` true, ``reference`` the run's text)
``ended``               no        how the call ended: ``"server_done"`` (a full generation),
                                  ``"we_closed"`` (an exit cut it) or ``"broken"``
======================  ========  ===============================================================

Fields not in this table are ignored (a newer writer's, or your own). A file may be
gzip-compressed (read transparently; ``save_traces`` compresses when the name ends in ``.gz``).
Logprobs that are not finite numbers (NaN) make their token unknown, as in a live run;
calibration reports how many there were and refuses a trace without any usable one.

Forced answers are also cached in a JSON file (``ForcedCache``), keyed by question, trace and
tokens kept, so a rerun asks the model nothing it was asked before.

Production traces
-----------------
A trace sink writes every monitored call with ``"label": "answer_changed"``: production has no
gold answer, so each is graded against its own full answer (all "correct" by construction) and an
exit is harmful when its forced answer differs from the full run's answer (the engine's audit
comparison, ``core.audit.same_final_answer``: the final number, else normalised text).
``read_trace_files`` reads such files (with their rotated ``.1``, ``.2`` files when given) and
keeps only the full generations: calls an exit cut (``"ended"`` other than ``"server_done"``)
are skipped and counted. ``answers.AnswerChangedAnswers`` resolves the answer at each exit point: from
the trace's ``forced`` field (an audit's forced answer), the cache, or the model.

The label is conservative: an exit that turns a wrong answer into a right one, or rewords a right
one, also counts as harmful, so a threshold recalibrated on it errs toward exiting less.

Raw chunks
----------
``convert_chunks`` turns OpenAI-format ``chat.completion.chunk`` objects saved as JSON lines (one
chunk per line, exactly the SSE ``data:`` payloads, any client) into traces. A file may hold many
streams: consecutive chunks with the same ``id`` are one stream. A line may also wrap its chunk as
``{"chunk": {...}, "problem_id": ..., "question": ..., "reference": ..., "kind": ...,
"messages": [...]}``; otherwise streams are paired in order with the given problems.

Other shapes: ``convert_file`` (``entropy-exit convert FILE --out TRACES``)
--------------------------------------------------------------------------
``convert_file(path, shape)`` reads three shapes (``shape="auto"`` tells them apart by the first
row) into ``Converted``: the traces, and what the conversion had to say.

* ``"chunks"``: the raw stream chunks above.
* ``"topk"``: one generation per line, with per-token top-k lists::

    {"problem_id": "q1", "question": "3 + 4?", "reference": "7", "correct": true,
     "text": "The answer is 7.", "reasoning": "...",
     "tokens": [{"token": "The", "logprob": -0.1,
                 "top_logprobs": [{"token": "The", "logprob": -0.1}, {"token": "A", "logprob": -2.4}]},
                ...]}

  A token may also be the trace format's list, ``[text, logprob, [top tokens], [top logprobs]]``
  with an optional fifth ``"reasoning"`` or ``"answer"``; an object token may carry ``"phase"``.
  ``text`` defaults to the answer tokens' text; ``<think>...</think>`` in it marks reasoning.
* ``"openai"``: non-streaming ``chat.completion`` responses (OpenAI, vLLM, llama.cpp, SGLang)
  requested with ``logprobs=true, top_logprobs=k``, one per line or one JSON document (an object,
  or a list of them). Tokens come from ``choices[0].logprobs.content[]``, the text from
  ``choices[0].message.content``; ``reasoning_content`` (or ``reasoning``) is the reasoning, and
  the tokens before the content are tagged as reasoning when the logprobs cover both. To name the
  question, wrap each response: ``{"response": {...}, "problem_id": ..., "question": ...,
  "reference": ..., "kind": ..., "correct": ..., "messages": [...]}``.

Typed and strict, for ``topk`` and ``openai`` rows: ``correct`` is a JSON boolean (``"no"``,
``1`` or ``null`` are refused); without it the text is graded against ``reference`` (from the row,
or from the problem it is paired with in order, ``--dataset``), and a row with neither is
refused. Logprobs are numbers (a string or a boolean is refused) and natural logs (a positive one
is refused: probabilities are not logprobs). A token whose logprob or top logprobs are NaN or
infinite is kept as an *unknown* token (no candidates: the policy reads it as uncertain) and
counted (``Converted.non_finite``, printed by the CLI); a row with no finite token is refused.
Every refusal is an ``EntropyExitError`` naming the file, the line and the fix (the CLI prints it
as one line and exits 2). Files may be gzip-compressed (read transparently).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entropy_exit_integrations.core.calibration import ANSWER_CHANGED
from entropy_exit_integrations.core.tokens import Phase, TokenLogprob, normalised_token
from entropy_exit_integrations.errors import EntropyExitError

from .datasets import Problem
from .files import json_lines, open_text
from .graders import grade
from .replay import Trace

__all__ = [
    "SHAPES",
    "Converted",
    "ForcedCache",
    "TraceFiles",
    "convert_chunks",
    "convert_file",
    "convert_responses",
    "convert_topk",
    "problems_of",
    "read_chunk_streams",
    "read_trace_files",
]

#: What the engine writes in ``"ended"`` for a generation the server finished.
FULL_GENERATION = "server_done"

_THINK = re.compile(r"<think>(.*?)(</think>|$)", re.DOTALL)


def problems_of(traces: Sequence[Trace]) -> list[Problem]:
    """The problems the traces answer (id, question, reference, grader kind)."""
    return [Problem(t.problem_id, t.question, t.reference, t.kind) for t in traces]


def read_chunk_streams(path: str | Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Group a JSONL file of chunks (plain or gzip) into streams: (metadata of the stream's first
    line, chunks)."""
    streams: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    current: str | None = None
    for number, row in json_lines(path):
        if not isinstance(row, dict):
            raise EntropyExitError(f"{path}:{number}: a chunk must be a JSON object")
        meta: dict[str, Any] = {}
        if "chunk" in row:
            meta = {k: v for k, v in row.items() if k != "chunk"}
            row = row["chunk"]
            if not isinstance(row, dict):
                raise EntropyExitError(f'{path}:{number}: "chunk" must be a JSON object')
        stream_id = str(row.get("id", ""))
        if not streams or stream_id != current or (meta and meta != streams[-1][0]):
            streams.append((meta, []))
            current = stream_id
        streams[-1][1].append(row)
    return streams


def _split_think(tokens: list[TokenLogprob]) -> list[TokenLogprob]:
    """Tag tokens inside inline ``<think>...</think>`` as reasoning."""
    text = "".join(t.token for t in tokens)
    if "<think>" not in text:
        return tokens
    inside = [False] * (len(text) + 1)
    for match in _THINK.finditer(text):
        for position in range(match.start(), match.end()):
            inside[position] = True
    tagged, position = [], 0
    for token in tokens:
        phase = Phase.REASONING if inside[position] else token.phase
        tagged.append(token if phase is token.phase else token._replace(phase=phase))
        position += len(token.token)
    return tagged


def _stream_to_trace(meta: dict[str, Any], chunks: list[dict[str, Any]], problem: Problem | None) -> Trace:
    from entropy_exit_integrations.providers.openai_chat import parse_chat_chunk

    tokens: list[TokenLogprob] = []
    content: list[str] = []
    reasoning: list[str] = []
    finish = "stop"
    model = None
    pending: list[TokenLogprob] = []
    for chunk in chunks:
        parts = parse_chat_chunk(chunk)
        if parts.content or parts.reasoning:
            # tokens that came without text (llama.cpp sends the first in the role chunk) take
            # the phase of the next text
            phase = (
                parts.tokens[0].phase
                if parts.tokens
                else (Phase.ANSWER if parts.content else Phase.REASONING)
            )
            tokens.extend(t._replace(phase=phase) for t in pending)
            tokens.extend(parts.tokens)
            pending = []
        else:
            pending.extend(parts.tokens)
        content.append(parts.content)
        reasoning.append(parts.reasoning)
        finish = parts.finish_reason or finish
        model = model or chunk.get("model")
    tokens = _split_think(tokens + pending)
    text = "".join(content)
    if "<think>" in text:
        reasoning.append("".join(m.group(1) for m in _THINK.finditer(text)))
        text = _THINK.sub("", text).lstrip()
    if not tokens:
        raise EntropyExitError(f"stream {chunks[0].get('id')!r} carries no logprobs: request top_logprobs")
    problem_id = meta.get("problem_id") or (problem.id if problem else str(chunks[0].get("id", "stream")))
    question = meta.get("question") or (problem.question if problem else "")
    reference = str(meta.get("reference", problem.answer if problem else ""))
    kind = meta.get("kind") or (problem.kind if problem else "numeric")
    correct = bool(reference) and grade(kind, text, reference)
    k = max((len(t.top_logprobs) for t in tokens), default=0)
    return Trace(
        str(problem_id),
        str(question),
        reference,
        str(kind),
        text,
        str(finish),
        tokens,
        correct,
        float(meta.get("wall_time_s", 0.0)),
        "".join(reasoning),
        model=meta.get("model") or model,
        k=k or None,
        max_tokens=meta.get("max_tokens"),
        messages=meta.get("messages"),
    )


def convert_chunks(path: str | Path, problems: Sequence[Problem] | None = None) -> list[Trace]:
    """Traces from raw ``chat.completion.chunk`` JSON lines (see the module docstring).

    ``problems`` pairs streams with questions in order when the lines do not say which question
    they answer; each stream's text is graded against its reference answer.
    """
    streams = read_chunk_streams(path)
    if problems is not None and len(problems) < len(streams):
        raise EntropyExitError(
            f"{path}: {len(streams)} streams but only {len(problems)} problems to pair them with"
        )
    return [
        _stream_to_trace(meta, chunks, problems[index] if problems is not None else None)
        for index, (meta, chunks) in enumerate(streams)
    ]


class ForcedCache:
    """Answers forced at exit points, per (question, trace, tokens kept), kept in a JSON file.

    Lookups also read the ``forced`` field of the traces themselves. ``save`` writes the file
    (atomically); nothing is written when nothing new was forced.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as error:
                data = {"error": str(error)}
            if not isinstance(data, dict) or data.get("schema") != "entropy-exit-forced":
                raise EntropyExitError(
                    f"{self.path} is not a forced-answer cache: delete it or pass another --forced-cache"
                )
            self.entries = dict(data.get("entries", {}))

    @staticmethod
    def key(trace: Trace, kept: int) -> str:
        digest = hashlib.sha256(
            json.dumps(
                [trace.model, trace.messages, trace.question, [t.token for t in trace.tokens]]
            ).encode()
        ).hexdigest()[:16]
        return f"{trace.problem_id}|{digest}|{kept}"

    def get(self, trace: Trace, kept: int, cue: str) -> dict[str, Any] | None:
        """The forced answer after ``kept`` tokens of ``trace`` with this cue, if known."""
        for entry in (trace.forced.get(str(kept)), self.entries.get(self.key(trace, kept))):
            if entry is not None and entry.get("cue", cue) == cue:
                return entry
        return None

    def put(self, trace: Trace, kept: int, *, answer: str, tokens: int, cue: str) -> dict[str, Any]:
        entry = {
            "answer": answer,
            "tokens": int(tokens),
            "cue": cue,
            "problem_id": trace.problem_id,
            "kept": kept,
        }
        self.entries[self.key(trace, kept)] = entry
        self._dirty = True
        return entry

    def save(self) -> Path | None:
        if self.path is None or not self._dirty:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(self.path.suffix + ".tmp")
        payload = {"schema": "entropy-exit-forced", "version": 1, "entries": self.entries}
        temporary.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        temporary.replace(self.path)
        self._dirty = False
        return self.path

    def attach(self, traces: Iterable[Trace]) -> None:
        """Copy cached answers into the traces' ``forced`` fields (to save them with the traces)."""
        for trace in traces:
            prefix = self.key(trace, 0).rsplit("|", 1)[0] + "|"
            for key, entry in self.entries.items():
                if key.startswith(prefix):
                    trace.forced[key.rsplit("|", 1)[1]] = {k: entry[k] for k in ("answer", "tokens", "cue")}


@dataclass
class TraceFiles:
    """Traces read from one or more files (``read_trace_files``).

    Attributes:
        traces: the full generations, in file order.
        label: ``"answer_changed"`` (production traces from a trace sink) or ``"graded"``.
        skipped: production calls left out, by reason (``"ended we_closed"``: an exit cut the
            call, so it is not a full generation; ``"no tokens"``: nothing was monitored).
        per_file: traces read from each file.
    """

    traces: list[Trace]
    label: str
    skipped: Counter[str] = field(default_factory=Counter)
    per_file: dict[str, int] = field(default_factory=dict)

    @property
    def production(self) -> bool:
        return self.label == ANSWER_CHANGED

    def describe_skipped(self) -> str:
        """``"3 cut calls (ended we_closed: not full generations)"``, or ``""``."""
        parts = []
        for reason, count in sorted(self.skipped.items()):
            if reason.startswith("ended "):
                parts.append(f"{count} cut calls ({reason}: not full generations)")
            else:
                parts.append(f"{count} calls with {reason}")
        return ", ".join(parts)


def read_trace_files(paths: Sequence[str | Path]) -> TraceFiles:
    """Read trace files (plain or gzip): recorded ones, or a trace sink's with its rotated files.

    Production rows (``"label": "answer_changed"``) whose call an exit cut (``"ended"`` other than
    ``"server_done"``) or that carry no tokens are skipped and counted. A malformed line raises
    ``EntropyExitError`` naming it; so do files that mix production and graded traces, or a label
    this version does not know.
    """
    traces: list[Trace] = []
    labels: set[str] = set()
    skipped: Counter[str] = Counter()
    per_file: dict[str, int] = {}
    for path in paths:
        before = len(traces)
        for number, row in json_lines(path):
            try:
                if not isinstance(row, dict):
                    raise ValueError("a trace must be a JSON object")
                label = row.get("label", "graded")
                if label not in ("graded", ANSWER_CHANGED):
                    raise ValueError(
                        f"unknown label {label!r}: this version reads 'answer_changed' (a trace sink's) "
                        "or no label (graded against a reference answer)"
                    )
                labels.add(label)
                if label == ANSWER_CHANGED:
                    ended = row.get("ended", FULL_GENERATION)
                    if ended != FULL_GENERATION:
                        skipped[f"ended {ended}"] += 1
                        continue
                    if not row.get("tokens"):
                        skipped["no tokens"] += 1
                        continue
                traces.append(Trace.from_json(row))
            except (ValueError, TypeError, KeyError) as error:
                raise EntropyExitError(f"{path}:{number}: {error}") from error
        per_file[str(path)] = len(traces) - before
    if len(labels) > 1:
        raise EntropyExitError(
            "the files mix production traces (label answer_changed, graded against their own answer) "
            "with graded ones (no label): calibrate them separately"
        )
    return TraceFiles(traces, labels.pop() if labels else "graded", skipped, per_file)


# -- other shapes: per-token top-k lists, OpenAI/vLLM responses ----------------------------------

#: Shapes ``convert_file`` reads (``"auto"`` tells them apart by the first row).
SHAPES = ("auto", "chunks", "topk", "openai")

#: A logprob above this is not a natural-log probability (rounding gives tiny positives).
_POSITIVE = 1e-3


@dataclass
class Converted:
    """What ``convert_file`` made: the traces, the shape it read and what it had to say.

    Attributes:
        traces: one per generation, in file order.
        shape: ``"chunks"``, ``"topk"`` or ``"openai"``.
        non_finite: tokens whose logprobs held NaN or infinity: kept as *unknown* tokens (no
            candidates), which the policy reads as uncertain and calibration counts.
        graded: traces whose ``correct`` was graded here against their reference answer (the
            rest said ``correct`` themselves).
    """

    traces: list[Trace]
    shape: str
    non_finite: int = 0
    graded: int = 0

    def describe(self) -> str:
        """One line: traces, tokens, correct, and any non-finite logprobs."""
        tokens = sum(len(t.tokens) for t in self.traces)
        right = sum(t.correct for t in self.traces)
        line = f"{len(self.traces)} traces ({tokens} tokens, {right} correct) read as {self.shape}"
        if self.graded:
            line += f"; {self.graded} graded against their reference"
        if self.non_finite:
            line += (
                f"; {self.non_finite} tokens had non-finite logprobs (NaN or infinity): kept as unknown "
                "tokens (no candidates), which the policy reads as uncertain"
            )
        if self.traces and right in (0, len(self.traces)):
            line += (
                f"; note: all {len(self.traces)} are {'right' if right else 'wrong'}, and calibration "
                "needs both right and wrong answers"
            )
        return line


class _BadRow(ValueError):
    """A row that cannot be converted (the caller adds the file and line)."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadRow(f"{what} must be a number, got {value!r}")
    return float(value)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _BadRow(f"{what} must be a string, got {value!r}")
    return value


def _token(
    text: Any, logprob: Any, tops: Any, top_values: Any, phase: Any, where: str
) -> tuple[TokenLogprob, bool]:
    """One checked token and whether its values were non-finite (then it is kept unknown)."""
    token = _text(text, f"{where} text")
    value = None if logprob is None else _number(logprob, f"{where} logprob")
    if not isinstance(tops, list) or not isinstance(top_values, list):
        raise _BadRow(f"{where}: the top candidates must be lists")
    if len(tops) != len(top_values):
        raise _BadRow(f"{where}: {len(tops)} top tokens but {len(top_values)} top logprobs")
    texts = [_text(t, f"{where} top token") for t in tops]
    values = [_number(v, f"{where} top logprob") for v in top_values]
    if phase is None:
        tagged = Phase.ANSWER
    elif phase in ("reasoning", "answer"):
        tagged = Phase(phase)
    else:
        raise _BadRow(f'{where} phase must be "reasoning" or "answer", got {phase!r}')
    numbers = values + ([] if value is None else [value])
    if not all(math.isfinite(v) for v in numbers):
        return TokenLogprob(token, None, (), (), tagged), True
    if any(v > _POSITIVE for v in numbers):
        raise _BadRow(
            f"{where}: logprob {max(numbers)} is positive: logprobs are natural logs (<= 0); "
            "if these are probabilities, write math.log(p)"
        )
    return normalised_token(token, value, texts, values, tagged), False


def _openai_token(entry: Any, where: str) -> tuple[TokenLogprob, bool]:
    """A token from an OpenAI ``logprobs.content`` entry: ``{"token", "logprob", "top_logprobs"}``."""
    if not isinstance(entry, dict):
        raise _BadRow(f"{where} must be an object with token, logprob and top_logprobs, got {entry!r}")
    if "token" not in entry:
        raise _BadRow(f"{where} has no token field")
    tops = entry.get("top_logprobs") or []
    if not isinstance(tops, list) or not all(isinstance(t, dict) for t in tops):
        raise _BadRow(f'{where} top_logprobs must be a list of {{"token": ..., "logprob": ...}}')
    missing = [t for t in tops if "token" not in t or "logprob" not in t]
    if missing:
        raise _BadRow(f"{where} top_logprobs entry {missing[0]!r} needs token and logprob")
    return _token(
        entry["token"],
        entry.get("logprob"),
        [t["token"] for t in tops],
        [t["logprob"] for t in tops],
        entry.get("phase"),
        where,
    )


def _tokens(rows: Any, where: str) -> tuple[list[TokenLogprob], int]:
    """Tokens from a ``tokens`` list of OpenAI-style objects or ``[text, logprob, [tops],
    [top logprobs](, phase)]`` lists; returns them and how many were non-finite."""
    if not isinstance(rows, list) or not rows:
        raise _BadRow(f"{where} must be a non-empty list of tokens")
    tokens: list[TokenLogprob] = []
    bad = 0
    for index, row in enumerate(rows):
        at = f"{where}[{index}]"
        if isinstance(row, dict):
            token, non_finite = _openai_token(row, at)
        elif isinstance(row, list) and len(row) in (4, 5):
            token, non_finite = _token(*row[:4], row[4] if len(row) == 5 else None, at)
        else:
            raise _BadRow(
                f'{at} must be {{"token", "logprob", "top_logprobs": [{{"token", "logprob"}}]}} or '
                f"[text, logprob, [top tokens], [top logprobs]], got {row!r}"
            )
        tokens.append(token)
        bad += non_finite
    if bad == len(tokens):
        raise _BadRow(f"{where}: no token has finite logprobs; record them with logprobs and top_logprobs")
    return tokens, bad


def _tag_reasoning(tokens: list[TokenLogprob], content: str, reasoning: str) -> list[TokenLogprob]:
    """Phases for one response's tokens: inline ``<think>`` blocks, or, when the server split the
    reasoning into its own field, the tokens before the content (the content ends the text)."""
    tokens = _split_think(tokens)
    if not reasoning or any(t.phase is Phase.REASONING for t in tokens):
        return tokens
    text = "".join(t.token for t in tokens).rstrip()
    answer = content.strip()
    if answer and not text.endswith(answer):
        return tokens  # the logprobs cover the content only: all answer tokens
    boundary = len(text) - len(answer)
    tagged, position = [], 0
    for token in tokens:
        tagged.append(token._replace(phase=Phase.REASONING) if position < boundary else token)
        position += len(token.token)
    return tagged


def _meta(row: dict[str, Any], problem: Problem | None, fallback_id: str) -> dict[str, Any]:
    """problem_id, question, reference, kind, messages and the other optional trace fields of a
    row, typed, with the paired problem filling what the row does not say."""
    problem_id = row.get("problem_id", problem.id if problem else None)
    if problem_id is None:
        problem_id = fallback_id
    if isinstance(problem_id, bool) or not isinstance(problem_id, (str, int)):
        raise _BadRow(f"problem_id must be a string or a whole number, got {problem_id!r}")
    reference = row.get("reference", problem.answer if problem else "")
    if isinstance(reference, bool) or not isinstance(reference, (str, int, float)):
        raise _BadRow(f"reference must be a string or a number, got {reference!r}")
    kind = row.get("kind", problem.kind if problem else "numeric")
    if kind not in ("numeric", "math"):
        raise _BadRow(f'kind must be "numeric" or "math", got {kind!r}')
    messages = row.get("messages")
    if messages is not None and not (
        isinstance(messages, list) and all(isinstance(m, dict) for m in messages)
    ):
        raise _BadRow("messages must be a list of chat messages (objects with role and content)")
    wall = row.get("wall_time_s", 0.0)
    wall = _number(wall, "wall_time_s")
    if not math.isfinite(wall) or wall < 0:
        raise _BadRow(f"wall_time_s must be a finite number of seconds >= 0, got {wall!r}")
    max_tokens = row.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise _BadRow(f"max_tokens must be a whole number, got {max_tokens!r}")
    return {
        "problem_id": str(problem_id),
        "question": _text(row.get("question", problem.question if problem else ""), "question"),
        "reference": str(reference),
        "kind": kind,
        "messages": messages,
        "wall_time_s": wall,
        "max_tokens": max_tokens,
    }


def _correct(row: dict[str, Any], text: str, meta: dict[str, Any]) -> tuple[bool, bool]:
    """(correct, graded here): the row's own ``correct`` (a JSON boolean, nothing else), else
    the text graded against the reference."""
    if "correct" in row:
        if not isinstance(row["correct"], bool):
            raise _BadRow(
                f"correct must be true or false (a JSON boolean), got {row['correct']!r}; "
                "grade the answer and write true or false, or leave correct out and give reference"
            )
        return row["correct"], False
    if not meta["reference"]:
        raise _BadRow(
            "neither correct nor reference: add correct (true or false) or the reference answer "
            "(or --dataset to pair the rows in order with its questions)"
        )
    return grade(meta["kind"], text, meta["reference"]), True


def _topk_trace(row: Any, problem: Problem | None, index: int) -> tuple[Trace, int, bool]:
    if not isinstance(row, dict):
        raise _BadRow("a row must be a JSON object with tokens and text")
    if "tokens" not in row:
        raise _BadRow("no tokens field (per-token top-k logprobs)")
    tokens, bad = _tokens(row["tokens"], "tokens")
    text = (
        _text(row.get("text", ""), "text")
        if "text" in row
        else "".join(t.token for t in tokens if t.phase is Phase.ANSWER)
    )
    reasoning = _text(row.get("reasoning", ""), "reasoning")
    if "<think>" in text:
        tokens = _split_think(tokens)
        reasoning += "".join(m.group(1) for m in _THINK.finditer(text))
        text = _THINK.sub("", text).lstrip()
    meta = _meta(row, problem, f"row{index + 1}")
    correct, graded = _correct(row, text, meta)
    model = row.get("model")
    finish = _text(row.get("finish_reason", "stop"), "finish_reason")
    model_id = _text(model, "model") if model is not None else None
    return _trace(meta, text, finish, tokens, correct, reasoning, model_id), bad, graded


def _response_trace(row: Any, problem: Problem | None, index: int) -> tuple[Trace, int, bool]:
    if not isinstance(row, dict):
        raise _BadRow('a row must be a chat.completion object, or {"response": {...}, ...}')
    outer = row
    response = row.get("response", row)
    if not isinstance(response, dict):
        raise _BadRow('"response" must be a chat.completion object')
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _BadRow("no choices: expected a chat.completion response (choices[0].message, .logprobs)")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise _BadRow(
            "choices[0].message is missing: a streamed response? convert its chunks with --from chunks"
        )
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    _text(content, "choices[0].message.content")
    _text(reasoning, "choices[0].message.reasoning_content")
    logprobs = choice.get("logprobs")
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not entries:
        raise _BadRow(
            "choices[0].logprobs.content is empty: request logprobs=true and top_logprobs=k (e.g. 20)"
        )
    tokens, bad = _tokens(entries, "choices[0].logprobs.content")
    tokens = _tag_reasoning(tokens, content, reasoning)
    text = content
    if "<think>" in text:
        reasoning += "".join(m.group(1) for m in _THINK.finditer(text))
        text = _THINK.sub("", text).lstrip()
    meta = _meta(outer, problem, str(response.get("id") or f"row{index + 1}"))
    correct, graded = _correct(outer, text, meta)
    model = response.get("model")
    finish = str(choice.get("finish_reason") or "stop")
    return _trace(meta, text, finish, tokens, correct, reasoning, str(model) if model else None), bad, graded


def _trace(
    meta: dict[str, Any],
    text: str,
    finish: str,
    tokens: list[TokenLogprob],
    correct: bool,
    reasoning: str,
    model: str | None,
) -> Trace:
    """A converted generation as a ``Trace`` (its question's fields from ``_meta``)."""
    return Trace(
        meta["problem_id"],
        meta["question"],
        meta["reference"],
        meta["kind"],
        text,
        finish,
        tokens,
        correct,
        meta["wall_time_s"],
        reasoning,
        model=model,
        k=max(t.k for t in tokens) or None,
        max_tokens=meta["max_tokens"],
        messages=meta["messages"],
    )


def _rows(path: str | Path) -> list[tuple[str, Any]]:
    """(location, row) of a JSONL file, or of one JSON document (an object or a list of them)
    such as a saved response; plain or gzip."""
    try:
        return [(f"{path}:{number}", row) for number, row in json_lines(path)]
    except EntropyExitError as error:
        if "not JSON" not in str(error):
            raise
        with open_text(path) as handle:
            try:
                document = json.load(handle)
            except ValueError:
                raise error from None
    if isinstance(document, list):
        return [(f"{path}: item {i + 1}", row) for i, row in enumerate(document)]
    return [(f"{path}", document)]


def _shape_of(row: Any) -> str:
    if isinstance(row, dict):
        if "chunk" in row or row.get("object") == "chat.completion.chunk":
            return "chunks"
        inner = row.get("response", row)
        if isinstance(inner, dict) and "choices" in inner:
            choices = inner["choices"]
            first = choices[0] if isinstance(choices, list) and choices else {}
            return "chunks" if isinstance(first, dict) and "delta" in first else "openai"
        if "tokens" in row:
            return "topk"
    raise _BadRow(
        "cannot tell the shape of this row: expected raw stream chunks, a row with tokens (per-token "
        "top-k lists) or a chat.completion response; name it with --from chunks|topk|openai"
    )


_FIXES = {
    "topk": 'a row is {"problem_id", "text", "correct", "tokens": [...]} (see entropy-exit convert --help)',
    "openai": 'a row is a chat.completion response, or {"response": ..., "problem_id", "reference"}',
}


def convert_file(
    path: str | Path, shape: str = "auto", problems: Sequence[Problem] | None = None
) -> Converted:
    """Traces from a file of recorded generations in any shape the module docstring lists.

    Args:
        path: the file (JSONL, or one JSON document for responses; plain or gzip).
        shape: ``"chunks"``, ``"topk"``, ``"openai"``, or ``"auto"`` (told from the first row).
        problems: questions to pair with rows that do not say which they answer, in order.

    Raises:
        EntropyExitError: a row that cannot be converted, naming the file, the line and the fix.
    """
    if shape not in SHAPES:
        raise EntropyExitError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    rows = _rows(path)
    if not rows:
        raise EntropyExitError(f"{path}: no rows: the file is empty")
    if shape == "auto":
        try:
            shape = _shape_of(rows[0][1])
        except _BadRow as error:
            raise EntropyExitError(f"{rows[0][0]}: {error}") from None
    if shape == "chunks":
        traces = convert_chunks(path, problems)
        bad = sum(
            1 for t in traces for token in t.tokens
            if not all(math.isfinite(v) for v in (*token.top_logprobs, token.logprob or 0.0))
        )  # fmt: skip
        return Converted(traces, shape, non_finite=bad)
    if problems is not None and len(problems) < len(rows):
        raise EntropyExitError(
            f"{path}: {len(rows)} rows but only {len(problems)} problems to pair them with: "
            "give a --dataset with as many questions, or name them in the rows"
        )
    build = _topk_trace if shape == "topk" else _response_trace
    converted = Converted([], shape)
    for index, (where, row) in enumerate(rows):
        try:
            trace, bad, graded = build(row, problems[index] if problems is not None else None, index)
        except _BadRow as error:
            raise EntropyExitError(f"{where}: {error}; {_FIXES[shape]}") from None
        converted.traces.append(trace)
        converted.non_finite += bad
        converted.graded += graded
    return converted


def convert_topk(path: str | Path, problems: Sequence[Problem] | None = None) -> list[Trace]:
    """Traces from rows with per-token top-k lists (see the module docstring)."""
    return convert_file(path, "topk", problems).traces


def convert_responses(path: str | Path, problems: Sequence[Problem] | None = None) -> list[Trace]:
    """Traces from saved OpenAI/vLLM chat.completion responses (see the module docstring)."""
    return convert_file(path, "openai", problems).traces
