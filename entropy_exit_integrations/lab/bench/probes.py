"""Answer-probe rules replayed over recorded traces (issue 14), and the headline table.

A probe asks the model for its final answer from a prefix of the generation (the request a live
exit makes: ``AnswerForcing.chat_request``, ``runner.force_answer``); the stream stops once
``rule.agree`` consecutive probes give the same answer, and that answer is the result
(``core.probes.ProbeState``). Two families share this replay:

* periodic probes (``ProbeRule(every=N)``), Dynasor-CoT's rule: a probe every N tokens;
* entropy-gated probes (``ProbeRule(gate=...)`` with an ``ExitPolicy``), this package's rule: the
  monitor runs over the trace and a probe is sent only when its aggregate entropy is at or under
  the gate (or the policy says "confident").

Under greedy decoding the trace holds every token a live run would generate up to its stop, so the
only thing a replay cannot know is what a probe answers. Those answers are asked live from a
server once and cached per (question, trace, tokens kept) in the same ``ForcedCache`` file the
forced rows use, with the request's wall time: a rerun costs no request.

Token accounting: a probe row's tokens are the generated prefix plus every probe's completion
tokens (a rule that never agrees pays for the full generation and all its probes). The prompt
tokens a probe re-reads are not counted as tokens (llama.cpp reuses the slot's cached prefix);
they are in the probe's measured wall time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from entropy_exit_integrations.core.guards import stop_indices
from entropy_exit_integrations.core.monitor import Decision, EntropyMonitor
from entropy_exit_integrations.core.policy import ExitPolicy
from entropy_exit_integrations.core.probes import ProbeRule, ProbeState
from entropy_exit_integrations.errors import PolicyError
from entropy_exit_integrations.forcing import AnswerForcing

from .answers import ExitAnswers, same_request
from .policies import BenchOptions, chosen_policy
from .replay import Outcome, RuleSummary, Trace, answer_of, summarise
from .report import truncation_notes, wilson
from .runner import RunConfig, check_stop, force_answer, forcing_for, grade_forced, run_all
from .traces import ForcedCache

__all__ = [
    "ProbeAnswers",
    "bench_rows",
    "gate_row",
    "ProbeOutcome",
    "headline_table",
    "headroom",
    "headroom_bound",
    "probe_rows",
    "replay_probes",
    "wilson",
]


class ProbeAnswers:
    """Probe answers at prefix lengths: cached (``ForcedCache``), else asked from ``client``.

    Thread safe. ``requests`` counts live requests, ``hits`` cache hits; every entry carries the
    measured request time (``wall_s``) so replays can report what the probes cost in time.
    """

    def __init__(
        self,
        cache: ForcedCache,
        *,
        client: Any = None,
        config: RunConfig | None = None,
        forcing: AnswerForcing | None = None,
        save_every: int = 20,
    ) -> None:
        self.cache = cache
        self.client = client
        self.config = config
        self.forcing = forcing
        self.save_every = save_every
        self.requests = 0
        self.hits = 0
        self._lock = threading.Lock()
        self._unsaved = 0

    def _forcing(self, trace: Trace) -> AnswerForcing:
        return self.forcing or forcing_for(trace.kind)

    def get(self, trace: Trace, kept: int) -> dict[str, Any]:
        """The probe after the first ``kept`` tokens: ``{"answer", "tokens", "wall_s", ...}``."""
        cue = self._forcing(trace).cue
        with self._lock:
            entry = self.cache.get(trace, kept, cue)
            if entry is not None:
                self.hits += 1
                return entry
            twin = self._twin(trace, kept, cue)
            if twin is not None:  # the same request at another prefix length: asked once
                entry = self.cache.put(trace, kept, answer=twin["answer"], tokens=twin["tokens"], cue=cue)
                entry.update(wall_s=twin.get("wall_s", 0.0), same_request_as=twin.get("kept"))
                self.hits += 1
                return entry
        if self.client is None or self.config is None:
            raise LookupError(f"{trace.problem_id}: no cached probe after {kept} tokens and no client")
        check_stop()
        started = time.perf_counter()
        answer, used = force_answer(self.client, self.config, trace, kept - 1, self._forcing(trace))
        took = time.perf_counter() - started
        with self._lock:
            entry = self.cache.put(trace, kept, answer=answer, tokens=used, cue=cue)
            entry["wall_s"] = round(took, 4)
            self.requests += 1
            self._unsaved += 1
            if self._unsaved >= self.save_every:
                self.cache.save()
                self._unsaved = 0
        return entry

    def _twin(self, trace: Trace, kept: int, cue: str) -> dict[str, Any] | None:
        return same_request(self.cache, trace, kept, cue)

    def save(self) -> None:
        with self._lock:
            self.cache.save()
            self._unsaved = 0


@dataclass
class ProbeOutcome:
    """One probe rule on one trace."""

    outcome: Outcome
    probes: int
    probe_tokens: int
    probe_wall_s: float
    answers: list[str] = field(default_factory=list)


def replay_probes(
    rule: ProbeRule,
    trace: Trace,
    answers: ProbeAnswers,
    policy: ExitPolicy | None = None,
    *,
    require_number: bool = True,
) -> ProbeOutcome:
    """Where ``rule`` stops on ``trace`` and what it answers (probe answers from ``answers``).

    ``policy`` drives an entropy-gated rule (its monitor's decisions go to ``ProbeState.due``);
    periodic rules ignore it. No probe is sent after the last token: the generation is over.
    ``require_number``: on a numeric question the rule runs with ``ProbeRule.require_number``
    (a probe answer without a digit counts as no answer), the same rule a live call can ask for.
    Without it, Qwen2.5-Coder's repeated echo of the prompt's template ("The answer is N.")
    "agrees" with itself and stops the stream with no answer.
    """
    numeric = require_number and trace.kind == "numeric"
    state = ProbeState(replace(rule, require_number=True) if numeric else rule)
    monitor = EntropyMonitor(policy) if policy is not None and rule.every is None else None
    stops = stop_indices(trace.tokens)  # a probe's prefix is a cut: never inside a number (as live)
    last = len(trace.tokens) - 1
    spent, wall = 0, 0.0
    for index, token in enumerate(trace.tokens):
        decision = (
            monitor.observe(token) if monitor is not None else Decision(False, "uncertain", index, None)
        )
        if index >= last:
            break
        if stops[index] != index or not state.due(index, decision):
            continue
        entry = answers.get(trace, index + 1)
        spent += int(entry["tokens"])
        wall += float(entry.get("wall_s", 0.0))
        if state.record(index, str(entry["answer"])):
            agreed = state.agreed or ""
            correct = grade_forced(trace, index, agreed, answers._forcing(trace))
            complete = answer_of(trace.kind, trace.prefix(index)) == answer_of(trace.kind, trace.text)
            outcome = Outcome(
                trace.problem_id,
                True,
                index,
                index + 1,
                correct,
                trace.correct,
                complete,
                agreed,
                spent,
                correct == trace.correct,
            )
            return ProbeOutcome(outcome, state.probes, spent, wall, list(state.answers))
    outcome = Outcome(
        trace.problem_id, False, None, len(trace.tokens), trace.correct, trace.correct, True, None, spent
    )
    return ProbeOutcome(outcome, state.probes, spent, wall, list(state.answers))


def probe_rows(
    traces: Sequence[Trace],
    rules: Sequence[tuple[str, ProbeRule, ExitPolicy | None]],
    answers: ProbeAnswers,
    *,
    family: dict[str, str] | None = None,
    concurrency: int = 2,
) -> tuple[list[RuleSummary], dict[str, list[ProbeOutcome]]]:
    """One row per (name, rule, policy) over every trace, with probe answers fetched as needed.

    Traces are replayed ``concurrency`` at a time (each trace's probes are sequential: whether the
    next is needed depends on the last answer). The wall time of a row is estimated: the trace's
    recorded time scaled by the tokens it generated, plus the measured time of its probes.
    """
    config = answers.config or RunConfig(model="replay", progress=False)
    rows: list[RuleSummary] = []
    per_rule: dict[str, list[ProbeOutcome]] = {}
    try:
        for name, rule, policy in rules:

            def one(trace: Trace, r: ProbeRule = rule, p: ExitPolicy | None = policy) -> ProbeOutcome:
                return replay_probes(r, trace, answers, p)

            results = run_all(
                list(traces),
                one,
                RunConfig(
                    model=config.model,
                    concurrency=concurrency,
                    retries=config.retries,
                    progress=config.progress,
                ),
                name,
            )
            per_rule[name] = results
            wall = sum(
                t.wall_time_s * r.outcome.tokens_used / max(len(t.tokens), 1) + r.probe_wall_s
                for t, r in zip(traces, results)
            )
            kind = (family or {}).get(name) or ("periodic probes" if rule.every else "entropy-gated probes")
            row = summarise(
                name,
                kind,
                [r.outcome for r in results],
                traces,
                forced=True,
                wall_time_s=wall,
                threshold=rule.gate if rule.every is None else float(rule.every),
            )
            row.extra.update(
                probes=sum(r.probes for r in results),
                probe_tokens=sum(r.probe_tokens for r in results),
                probe_wall_s=round(sum(r.probe_wall_s for r in results), 2),
                agree=rule.agree,
            )
            rows.append(row)
    finally:
        answers.save()
    return rows, per_rule


def headline_table(rows: Sequence[RuleSummary]) -> str:
    """Markdown: accuracy with its 95% Wilson interval, tokens (with probes and forced answers),
    saved vs no exit, answers lost/gained vs no exit, probes, wall time."""
    head = (
        "rule",
        "family",
        "accuracy [95% CI]",
        "tokens",
        "saved",
        "lost / gained",
        "exits",
        "probes (tokens)",
        "wall s",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        low, high = wilson(round(r.accuracy * r.n), r.n)
        probes = r.extra.get("probes")
        wall = (
            ""
            if r.wall_time_s is None
            else f"{r.wall_time_s:.0f}{'' if r.extra.get('wall_measured') else ' est'}"
        )
        cells = (
            r.rule,
            r.family,
            f"{r.accuracy:.1%} [{low:.1%}, {high:.1%}]",
            str(r.tokens),
            f"{r.saved_pct:.1f}%",
            f"{r.answers_lost} / {r.answers_gained}",
            str(r.exits),
            "" if probes is None else f"{probes} ({r.extra.get('probe_tokens', 0)})",
            wall,
        )
        lines.append("| " + " | ".join(cells) + " |")
    notes = truncation_notes(rows)
    if notes:  # only when a row's gain is forced answers on truncated runs
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def bench_rows(
    traces: list[Any],
    *,
    profile: Any,
    answers: Any,
    train_traces: list[Any] | None = None,
    gates: tuple[tuple[float, int], ...] | None = None,
    gate_quantiles: tuple[tuple[float, int], ...] = ((0.10, 2), (0.10, 3), (0.25, 2), (0.25, 3)),
    periods: tuple[int, ...] = (32, 64),
    agrees: tuple[int, ...] = (2, 3),
    budgets: tuple[int, ...] = (64, 128, 192, 256),
    length_quantiles: tuple[float, ...] = (),
    probe_tokens: int = 16,
    concurrency: int = 1,
    log: Any = print,
) -> tuple[list[Any], dict[str, Any]]:
    """Issue 14's rows, all on ``traces``: no exit, the calibrated streaming exit (forced), the
    streaming exit at each probe gate (forced), the entropy-gated probe rule
    (``gate_quantiles``: quantiles of the policy's aggregate over the tokens of ``train_traces``,
    with k), periodic probes (``periods`` x ``agrees``), DeepConf
    online (forced), budget cuts (forced), a length cap at each of ``length_quantiles`` of the
    train traces' lengths (forced), fixed 0.15 bits (forced). ``profile`` may be None (no
    calibration possible): the streaming row is left out and the window-16 shape is used.

    Every probe and forced answer goes through ``answers`` (cache first, then its client). Returns
    the rows and, per row, each question's outcome (id, correct, tokens, exit index).
    """
    from .replay import outcome_at, replay_rule
    from .rules import (
        BudgetCut,
        DeepConfOnline,
        PolicyRule,
        deepconf_threshold,
        fixed_entropy_rule,
    )

    per_question: dict[str, Any] = {}
    rows: list[Any] = []

    def record(row: Any, outcomes: list[Any]) -> None:
        rows.append(row)
        per_question[row.rule] = [
            {
                "id": o.problem_id,
                "correct": o.correct,
                "tokens": o.tokens_used + o.forced_tokens,
                "exit": o.exit_index,
            }
            for o in outcomes
        ]

    def est_wall(outcomes: list[Any]) -> float:
        return sum(t.wall_time_s * o.tokens_used / max(len(t.tokens), 1) for t, o in zip(traces, outcomes))

    base = [outcome_at(t, None) for t in traces]
    row = summarise("no exit", "baseline", base, traces, wall_time_s=sum(t.wall_time_s for t in traces))
    row.extra["wall_measured"] = True
    record(row, base)

    exit_answers = ExitAnswers(traces, client=answers.client, config=answers.config, cache=answers.cache)

    def forced(name: str, family: str, rule: Any, threshold: float | None) -> None:
        replayed = [replay_rule(rule, t) for t in traces]
        before = dict(exit_answers.counts)
        requests = answers.requests
        if answers.client is not None:  # ask through ProbeAnswers: it records each request's time
            needed = [
                (t, o.exit_index)
                for t, o in zip(traces, replayed)
                if o.exited and o.exit_index is not None and not exit_answers._complete(t, o.exit_index)
            ]
            run_all(needed, lambda p: answers.get(p[0], p[1] + 1), answers.config, name)
            answers.save()
        outcomes = exit_answers.outcomes(replayed)
        if outcomes is None:
            log(f"skipped {name}: forced answers missing and no server")
            return
        asked = answers.requests - requests + exit_answers.counts["forced"] - before.get("forced", 0)
        row = summarise(name, family, outcomes, traces, forced=True, threshold=threshold)
        walls = [
            (answers.cache.get(t, o.exit_index + 1, answers._forcing(t).cue) or {}).get("wall_s", 0.0)
            if o.exited and o.forced_tokens and o.exit_index is not None
            else 0.0
            for t, o in zip(traces, outcomes)
        ]
        row.wall_time_s = est_wall(outcomes) + sum(walls)
        row.extra.update(forced_now=asked)
        record(row, outcomes)
        log(f"{name}: {row.accuracy:.1%} saved {row.saved_pct:.1f}% (asked {asked})")

    # the streaming policy: the risk-calibrated one when the profile has a threshold; the shape
    # (aggregation, window, min_tokens) comes from the profile either way
    policy: ExitPolicy | None = None
    if profile is None:
        log("no calibration profile: the calibrated streaming row is left out")
    else:
        try:
            policy = chosen_policy(profile, BenchOptions(), log)
        except PolicyError as error:
            log(f"the calibrated streaming policy is refused ({error}); its row is left out")
    if profile is not None and profile.kind == "stream":
        fields = {k: v for k, v in profile.policy_shape().items() if v is not None}
        shape = ExitPolicy(threshold=0.0, **fields)
    else:
        shape = ExitPolicy(threshold=0.0, aggregation="window", window=16, min_tokens=16)
    shape_name = shape.aggregation + (str(shape.window) if shape.aggregation != "mean" else "")
    if policy is not None:
        forced(
            f"stream exit {shape_name} calibrated (tau={policy.threshold:.4f})",
            "entropy exit",
            PolicyRule("s", policy),
            policy.threshold,
        )
    # gates of the new rule: quantiles of the policy's aggregate over every token of the TRAIN
    # traces (after min_tokens), so "gate q=0.10" probes where the aggregate is in its lowest 10%
    source = train_traces or traces
    monitor_rule = PolicyRule("grid", shape)
    values = [
        v for t in source for v in monitor_rule.exit_trace(t.tokens)[shape.min_tokens :] if v is not None
    ]
    if gates is None:
        gates = tuple((round(float(np.quantile(values, q)), 4), k) for q, k in gate_quantiles)
        log(f"probe gates (quantiles {gate_quantiles} of the train aggregate): {gates}")
    for gate in dict.fromkeys(g for g, _ in gates):  # the streaming exit at each bound, to compare
        forced(
            f"stream exit {shape_name} <= {gate:.3f} bits (train quantile)",
            "entropy exit",
            PolicyRule("q", ExitPolicy.from_dict({**shape.to_dict(), "threshold": max(gate, 1e-6)})),
            gate,
        )
    gated_policy = policy or shape
    specs: list[tuple[str, Any, Any]] = []
    family: dict[str, str] = {}
    for gate, k in gates:
        gate = max(gate, gated_policy.threshold)
        name = f"entropy-gated probes <= {gate:.3f} bits, k={k}"
        specs.append((name, ProbeRule(gate=gate, agree=k, max_tokens=probe_tokens), gated_policy))
        family[name] = "entropy-gated probes (new)"
    for every in periods:
        for k in agrees:
            name = f"Dynasor probes every {every}, k={k}"
            specs.append(
                (name, ProbeRule(every=every, agree=k, max_probes=64, max_tokens=probe_tokens), None)
            )
            family[name] = "Dynasor-style probes"
    # cheapest first: the periodic ones share prefix lengths (64 | 32), so fill every-32 k=3 first
    order = sorted(specs, key=lambda s: (s[1].every is None, -(s[1].agree if s[1].every == 32 else 0)))
    probe_result, probe_outcomes = probe_rows(traces, order, answers, family=family, concurrency=concurrency)
    by_name = {r.rule: r for r in probe_result}
    for name, _, _ in specs:
        record(by_name[name], [p.outcome for p in probe_outcomes[name]])
        r = by_name[name]
        log(f"{name}: {r.accuracy:.1%} saved {r.saved_pct:.1f}% probes {r.extra['probes']}")

    for keep in (0.9, 0.1):
        if profile is not None and profile.deepconf_threshold and keep == 0.9:
            threshold, window = profile.deepconf_threshold, int(profile.deepconf_window or 16)
        else:
            window = 16
            threshold = deepconf_threshold(
                [t.tokens for t in (train_traces or traces)[:16]], keep=keep, window=16
            )
        rule = DeepConfOnline(threshold, window)
        forced(
            f"DeepConf online keep={keep:g} (s={threshold:.2f}, w={window})",
            "DeepConf online",
            rule,
            threshold,
        )
    for budget in budgets:
        forced(f"budget cut {budget}", "budget cut", BudgetCut(budget), float(budget))
    lengths = [len(t.tokens) for t in (train_traces or traces)]
    for q in length_quantiles:  # a cap no run of the train set would pass more than (1 - q) of the time
        cap = max(1, int(np.quantile(lengths, q)))
        forced(f"length cap {cap} (train q{q:g})", "length cap", BudgetCut(cap), float(cap))
    fixed = fixed_entropy_rule(0.15)
    forced("fixed 0.15 bits", "fixed threshold", fixed, 0.15)
    return rows, per_question


def headroom(traces: Sequence[Trace], answers: ProbeAnswers, every: int = 32) -> dict[str, Any]:
    """How much a stop could save without losing an answer, in hindsight (not a rule).

    For each question the full run gets right: the earliest probe point (every ``every`` tokens,
    never inside a number, as the periodic rule probes) whose probe answer grades right, and the
    tokens after it. Their sum over all tokens is what even a perfect stop could save on the right
    answers; every further saving has to come from questions the model gets wrong, which a rule
    can only find through a signal that separates them. Uses cached probe answers (or asks).
    """
    total = sum(len(t.tokens) for t in traces)
    right = [t for t in traces if t.correct]
    fractions: list[float] = []
    after = 0
    for trace in right:
        stops = stop_indices(trace.tokens)
        first = len(trace.tokens)
        for index in range(every - 1, len(trace.tokens) - 1, every):
            if stops[index] != index:
                continue
            entry = answers.get(trace, index + 1)
            if grade_forced(trace, index, str(entry["answer"]), answers._forcing(trace)):
                first = index + 1 + int(entry["tokens"])
                break
        fractions.append(min(first, len(trace.tokens)) / len(trace.tokens))
        after += max(len(trace.tokens) - first, 0)
    return {
        "right": len(right),
        "tokens_on_right_pct": round(100 * sum(len(t.tokens) for t in right) / max(total, 1), 1),
        "first_right_probe_median_pct": round(100 * float(np.median(fractions)), 1) if fractions else None,
        "max_saving_on_right_pct": round(100 * after / max(total, 1), 1),
        "every": every,
    }


def gate_row(traces: list[Any], tau: float, extended: dict[str, Any]) -> Any:
    """The paper's gate against no exit: pass (entropy <= tau) keeps the first answer; otherwise
    the extended step's answer, paying both rounds. ``extended`` maps problem id to
    ``{"correct", "tokens", "wall_s"}`` for the questions that failed the gate."""

    outcomes = []
    wall = 0.0
    for t in traces:
        passes = t.entropy is not None and t.entropy <= tau
        wall += t.wall_time_s
        if passes:
            outcomes.append(Outcome(t.problem_id, False, None, len(t.tokens), t.correct, t.correct, True))
            continue
        e = extended[t.problem_id]
        wall += e["wall_s"]
        outcomes.append(
            Outcome(
                t.problem_id,
                True,
                None,
                len(t.tokens),
                bool(e["correct"]),
                t.correct,
                True,
                "",
                int(e["tokens"]),
            )
        )
    row = summarise(
        f"gate tau[mean]={tau:.3f} (+Refine)", "gate (paper)", outcomes, traces, forced=True, threshold=tau
    )
    row.wall_time_s = wall
    row.extra["wall_measured"] = True
    return row, outcomes


def headroom_bound(traces: Sequence[Trace], answers: ProbeAnswers) -> dict[str, Any]:
    """The upper bound on what any stop could save without losing an answer, in hindsight.

    For each question the full run gets right: the earliest prefix whose forced answer grades
    right, over every prefix whose answer is known (asked by any row, the probe grid or the
    forced rows; cached per question, trace and prefix) and no probe cost charged: the stop
    itself is free. Unlike ``headroom`` (the probe grid, probe tokens charged) this is the bound
    a perfect stop rule could reach on these prefixes; a finer grid can only lower the first
    right prefix, so more prefixes can only raise it.
    """
    total = sum(len(t.tokens) for t in traces)
    right = [t for t in traces if t.correct]
    after = 0
    fractions: list[float] = []
    prefixes = 0
    cache = answers.cache
    for trace in right:
        cue = answers._forcing(trace).cue
        stem = cache.key(trace, 0).rsplit("|", 1)[0] + "|"
        kept = {int(k) for k in trace.forced} | {
            int(key.rsplit("|", 1)[1]) for key in cache.entries if key.startswith(stem)
        }
        first = len(trace.tokens)
        for count in sorted(k for k in kept if 0 < k < len(trace.tokens)):
            entry = cache.get(trace, count, cue)
            if entry is None:
                continue
            prefixes += 1
            if grade_forced(trace, count - 1, str(entry["answer"]), answers._forcing(trace)):
                first = count
                break
        fractions.append(first / len(trace.tokens))
        after += len(trace.tokens) - first
    return {
        "right": len(right),
        "prefixes_examined": prefixes,
        "first_right_prefix_median_pct": round(100 * float(np.median(fractions)), 1) if fractions else None,
        "max_saving_on_right_pct": round(100 * after / max(total, 1), 1),
    }


def headroom_text(grid: dict[str, Any], bound: dict[str, Any]) -> str:
    """The headroom section: the true upper bound and the probe-grid figure, each labelled."""
    if not bound["right"]:
        return (
            "## Headroom (hindsight, on the questions the full run gets right)\n\n"
            "- none to measure: the full run gets no question right\n"
        )
    return (
        "## Headroom (hindsight, on the questions the full run gets right)\n\n"
        f"- upper bound, probe cost not charged: a perfect stop at the earliest prefix with a right "
        f"forced answer saves at most {bound['max_saving_on_right_pct']}% of all tokens "
        f"({bound['right']} right answers, {bound['prefixes_examined']} known prefixes examined, "
        f"first right prefix at median {bound['first_right_prefix_median_pct']}% of the trace)\n"
        f"- probe grid, probe cost charged: the earliest probe every {grid['every']} tokens that "
        f"answers right saves at most {grid['max_saving_on_right_pct']}% of all tokens (first right "
        f"probe at median {grid['first_right_probe_median_pct']}% of the trace; right answers use "
        f"{grid['tokens_on_right_pct']}% of all tokens)\n"
    )
