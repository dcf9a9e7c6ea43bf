"""``entropy-exit bench --table``: the README's headline comparison, on any OpenAI-compatible server.

Every row on the same questions and the same recorded greedy generations: no exit, the paper's
gate (+Refine), the risk-controlled streaming exit, the streaming exit at the probe gates,
entropy-gated probes, periodic (Dynasor-style) probes every N with k agreeing, DeepConf online,
budget cuts, a length cap at quantiles of the train traces' lengths and the fixed 0.15-bit rule
(``probes.bench_rows``), then the headroom: the upper bound (earliest prefix with a right forced
answer, probe cost not charged) and the probe-grid figure.

Live (no ``--traces``) it records the train and test traces (each appended to its JSONL file as it
finishes), calibrates the streaming and sequence profiles on the train traces, runs the gate's
extended step where the gate fails, and asks every probe and forced answer once, cached per
(question, trace, prefix length) in ``--forced-cache``. Everything lands in ``--out`` as it
arrives, so a run killed at any point (SIGTERM, Ctrl-C) and run again asks nothing twice: a stop
lets the requests in flight finish and saves their answers. Every request sent is journalled
(``requests.jsonl``: kind and a digest of the request) so the claim can be checked.

Offline (``--traces``, ``--offline``) it rebuilds the table from recorded files and asks nothing;
``benchmarks/reproduce_table.sh`` rebuilds the README's Qwen table this way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from entropy_exit_integrations.core.calibration import Calibration
from entropy_exit_integrations.core.policy import ExitPolicy
from entropy_exit_integrations.errors import EntropyExitError, PolicyError

from .datasets import load_dataset
from .replay import Trace, load_traces
from .runner import STOP, RunConfig, record_traces, run_all
from .traces import ForcedCache

__all__ = ["CountingClient", "MissingAnswers", "graceful_stop", "order_traces", "run_table"]


class MissingAnswers(EntropyExitError):
    """A probe or forced answer the rows need is in neither the traces nor the cache, and there is
    no server to ask (``--offline`` or ``--traces`` without ``--base-url``)."""


Log = Any


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """SIGTERM / SIGINT set ``runner.STOP`` (a second SIGINT interrupts at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if STOP.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        STOP.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        STOP.clear()


class _Completions:
    def __init__(self, owner: CountingClient) -> None:
        self._owner = owner

    def create(self, **kwargs: Any) -> Any:
        self._owner.log(kwargs)
        return self._owner.client.chat.completions.create(**kwargs)


class _Chat:
    def __init__(self, owner: CountingClient) -> None:
        self.completions = _Completions(owner)


class CountingClient:
    """An openai client whose chat requests are counted and journalled (one JSON line each, written
    before the request is sent: its kind and a digest of the messages and budget)."""

    def __init__(self, client: Any, journal: str | Path | None = None) -> None:
        self.client = client
        self.journal = Path(journal) if journal else None
        self.count = 0
        self._lock = threading.Lock()
        self.chat = _Chat(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def log(self, kwargs: dict[str, Any]) -> None:
        digest = hashlib.sha256(
            json.dumps(
                [kwargs.get("messages"), kwargs.get("max_tokens")], sort_keys=True, default=str
            ).encode()
        ).hexdigest()[:20]
        kind = "stream" if kwargs.get("stream") else "answer"
        with self._lock:
            self.count += 1
            if self.journal is not None:
                with self.journal.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"kind": kind, "digest": digest}) + "\n")


def _number(problem_id: str) -> int | None:
    tail = problem_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def order_traces(traces: Sequence[Trace]) -> list[Trace]:
    """One trace per question (the first), by the question's number when every id ends in one."""
    seen: dict[str, Trace] = {}
    for t in traces:
        seen.setdefault(t.problem_id, t)
    ordered = list(seen.values())
    if all(_number(t.problem_id) is not None for t in ordered):
        ordered.sort(key=lambda t: _number(t.problem_id) or 0)
    return ordered


