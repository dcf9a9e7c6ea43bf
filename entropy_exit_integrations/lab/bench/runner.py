"""Drive any OpenAI-compatible endpoint: record traces, run live policies, force answers.

Requests run in a thread pool (``concurrency``), each retried with backoff on transport and
server errors, under a rich progress bar when ``progress=True``. Greedy decoding
(``temperature=0``, fixed ``seed``) keeps replays and live runs on the same tokens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from entropy_exit_integrations.core.policy import ExitPolicy
from entropy_exit_integrations.errors import EntropyExitError, StreamInterrupted
from entropy_exit_integrations.forcing import AnswerForcing

from .datasets import Problem, messages_for
from .graders import grade
from .replay import Outcome, Trace, answer_of

T = TypeVar("T")
R = TypeVar("R")
RECORD_POLICY = ExitPolicy(threshold=0.0, min_tokens=0)
"""Threshold 0 never exits: a full trace is recorded."""
STOP = threading.Event()
"""Set (by ``bench.table.graceful_stop`` on SIGTERM / SIGINT) to stop a run cleanly: ``run_all``
starts no new item, lets the ones in flight finish (their answers are saved) and then raises
``KeyboardInterrupt``; ``check_stop`` raises it before a request is sent. Nothing already asked
is lost, so a rerun asks nothing twice."""


def check_stop() -> None:
    """Raise ``KeyboardInterrupt`` when a stop was asked for (call before sending a request)."""
    if STOP.is_set():
        raise KeyboardInterrupt


@dataclass(frozen=True)
class RunConfig:
    """What every request of a run shares."""

    model: str
    max_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    system_prompt: str | None = None
    concurrency: int = 2
    retries: int = 3
    progress: bool = True

    def create_kwargs(self, problem: Problem, **overrides: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages_for(problem, self.system_prompt),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }
        kwargs.update(overrides)
        return kwargs


def _transient() -> tuple[type[BaseException], ...]:
    import httpx
    import openai

    return (openai.APIError, httpx.HTTPError, StreamInterrupted, ConnectionError, TimeoutError)


def with_retries(call: Callable[[], R], retries: int) -> R:
    """Run ``call``; on a transport or server error wait 0.5, 1, 2 ... s and try again."""
    transient = _transient()
    for attempt in range(retries + 1):
        try:
            return call()
        except transient:
            if attempt == retries:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def run_all(items: Sequence[T], work: Callable[[T], R], config: RunConfig, label: str) -> list[R]:
    """``work`` over every item with ``config.concurrency`` threads, in input order."""
    results: list[Any] = [None] * len(items)
    skipped: list[int] = []

    def one(index: int) -> None:
        if STOP.is_set():  # a stop was asked: start nothing new
            skipped.append(index)
            return
        results[index] = with_retries(lambda: work(items[index]), config.retries)

    def check_skipped() -> None:  # every item done: the results stand, even after a stop
        if skipped:
            raise KeyboardInterrupt

    if not config.progress:
        with ThreadPoolExecutor(max(1, config.concurrency)) as pool:
            list(pool.map(one, range(len(items))))
        check_skipped()
        return results
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar, ThreadPoolExecutor(max(1, config.concurrency)) as pool:
        task = bar.add_task(label, total=len(items))
        for _ in pool.map(one, range(len(items))):
            bar.advance(task)
    check_skipped()
    return results


def record_traces(client: Any, problems: Sequence[Problem], config: RunConfig) -> list[Trace]:
    """One full greedy generation per problem with top-20 logprobs, graded."""
    from entropy_exit_integrations.openai import stream_chat

    def work(problem: Problem) -> Trace:
        check_stop()
        started = time.perf_counter()
        result = stream_chat(client, policy=RECORD_POLICY, **config.create_kwargs(problem))
        if not result.tokens:
            raise EntropyExitError(f"{problem.id}: the server returned no tokens with logprobs")
        tokens = list(result.tokens)
        from_server = result.report.usage_source == "server"
        return Trace(
            problem.id,
            problem.question,
            problem.answer,
            problem.kind,
            result.text,
            result.finish_reason,
            tokens,
            grade(problem.kind, result.text, problem.answer),
            time.perf_counter() - started,
            result.reasoning,
            model=config.model,
            k=RECORD_POLICY.top_k,
            max_tokens=config.max_tokens,
            messages=messages_for(problem, config.system_prompt),
            server_tokens=result.usage["completion_tokens"] if from_server else None,
        )

    return run_all(problems, work, config, "recording traces")


def run_live(
    client: Any,
    problems: Sequence[Problem],
    traces: Sequence[Trace],
    policy: ExitPolicy,
    config: RunConfig,
    forcing: AnswerForcing | None = None,
) -> tuple[list[Outcome], float, float]:
    """The policy live with answer forcing; returns outcomes, wall time and replay agreement.

    Agreement is the share of problems where the live exit point equals the replayed one.
    """
    from entropy_exit_integrations.openai import stream_chat

    from .rules import PolicyRule

    rule = PolicyRule("live", policy)

    def work(pair: tuple[Problem, Trace]) -> tuple[Outcome, bool]:
        problem, trace = pair
        result = stream_chat(
            client,
            policy=policy,
            force_answer=True,
            forcing=forcing or forcing_for(problem.kind),
            **config.create_kwargs(problem, **({"messages": trace.messages} if trace.messages else {})),
        )
        exited = result.finish_reason == "entropy_exit"
        index = result.decision.token_index if exited else None
        full = "".join(t.token for t in result.tokens)
        complete = answer_of(problem.kind, full) == answer_of(problem.kind, trace.text)
        correct = grade(problem.kind, result.text, problem.answer)
        forced = result.report.forced_answer_tokens
        outcome = Outcome(
            problem.id,
            exited,
            index,
            len(result.tokens),
            correct,
            trace.correct,
            complete or not exited,
            result.forced_answer,
            forced,
            correct == trace.correct if result.forced_answer is not None else None,
        )
        return outcome, index == rule.exit_index(trace.tokens)

    started = time.perf_counter()
    pairs = run_all(list(zip(problems, traces)), work, config, "live policy")
    agreement = sum(ok for _, ok in pairs) / max(len(pairs), 1)
    return [o for o, _ in pairs], time.perf_counter() - started, agreement


def forcing_for(kind: str) -> AnswerForcing:
    """Answer forcing sized for the grader: a number needs a few tokens, LaTeX a few more."""
    return AnswerForcing(max_tokens=16 if kind == "numeric" else 48)


def force_answer(
    client: Any, config: RunConfig, trace: Trace, exit_index: int, forcing: AnswerForcing | None = None
) -> tuple[str, int]:
    """Ask the model for its final answer after the first ``exit_index + 1`` tokens of ``trace``.

    The same request ``stream_chat`` makes after a live exit (``AnswerForcing.chat_request``), on
    the trace's own messages. Returns the answer text and the tokens it cost.
    """
    check_stop()
    forcing = forcing or forcing_for(trace.kind)
    problem = Problem(trace.problem_id, trace.question, trace.reference, trace.kind)
    messages = trace.messages or messages_for(problem, config.system_prompt)
    reasoning, text = trace.split_prefix(exit_index)
    history, extra, echo = forcing.chat_request(
        messages,
        reasoning=reasoning,
        text=text,
        inline_think=False,
        base_url=str(getattr(client, "base_url", "") or ""),
    )
    response = client.chat.completions.create(
        model=config.model,
        messages=history,
        max_tokens=forcing.max_tokens,
        temperature=0.0,
        seed=config.seed,
        extra_body=extra or None,
        stop=list(forcing.stop) or None,
    )
    answer = response.choices[0].message.content or ""
    if echo and answer.startswith(echo):
        answer = answer[len(echo) :]
    used = response.usage.completion_tokens if response.usage else len(answer.split())
    return answer, int(used)


def grade_forced(trace: Trace, exit_index: int, answer: str, forcing: AnswerForcing | None = None) -> bool:
    """Whether the cut text followed by the answer cue and the forced answer grades right."""
    forcing = forcing or forcing_for(trace.kind)
    return grade(trace.kind, trace.prefix(exit_index) + forcing.cue + answer, trace.reference)


def force_answers(
    client: Any,
    traces: Sequence[Trace],
    outcomes: Sequence[Outcome],
    config: RunConfig,
    problems: Sequence[Problem] | None = None,
    forcing: AnswerForcing | None = None,
) -> list[Outcome]:
    """For every exit, ask the model for its answer given the prefix (one short request each)."""

    def work(item: tuple[Trace, Outcome]) -> Outcome:
        trace, outcome = item
        if not outcome.exited or outcome.exit_index is None:
            return outcome
        answer, used = force_answer(client, config, trace, outcome.exit_index, forcing)
        correct = grade_forced(trace, outcome.exit_index, answer, forcing)
        return forced_outcome(outcome, correct, used, answer)

    return run_all(list(zip(traces, outcomes)), work, config, "forcing answers")


def forced_outcome(outcome: Outcome, correct: bool, tokens: int, answer: str | None = None) -> Outcome:
    """``outcome`` (an exit) completed by its forced answer."""
    return Outcome(
        outcome.problem_id,
        True,
        outcome.exit_index,
        outcome.tokens_used,
        correct,
        outcome.baseline_correct,
        outcome.answer_complete,
        answer if answer is not None else "",
        int(tokens),
        correct == outcome.baseline_correct,
    )
