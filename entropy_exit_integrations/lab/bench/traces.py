"""Recorded traces: the file format, a converter from raw stream chunks, and forced answers.

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
are skipped and counted. ``AnswerChangedAnswers`` resolves the answer at each exit point: from
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
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entropy_exit_integrations.core.audit import same_final_answer
from entropy_exit_integrations.core.calibration import ANSWER_CHANGED, ExitAnswer
from entropy_exit_integrations.core.tokens import Phase, TokenLogprob
from entropy_exit_integrations.errors import EntropyExitError

from .datasets import Problem
from .files import json_lines
from .graders import grade
from .replay import Trace
from .runner import RunConfig, force_answer, forcing_for, run_all

__all__ = [
    "AnswerChangedAnswers",
    "ForcedCache",
    "TraceFiles",
    "convert_chunks",
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


Compare = Callable[[str, str], bool]


class AnswerChangedAnswers:
    """The answer at an exit point of a production trace, judged against the run's own answer.

    The ``calibrate_stream`` resolver for traces labelled ``answer_changed``: an exit is
    harmless when ``compare(forced answer, full answer)`` holds (default ``same_final_answer``,
    the engine's audit comparison), the full answer being the trace's ``reference``. The forced
    answer comes from the trace's ``forced`` field (an audited call's, at its decision), the
    cache, or ``client`` (one short request, cached); without any of them it is unknown (and
    counts as harmful). An exit whose cut text already ends on the full run's final number keeps
    it, with nothing forced (as ``ExitAnswers`` does for graded traces).
    """

    def __init__(
        self,
        traces: Sequence[Trace],
        *,
        client: Any = None,
        config: RunConfig | None = None,
        cache: ForcedCache | None = None,
        compare: Compare = same_final_answer,
    ) -> None:
        self.traces = traces
        self.client = client
        self.config = config
        self.cache = cache or ForcedCache()
        self.compare = compare
        self.counts = {"in text": 0, "in the traces": 0, "cached": 0, "forced": 0, "unknown": 0}

    def _in_text(self, trace: Trace, index: int) -> bool:
        answer = trace.split_prefix(index)[1]
        return any(c.isdigit() for c in answer) and same_final_answer(answer, trace.reference)

    def __call__(self, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], ExitAnswer]:
        """Answers for (trace index, exit token index) pairs."""
        found: dict[tuple[int, int], ExitAnswer] = {}
        todo: list[tuple[int, int]] = []
        for i, index in pairs:
            trace = self.traces[i]
            if self._in_text(trace, index):
                found[(i, index)] = ExitAnswer(True, 0)
                self.counts["in text"] += 1
                continue
            entry = self.cache.get(trace, index + 1, forcing_for(trace.kind).cue)
            if entry is None:
                todo.append((i, index))
                continue
            found[(i, index)] = ExitAnswer(self.compare(entry["answer"], trace.reference), entry["tokens"])
            self.counts["in the traces" if str(index + 1) in trace.forced else "cached"] += 1
        if todo and self.client is not None and self.config is not None:
            client, config = self.client, self.config

            def work(pair: tuple[int, int]) -> tuple[str, int]:
                return force_answer(client, config, self.traces[pair[0]], pair[1])

            try:
                answers = run_all(todo, work, config, "forcing answers")
            finally:
                self.cache.save()
            for (i, index), (answer, used) in zip(todo, answers):
                trace = self.traces[i]
                self.cache.put(trace, index + 1, answer=answer, tokens=used, cue=forcing_for(trace.kind).cue)
                found[(i, index)] = ExitAnswer(self.compare(answer, trace.reference), used)
                self.counts["forced"] += 1
            self.cache.save()
        elif todo:
            self.counts["unknown"] += len(todo)
            for pair in todo:
                found[pair] = ExitAnswer(None)
        return found

    def describe(self) -> str:
        return ", ".join(f"{value} {name}" for name, value in self.counts.items() if value)