def _read_appended(path: Path) -> list[Trace]:
    """Traces appended one line at a time; a torn last line (a hard kill) is dropped."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        path.write_text(text, encoding="utf-8")
    return load_traces(path) if text else []


def record_resumable(
    client: Any, problems: Sequence[Any], config: RunConfig, path: Path, label: str, log: Log = print
) -> list[Trace]:
    """The traces of ``problems`` in order: read from ``path``, the missing ones recorded and
    appended one by one as they finish."""
    done = {t.problem_id: t for t in _read_appended(path)}
    todo = [p for p in problems if p.id not in done]
    have = len(problems) - len(todo)
    log(f"{label}: {len(problems)} questions, {have} already in {path}, {len(todo)} to record")
    if todo:
        lock = threading.Lock()
        one_config = replace(config, progress=False, concurrency=1)
        path.parent.mkdir(parents=True, exist_ok=True)

        def work(problem: Any) -> Trace:
            (trace,) = record_traces(client, [problem], one_config)
            with lock, path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(trace.to_json()) + "\n")
            done[trace.problem_id] = trace
            return trace

        run_all(todo, work, config, label)
    return [done[p.id] for p in problems]


def _calibrated(path: Path, make: Any, log: Log, what: str) -> Calibration | None:
    if path.exists():
        return Calibration.load(path)
    try:
        cal = make()
    except PolicyError as error:
        log(f"{what} refused ({error})")
        return None
    cal.save(path)
    log(f"profile saved to {path} (tau {cal.tau:.4f}, verdict {cal.verdict})")
    return cal


def _gate_extended(
    traces: Sequence[Trace], tau: float, path: Path, client: Any, config: RunConfig | None, log: Log
) -> dict[str, Any] | None:
    """The extended step's results where the gate fails (entropy above tau), resumable in ``path``."""
    from entropy_exit_integrations.gate import EntropyGate, Refine

    from .gating import run_extended
    from .traces import problems_of

    done: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    todo = [t for t in traces if t.problem_id not in done and (t.entropy or 0.0) > tau]
    if todo and client is None:
        log(f"gate row skipped: the extended step is missing for {len(todo)} questions (needs --base-url)")
        return None
    if todo and config is not None:
        gate = EntropyGate(tau, Refine())
        lock = threading.Lock()
        one = replace(config, progress=False, concurrency=1)

        def work(trace: Trace) -> None:
            (ext,) = run_extended(client, problems_of([trace]), [trace], gate, one)
            with lock:
                done[trace.problem_id] = {
                    "correct": ext.correct,
                    "tokens": ext.tokens,
                    "wall_s": round(ext.wall_time_s, 3),
                }
                path.write_text(json.dumps(done, indent=1))

        log(f"the gate's extended step on {len(todo)} questions above tau[mean] {tau:.4f}")
        run_all(todo, work, config, "gate: extended step")
    return done


