"""The answer at an exit point of a recorded trace (already in the text, cached, or forced).

Shared by the ``calibrate``/``bench`` commands and the probe replay (``bench.probes``), which
import it from here rather than from each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from entropy_exit_integrations.core.audit import same_final_answer
from entropy_exit_integrations.core.calibration import ExitAnswer

from .replay import Outcome, Trace, answer_of
from .runner import RunConfig, force_answer, forced_outcome, forcing_for, grade_forced, run_all
from .traces import ForcedCache

__all__ = ["AnswerChangedAnswers", "ExitAnswers", "request_key", "same_request"]

Compare = Callable[[str, str], bool]


def request_key(trace: Trace, kept: int) -> tuple[str, str]:
    """What the forcing request after ``kept`` tokens sends of the generation: the reasoning and
    the text without trailing whitespace (``AnswerForcing.chat_request`` strips it)."""
    reasoning, text = trace.split_prefix(kept - 1)
    return reasoning, text.rstrip()


def same_request(cache: ForcedCache, trace: Trace, kept: int, cue: str) -> dict[str, Any] | None:
    """A cached answer to the identical request at a neighbouring prefix length (prefixes that
    differ only by trailing whitespace send the same request): asked once, not twice."""
    want = request_key(trace, kept)
    for step in (-1, 1):
        count = kept + step
        while 0 < count <= len(trace.tokens) and request_key(trace, count) == want:
            entry = cache.get(trace, count, cue)
            if entry is not None:
                return entry
            count += step
    return None


class ExitAnswers:
    """The answer at an exit point of a recorded trace: already in the text, cached, or forced.

    An exit whose cut text already holds the full run's final answer (in the answer phase) keeps
    the full run's grade. Otherwise the answer is forced (``AnswerForcing``, the request a live
    exit makes): from the traces' ``forced`` fields or the cache file, else from ``client`` when
    there is one, else unknown. Forced answers are written to the cache as they arrive.
    """

    def __init__(
        self,
        traces: Sequence[Trace],
        *,
        client: Any = None,
        config: RunConfig | None = None,
        cache: ForcedCache | None = None,
    ) -> None:
        self.traces = traces
        self.client = client
        self.config = config
        self.cache = cache or ForcedCache()
        self.counts = {"in text": 0, "cached": 0, "forced": 0, "unknown": 0}

    def _complete(self, trace: Trace, index: int) -> bool:
        """The cut text already holds the full run's final answer: nothing to force."""
        final = answer_of(trace.kind, trace.text)
        return final is not None and answer_of(trace.kind, trace.split_prefix(index)[1]) == final

    def _judge(self, trace: Trace, index: int, answer: str) -> bool | None:
        """Whether the exit's forced ``answer`` is right (graded against the reference)."""
        return grade_forced(trace, index, answer)

    def _source(self, trace: Trace, index: int) -> str:
        """Where a known answer came from, for ``counts``."""
        return "cached"

    def __call__(self, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], ExitAnswer]:
        """Answers for (trace index, exit token index) pairs (the ``calibrate_stream`` resolver)."""
        found: dict[tuple[int, int], ExitAnswer] = {}
        todo: list[tuple[int, int]] = []
        for i, index in pairs:
            trace = self.traces[i]
            if self._complete(trace, index):
                found[(i, index)] = ExitAnswer(trace.correct, 0)
                self.counts["in text"] += 1
                continue
            cue = forcing_for(trace.kind).cue
            entry = self.cache.get(trace, index + 1, cue) or same_request(self.cache, trace, index + 1, cue)
            if entry is not None and trace.reference:
                found[(i, index)] = ExitAnswer(self._judge(trace, index, entry["answer"]), entry["tokens"])
                self.counts[self._source(trace, index)] += 1
            else:
                todo.append((i, index))
        if todo and self.client is not None and self.config is not None:
            client, config = self.client, self.config

            lock = threading.Lock()

            def work(pair: tuple[int, int]) -> tuple[str, int]:
                trace = self.traces[pair[0]]
                answer, used = force_answer(client, config, trace, pair[1])
                with lock:  # cached as it arrives: a stopped run keeps every answer it was sent
                    self.cache.put(
                        trace, pair[1] + 1, answer=answer, tokens=used, cue=forcing_for(trace.kind).cue
                    )
                return answer, used

            first: dict[tuple[int, str, str], tuple[int, int]] = {}
            for i, index in todo:  # identical requests in one batch: ask the first only
                first.setdefault((i, *request_key(self.traces[i], index + 1)), (i, index))
            unique = list(dict.fromkeys(first.values()))
            try:
                asked = dict(zip(unique, run_all(unique, work, config, "forcing answers")))
            finally:
                self.cache.save()
            for i, index in todo:
                trace = self.traces[i]
                answer, used = asked[first[(i, *request_key(trace, index + 1))]]
                known = self._judge(trace, index, answer) if trace.reference else None
                found[(i, index)] = ExitAnswer(known, used)
                self.counts["forced" if (i, index) in asked else "cached"] += 1
            self.cache.save()
        elif todo:
            self.counts["unknown"] += len(todo)
            for pair in todo:
                found[pair] = ExitAnswer(None)
        return found

    def outcomes(self, outcomes: Sequence[Outcome]) -> list[Outcome] | None:
        """Exits completed with their answers; None when any answer is unknown."""
        pairs = [(i, o.exit_index) for i, o in enumerate(outcomes) if o.exited and o.exit_index is not None]
        answers = self(pairs)
        if any(a.correct is None for a in answers.values()):
            return None
        result = list(outcomes)
        for (i, _), answer in answers.items():
            result[i] = forced_outcome(outcomes[i], bool(answer.correct), answer.forced_tokens)
        return result

    def describe(self) -> str:
        return ", ".join(f"{value} {name}" for name, value in self.counts.items() if value)


class AnswerChangedAnswers(ExitAnswers):
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
        super().__init__(traces, client=client, config=config, cache=cache)
        self.compare = compare
        self.counts = {"in text": 0, "in the traces": 0, "cached": 0, "forced": 0, "unknown": 0}

    def _complete(self, trace: Trace, index: int) -> bool:
        answer = trace.split_prefix(index)[1]
        return any(c.isdigit() for c in answer) and same_final_answer(answer, trace.reference)

    def _judge(self, trace: Trace, index: int, answer: str) -> bool | None:
        return self.compare(answer, trace.reference)

    def _source(self, trace: Trace, index: int) -> str:
        return "in the traces" if str(index + 1) in trace.forced else "cached"
