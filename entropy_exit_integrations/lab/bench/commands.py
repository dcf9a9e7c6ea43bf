"""The ``calibrate`` and ``bench`` commands as functions (the CLI only parses arguments).

Both work on traces: recorded here from a server (``run_calibration``, ``run_bench``), or read
from a file recorded anywhere (``calibrate_traces``, ``bench_traces``), in which case no model is
called unless a client is given for the answers that must be forced at exit points.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from entropy_exit_integrations.core.calibration import (
    METHODS,
    Calibration,
    ExampleError,
    StreamExample,
    calibrate,
    calibrate_stream,
    stream_stop_indices,
)
from entropy_exit_integrations.core.policy import ExitPolicy
from entropy_exit_integrations.errors import PolicyError
from entropy_exit_integrations.gate import EntropyGate

from .answers import ExitAnswers
from .datasets import load_dataset
from .gating import gate_summary, run_extended
from .policies import BenchOptions, Log, chosen_policy
from .replay import Outcome, RuleSummary, Trace, outcome_at, replay_rule, save_traces, summarise
from .report import markdown_table, write_results
from .rules import BudgetCut, DeepConfOnline, PolicyRule, deepconf_threshold, fixed_entropy_rule
from .runner import (
    RunConfig,
    record_traces,
    run_live,
)
from .traces import ForcedCache, problems_of

__all__ = [
    "BenchOptions",
    "ExitAnswers",
    "bench_traces",
    "calibrate_traces",
    "chosen_policy",
    "connect",
    "run_bench",
    "run_calibration",
]


@contextlib.contextmanager
def connect(
    base_url: str | None, model: str | None, api_key: str = "sk-no-key", model_file: str | None = None
) -> Iterator[tuple[Any, str]]:
    """An openai client and model id; starts the embedded server when no base URL is given.

    ``model_file`` (a GGUF path, or an opt-in benchmark model's name, ``"qwen2.5-coder-0.5b"`` or
    ``"qwen2.5-coder-1.5b"``, fetched by ``entropy-exit setup --model NAME``; the 1.5B is served
    with every core) replaces the embedded SmolLM2 model. Nothing is downloaded or built here.
    """
    import openai

    with contextlib.ExitStack() as stack:
        if base_url is None:
            from ..local import LocalServer

            settings: dict[str, Any] = {}
            from .models import OPT_IN_MODELS, model_path

            if model_file in OPT_IN_MODELS:
                from ..local.pins import cache_dir

                spec = OPT_IN_MODELS[model_file]
                path = model_path(model_file, cache_dir() / "models")
                settings = {"model_path": path, "alias": path.stem, "model_sha256": spec.sha256}
                if spec.all_cores:
                    settings["threads"] = os.cpu_count() or 1
            elif model_file:
                path = Path(model_file)
                settings = {"model_path": path, "alias": path.stem}
            server = stack.enter_context(LocalServer(**settings))
            base_url, model = server.base_url, model or server.model
        client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
        if model is None:
            model = client.models.list().data[0].id
        else:
            _check_reachable(client)
        yield client, model


def _check_reachable(client: Any) -> None:
    """Fail at once (``openai.APIConnectionError``) when nothing answers at the client's URL.

    Any HTTP answer counts as reachable: a server without ``/models`` still serves chats.
    """
    import openai

    with contextlib.suppress(openai.APIStatusError):
        client.with_options(timeout=30.0, max_retries=0).models.list()


def calibrate_traces(
    traces: Sequence[Trace],
    *,
    method: str = "mean",
    model: str | None = None,
    risk: float | None = None,
    confidence: float = 0.9,
    shape: ExitPolicy | None = None,
    answers: ExitAnswers | None = None,
    log: Log = print,
) -> Calibration:
    """Calibrate from recorded traces, with no model call unless ``answers`` may force some.

    Without ``shape``: the sequence-mean threshold (the gate), by ``method`` or, with ``risk``,
    risk-controlled. With ``shape`` (an ExitPolicy whose aggregation, window, min_tokens,
    patience and phase are to be calibrated): the streaming threshold by ``calibrate_stream``,
    at ``risk`` (default 0.05), with the answers at candidate exit points from ``answers``.
    """
    model = model or next((t.model for t in traces if t.model), None)
    try:
        return _calibrate_traces(traces, method, model, risk, confidence, shape, answers, log)
    except ExampleError as error:
        trace = traces[error.index]
        raise PolicyError(f"trace {error.index + 1} ({trace.problem_id}): {error.reason}") from error


def _calibrate_traces(
    traces: Sequence[Trace],
    method: str,
    model: str | None,
    risk: float | None,
    confidence: float,
    shape: ExitPolicy | None,
    answers: ExitAnswers | None,
    log: Log,
) -> Calibration:
    if shape is None:
        examples = [(t.tokens, t.correct, len(t.tokens)) for t in traces]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cal = calibrate(examples, method, model=model, risk=risk, confidence=confidence)  # type: ignore[arg-type]
        for warning in caught:
            log(f"warning: {warning.message}")
        return cal
    answers = answers or ExitAnswers(traces)
    started = time.perf_counter()
    cal = calibrate_stream(
        [StreamExample(t.tokens, t.correct) for t in traces],
        shape,
        answers,
        risk=0.05 if risk is None else risk,
        confidence=confidence,
        model=model,
    )
    took = time.perf_counter() - started
    log(f"answers at exit points: {answers.describe() or 'none needed'} ({took:.1f} s)")
    if answers.counts["unknown"]:
        log(
            f"note: {answers.counts['unknown']} exit points had no forced answer (none in the trace file or "
            "the cache, and no --base-url to ask): each counts as a harmful exit"
        )
    return cal


def run_calibration(
    client: Any,
    config: RunConfig,
    *,
    dataset: str,
    n: int,
    method: str = "mean",
    seed: int = 0,
    out: str | Path | None = None,
    traces_out: str | Path | None = None,
    risk: float | None = None,
    confidence: float = 0.9,
    shape: ExitPolicy | None = None,
    cache: ForcedCache | None = None,
) -> Calibration:
    """Run n calibration questions (train split where one exists), grade, calibrate, save."""
    problems = load_dataset(dataset, split="train", n=n, seed=seed)
    traces = record_traces(client, problems, config)
    if traces_out:  # kept even when the calibration below refuses them
        save_traces(traces, traces_out)
    answers = ExitAnswers(traces, client=client, config=config, cache=cache)
    cal = calibrate_traces(
        traces,
        method=method,
        model=config.model,
        risk=risk,
        confidence=confidence,
        shape=shape,
        answers=answers,
    )
    if traces_out:
        answers.cache.attach(traces)
        save_traces(traces, traces_out)
    if out:
        cal.save(out)
    return cal


def _summary(
    name: str, family: str, outcomes: list[Outcome], traces: Sequence[Trace], threshold: Any
) -> RuleSummary:
    wall = sum(t.wall_time_s * o.tokens_used / max(len(t.tokens), 1) for t, o in zip(traces, outcomes))
    return summarise(name, family, outcomes, traces, wall_time_s=wall, threshold=threshold)


def _replayed(rule: Any, traces: Sequence[Trace]) -> tuple[list[Outcome], RuleSummary]:
    outcomes = [replay_rule(rule, t) for t in traces]
    threshold = getattr(getattr(rule, "policy", None), "threshold", getattr(rule, "threshold", None))
    if isinstance(rule, BudgetCut):
        threshold = float(rule.budget)
    return outcomes, _summary(rule.name, rule.family, outcomes, traces, threshold)


def _sweep(
    label: str, shape: ExitPolicy, thresholds: Sequence[tuple[str, float]], traces: Sequence[Trace]
) -> list[RuleSummary]:
    """Rows of one policy shape at many thresholds: one monitor pass per trace for all of them."""
    values = [max(v, 0.0) for _, v in thresholds]
    stops = [stream_stop_indices(t.tokens, shape, values) for t in traces]
    rows = []
    for column, (name, value) in enumerate(thresholds):
        outcomes = [outcome_at(t, s[column]) for t, s in zip(traces, stops)]
        rows.append(_summary(f"{label} {name}", "entropy exit", outcomes, traces, max(value, 0.0)))
    return rows


def _window_grid(traces: Sequence[Trace], shape: ExitPolicy, count: int) -> list[float]:
    """Thresholds spread over where the shape's aggregate bottoms out in each trace."""
    monitor_shape = ExitPolicy.from_dict({**shape.to_dict(), "threshold": 0.0})
    lows = []
    for trace in traces:
        values = PolicyRule("grid", monitor_shape).exit_trace(trace.tokens)
        ready = [v for v in values[shape.min_tokens :] if v is not None]
        if ready:
            lows.append(min(ready))
    if not lows:
        return []
    return sorted({round(float(v) + 1e-4, 4) for v in np.quantile(lows, np.linspace(0.05, 0.95, count))})