def run_table(
    *,
    out: str | Path,
    client: Any = None,
    config: RunConfig | None = None,
    traces: Sequence[Trace] | None = None,
    train_traces: Sequence[Trace] | None = None,
    profile: Calibration | None = None,
    seq_profile: Calibration | None = None,
    gate_extended: str | Path | None = None,
    cache: ForcedCache | None = None,
    dataset: str = "gsm8k",
    n: int = 200,
    train_n: int = 32,
    seed: int = 0,
    risk: float = 0.1,
    window: int = 16,
    min_tokens: int = 16,
    budgets: tuple[int, ...] | None = None,
    length_quantiles: tuple[float, ...] = (0.5, 0.9),
    periods: tuple[int, ...] = (32, 64),
    concurrency: int = 1,
    headroom_every: int = 0,
    title: str = "",
    log: Log = print,
) -> str:
    """Build the headline table; returns it (markdown) and writes ``table.md``, ``headroom.md``,
    ``results.json`` and ``savings_vs_accuracy.png`` into ``out``."""
    from .plots import savings_vs_accuracy_ci
    from .probes import (
        ProbeAnswers,
        bench_rows,
        gate_row,
        headline_table,
        headroom,
        headroom_bound,
        headroom_text,
    )
    from .report import write_results

    started = time.perf_counter()
    left_out: list[str] = []
    say = log

    def log(message: str) -> None:  # rows left out are also said after the table
        say(message)
        if any(word in message for word in ("left out", "skipped", "refused")):
            left_out.append(message)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = out_dir / "requests.jsonl"
    counting = CountingClient(client, journal) if client is not None else None
    cache = cache if cache is not None else ForcedCache(out_dir / "forced.json")
    answers = ProbeAnswers(cache, client=counting, config=config, save_every=1)
    try:
        if traces is None:
            if counting is None or config is None:
                raise EntropyExitError("recording traces needs a server: give --base-url or --traces")
            if train_traces is None and train_n:
                problems = load_dataset(dataset, split="train", n=train_n, seed=seed)
                train_traces = record_resumable(
                    counting, problems, config, out_dir / "train_traces.jsonl", "recording train traces", log
                )
            problems = load_dataset(dataset, split="test", n=n, seed=seed)
            traces = record_resumable(
                counting, problems, config, out_dir / "traces.jsonl", "recording traces", log
            )
        traces = order_traces(traces)
        train = order_traces(train_traces) if train_traces else None
        if not traces:
            raise EntropyExitError("no traces to benchmark")
        if profile is None and train:
            from .answers import ExitAnswers
            from .commands import calibrate_traces

            shape = ExitPolicy(threshold=0.0, aggregation="window", window=window, min_tokens=min_tokens)
            resolver = ExitAnswers(train, client=counting, config=config, cache=cache)
            profile = _calibrated(
                out_dir / "profile_window.json",
                lambda: calibrate_traces(train, shape=shape, risk=risk, answers=resolver, log=log),
                log,
                "the streaming calibration (the risk-controlled row)",
            )
        if seq_profile is None and train:
            from .commands import calibrate_traces

            seq_profile = _calibrated(
                out_dir / "profile_seq.json",
                lambda: calibrate_traces(train, log=log),
                log,
                "the sequence calibration (the paper's gate row)",
            )
        log(
            f"{len(traces)} test traces, {len(train or [])} train traces, {len(cache.entries)} cached answers"
        )
        rows, per_question = bench_rows(
            traces,
            profile=profile,
            answers=answers,
            train_traces=train,
            periods=periods,
            budgets=budgets if budgets is not None else _quarters(_max_tokens(traces)),
            length_quantiles=length_quantiles,
            concurrency=concurrency,
            log=log,
        )
        if seq_profile is not None:
            path = Path(gate_extended) if gate_extended else out_dir / "gate_extended.json"
            extended = (
                json.loads(path.read_text())
                if gate_extended and counting is None
                else _gate_extended(traces, seq_profile.tau, path, counting, config, log)
            )
            if extended is not None and all(
                t.problem_id in extended or (t.entropy or 0) <= seq_profile.tau for t in traces
            ):
                row, outcomes = gate_row(traces, seq_profile.tau, extended)
                rows.insert(1, row)
                per_question[row.rule] = [
                    {"id": o.problem_id, "correct": o.correct, "tokens": o.tokens_used + o.forced_tokens}
                    for o in outcomes
                ]
            else:
                log("gate row skipped: the extended step is missing for some questions")
        ids = [t.problem_id for t in traces]
        if not all([q["id"] for q in v] == ids for v in per_question.values()):
            raise EntropyExitError("internal error: rows on different questions")
        grid = headroom(traces, answers, every=periods[0] if periods else 32)
        if headroom_every and counting is not None:
            _ask_headroom(traces, answers, headroom_every, config, log)
        bound = headroom_bound(traces, answers)
    except LookupError as error:
        raise MissingAnswers(
            f"{error}: the answer is in neither the traces nor --forced-cache; give --base-url (and drop "
            "--offline) to ask it"
        ) from error
    finally:
        answers.save()
    table = headline_table(rows)
    room = headroom_text(grid, bound)
    meta = {
        "model": traces[0].model,
        "n": len(traces),
        "questions": f"{ids[0]} .. {ids[-1]}",
        "max_tokens": traces[0].max_tokens,
        "k": traces[0].k,
        "live requests this run": counting.count if counting is not None else 0,
        "probe/forced requests this run": answers.requests,
        "cache hits this run": answers.hits,
        "wall time s (this run)": round(time.perf_counter() - started, 1),
        "headroom upper bound (probe cost not charged)": bound,
        "headroom probe grid (probe cost charged)": grid,
    }
    write_results(out_dir, rows, meta=meta, extra={"per_question": per_question})
    (out_dir / "table.md").write_text(table)
    (out_dir / "headroom.md").write_text(room)
    if left_out:
        room += "\n## Rows left out\n\n" + "".join(f"- {m}\n" for m in left_out)
    savings_vs_accuracy_ci(rows, out_dir / "savings_vs_accuracy.png", title=title)
    return table + "\n" + room


def _ask_headroom(traces: Sequence[Trace], answers: Any, every: int, config: Any, log: Log) -> None:
    """For the upper bound: on each question the full run gets right, ask forced answers every
    ``every`` tokens (never inside a number) from the start until one grades right (cached)."""
    from entropy_exit_integrations.core.guards import stop_indices

    from .runner import grade_forced

    def one(trace: Trace) -> None:
        stops = stop_indices(trace.tokens)
        for index in range(every - 1, len(trace.tokens) - 1, every):
            if stops[index] != index:
                continue
            entry = answers.get(trace, index + 1)
            if grade_forced(trace, index, str(entry["answer"]), answers._forcing(trace)):
                return

    right = [t for t in traces if t.correct]
    log(f"headroom: forced answers every {every} tokens on {len(right)} right answers")
    run_all(right, one, config, "headroom")


def _quarters(max_tokens: int) -> tuple[int, ...]:
    """Default budget cuts: a quarter, a half and three quarters of the generation budget."""
    return tuple(sorted({max(1, max_tokens * f // 4) for f in (1, 2, 3)}))


def _max_tokens(traces: Sequence[Trace]) -> int:
    return max((t.max_tokens or len(t.tokens) for t in traces), default=1)