def run_bench(
    client: Any,
    config: RunConfig,
    *,
    dataset: str,
    n: int,
    out_dir: str | Path,
    profile: Calibration | None = None,
    options: BenchOptions | None = None,
    seed: int = 0,
    log: Log = print,
) -> list[RuleSummary]:
    """Record, replay every rule, confirm the chosen ones live, write results, table and plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = load_dataset(dataset, split="test", n=n, seed=seed)
    started = time.perf_counter()
    traces = record_traces(client, problems, config)
    save_traces(traces, out / "traces.jsonl")
    return bench_traces(
        traces,
        out_dir=out,
        profile=profile,
        options=options,
        client=client,
        config=config,
        source=dataset,
        started=started,
        log=log,
    )


def bench_traces(
    traces: Sequence[Trace],
    *,
    out_dir: str | Path,
    profile: Calibration | None = None,
    options: BenchOptions | None = None,
    client: Any = None,
    config: RunConfig | None = None,
    cache: ForcedCache | None = None,
    source: str = "traces",
    started: float | None = None,
    log: Log = print,
) -> list[RuleSummary]:
    """Every rule on recorded traces; rows that need the model run only when ``client`` is given.

    Replayed rows need nothing but the traces. Rows that need model calls (the calibrated policy
    live, the gate's extended step, answers forced at exits) use ``client``; without one, forced
    rows use answers cached in the traces or ``cache`` when every exit has one, and the others are
    skipped with a message saying so.
    """
    options = options or BenchOptions()
    started = time.perf_counter() if started is None else started
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not traces:
        raise ValueError("no traces to benchmark")
    max_tokens = (config.max_tokens if config else None) or max(
        (t.max_tokens or len(t.tokens) for t in traces), default=1
    )
    model = (config.model if config else None) or next((t.model for t in traces if t.model), "recorded")
    problems = problems_of(traces)
    answers = ExitAnswers(traces, client=client, config=config, cache=cache)
    skipped: list[str] = []

    def forced_row(
        name: str, family: str, outcomes: list[Outcome], base: RuleSummary, extra_s: float
    ) -> None:
        if not any(o.exited for o in outcomes):
            return
        forced = answers.outcomes(outcomes)
        if forced is None:
            skipped.append(f"{name} (forced): needs answers forced at its exits: give --base-url")
            return
        row = summarise(
            f"{name} (forced)",
            family,
            forced,
            traces,
            forced=True,
            wall_time_s=(base.wall_time_s or 0.0) + extra_s,
            threshold=base.threshold,
        )
        rows.append(row)

    rows = [
        summarise(
            "no exit (baseline)",
            "baseline",
            [outcome_at(t, None) for t in traces],
            traces,
            wall_time_s=sum(t.wall_time_s for t in traces),
        )
    ]
    rows[0].extra["wall_measured"] = True
    entropies = [t.entropy for t in traces if t.entropy is not None]
    taus = {name: value for name, value in (profile.taus.items() if profile else []) if value is not None}
    chosen: PolicyRule | None = None
    # the calibrated policy: live with forcing when there is a server, else replayed (+ forced)
    policy: ExitPolicy | None = None
    if profile is not None:
        try:
            policy = chosen_policy(profile, options, log)
        except PolicyError as error:
            skipped.append(f"the calibrated policy: {error}")
    if profile is not None and policy is not None:
        chosen = PolicyRule(f"stream exit calibrated ({profile.method}, {policy.aggregation})", policy)
        if options.live and client is not None and config is not None:
            outcomes, wall, agreement = run_live(client, problems, traces, policy, config)
            row = summarise(
                chosen.name + " (live, forced)",
                chosen.family,
                outcomes,
                traces,
                forced=True,
                wall_time_s=wall,
                threshold=policy.threshold,
            )
            row.extra.update(wall_measured=True, replay_agreement=agreement)
            rows.append(row)
        else:
            replayed, row = _replayed(chosen, traces)
            rows.append(row)
            forced_row(chosen.name, chosen.family, replayed, row, 0.0)
            if options.live:
                skipped.append(f"{chosen.name} (live): needs a server: give --base-url")
    # sequence-mean thresholds as running-mean exits, and a sweep of the sliding window
    mean_shape = ExitPolicy(threshold=0.0, aggregation="mean", min_tokens=options.min_tokens)
    named = [(f"tau[{m}]", taus[m]) for m in (*METHODS, "risk") if m in taus]
    if profile is None or profile.kind == "sequence":
        rows += _sweep("mean exit", mean_shape, named, traces)
    window_shape = ExitPolicy(
        threshold=0.0, aggregation="window", window=options.window, min_tokens=options.min_tokens
    )
    grid = _window_grid(traces, window_shape, options.sweep)
    rows += _sweep(f"window{options.window} exit", window_shape, [(f"{v:.4f}", v) for v in grid], traces)
    # the paper's gate: extended step once per question, every tau offline
    if client is not None and config is not None:
        seq_taus = taus if profile is None or profile.kind == "sequence" else {}
        gate = EntropyGate(seq_taus.get("mean", float(np.median(entropies))), options.extended)
        extended = run_extended(client, problems, traces, gate, config)
        seq_grid = sorted(set(np.round(np.linspace(min(entropies), max(entropies), options.sweep), 4)))
        for name, tau in [(f"tau[{m}]", v) for m, v in seq_taus.items()] + [
            (f"{t:.3f}", t) for t in seq_grid
        ]:
            rows.append(gate_summary(f"gate {name}", float(tau), traces, extended))
        rows.append(gate_summary("always extend", None, traces, extended))
    else:
        skipped.append("gate rows: the extended step needs the model: give --base-url")
    # peers on the same model
    warm = (
        (profile.deepconf_threshold, profile.deepconf_window)
        if profile and profile.deepconf_threshold
        else None
    )
    peers: list[Any] = [BudgetCut(max(1, int(max_tokens * f))) for f in options.budgets]
    for keep in options.deepconf_keep:
        window = min(options.window, max(4, max_tokens // 4))
        threshold = deepconf_threshold([t.tokens for t in traces[:16]], keep=keep, window=window)
        if warm is not None and keep == options.deepconf_keep[0]:
            threshold, window = warm[0], int(warm[1] or window)
        peers.append(DeepConfOnline(threshold, window, name=f"DeepConf keep={keep:g} s={threshold:.2f}"))
    peers.append(fixed_entropy_rule(options.fixed_bits, window=options.window, min_tokens=options.min_tokens))
    for index, rule in enumerate(peers):
        outcomes, row = _replayed(rule, traces)
        rows.append(row)
        confirm = index in (1, len(options.budgets)) or rule is peers[-1]
        if options.live and confirm:
            t0 = time.perf_counter()
            forced_row(rule.name, rule.family, outcomes, row, 0.0)
            if rows[-1].forced:
                rows[-1].wall_time_s = (row.wall_time_s or 0.0) + time.perf_counter() - t0
    for message in skipped:
        log(f"skipped: {message}")
    meta = {
        "source": source,
        "n": len(traces),
        "model": model,
        "max_tokens": max_tokens,
        "temperature": config.temperature if config else "as recorded",
        "k": max((t.k or 0 for t in traces), default=0) or 20,
        "profile": None
        if profile is None
        else f"{profile.model}: {profile.kind} tau[{profile.method}]={profile.tau:.4f}, "
        f"verdict {profile.verdict}",
        "window sweep": f"window {options.window}, min_tokens {options.min_tokens}",
        "answers at exits": answers.describe() or "none needed",
        "skipped rows": "; ".join(skipped) or "none",
        "wall time s": round(time.perf_counter() - started, 1),
    }
    write_results(out, rows, meta=meta, extra={"calibration": profile.to_dict() if profile else None})
    savings_vs_accuracy, entropy_distributions, trajectories = _plots()
    savings_vs_accuracy(rows, out / "savings_vs_accuracy.png")
    gate_tau = profile.tau if profile is not None and profile.kind == "sequence" else None
    entropy_distributions(traces, out / "entropy_distributions.png", gate_tau)
    trajectories(traces, chosen or peers[-1], out / "trajectories.png")
    (out / "results.md").write_text(markdown_table(rows, meta=meta))
    return rows


def _plots() -> tuple[Any, Any, Any]:
    from .plots import entropy_distributions, savings_vs_accuracy, trajectories

    return savings_vs_accuracy, entropy_distributions, trajectories
