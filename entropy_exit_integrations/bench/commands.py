"""The ``calibrate`` and ``bench`` commands as functions (the CLI only parses arguments)."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.calibration import METHODS, Calibration, calibrate
from ..core.policy import ExitPolicy
from ..gate import EntropyGate, Refine
from .datasets import load_dataset
from .gating import gate_summary, run_extended
from .plots import entropy_distributions, savings_vs_accuracy, trajectories
from .replay import Outcome, RuleSummary, Trace, replay_rule, save_traces, summarise
from .report import markdown_table, write_results
from .rules import BudgetCut, DeepConfOnline, PolicyRule, deepconf_threshold, fixed_entropy_rule
from .runner import RunConfig, force_answers, record_traces, run_live


@contextlib.contextmanager
def connect(
    base_url: str | None, model: str | None, api_key: str = "sk-no-key", model_file: str | None = None
) -> Iterator[tuple[Any, str]]:
    """An openai client and model id; starts the embedded server when no base URL is given.

    ``model_file`` (a GGUF path, or ``"qwen2.5-coder-0.5b"`` to fetch the opt-in benchmark model
    with ``models.fetch_qwen_coder_05b``) replaces the embedded SmolLM2 model.
    """
    import openai

    with contextlib.ExitStack() as stack:
        if base_url is None:
            from ..local import LocalServer

            settings: dict[str, Any] = {}
            if model_file:
                path = Path(model_file)
                if model_file == "qwen2.5-coder-0.5b":
                    from ..local.pins import cache_dir
                    from .models import fetch_qwen_coder_05b

                    path = fetch_qwen_coder_05b(cache_dir() / "models")
                settings = {"model_path": path, "alias": path.stem}
            server = stack.enter_context(LocalServer(**settings))
            base_url, model = server.base_url, model or server.model
        client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
        if model is None:
            model = client.models.list().data[0].id
        yield client, model


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
) -> Calibration:
    """Run n calibration questions (train split where one exists), grade, calibrate, save."""
    problems = load_dataset(dataset, split="train", n=n, seed=seed)
    traces = record_traces(client, problems, config)
    if traces_out:
        save_traces(traces, traces_out)
    examples = [(t.tokens, t.correct, len(t.tokens)) for t in traces]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = calibrate(examples, method, model=config.model)  # type: ignore[arg-type]
    for warning in caught:
        print(f"warning: {warning.message}")
    if out:
        cal.save(out)
    return cal


@dataclass
class BenchOptions:
    """Knobs of a benchmark run beyond the request settings."""

    window: int = 16
    min_tokens: int = 16
    sweep: int = 8
    live: bool = True
    budgets: tuple[float, ...] = (0.25, 0.5, 0.75)
    deepconf_keep: tuple[float, ...] = (0.9, 0.1)
    fixed_bits: float = 0.15
    extended: Any = field(default_factory=Refine)


def _replayed(rule: Any, traces: list[Trace]) -> tuple[list[Outcome], RuleSummary]:
    outcomes = [replay_rule(rule, t) for t in traces]
    wall = sum(t.wall_time_s * o.tokens_used / max(len(t.tokens), 1) for t, o in zip(traces, outcomes))
    threshold = getattr(getattr(rule, "policy", None), "threshold", getattr(rule, "threshold", None))
    if isinstance(rule, BudgetCut):
        threshold = float(rule.budget)
    return outcomes, summarise(
        rule.name, rule.family, outcomes, traces, wall_time_s=wall, threshold=threshold
    )


def _policy(tau: float, options: BenchOptions, cal: Calibration | None = None) -> ExitPolicy:
    shape = {"aggregation": "window", "window": options.window, "min_tokens": options.min_tokens}
    if cal is None:
        return ExitPolicy(threshold=max(tau, 0.0), **shape)  # type: ignore[arg-type]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy = ExitPolicy.from_calibration(cal, allow_weak=True, **shape)
    for warning in caught:
        print(f"warning: {warning.message}")
    return policy


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
) -> list[RuleSummary]:
    """Record, replay every rule, confirm the chosen ones live, write results, table and plots."""
    options = options or BenchOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = load_dataset(dataset, split="test", n=n, seed=seed)
    started = time.perf_counter()
    traces = record_traces(client, problems, config)
    save_traces(traces, out / "traces.jsonl")
    base_wall = sum(t.wall_time_s for t in traces)
    rows = [
        summarise(
            "no exit (baseline)",
            "baseline",
            [replay_rule(BudgetCut(10**9), t) for t in traces],
            traces,
            wall_time_s=base_wall,
        )
    ]
    rows[0].extra["wall_measured"] = True
    entropies = [t.entropy for t in traces if t.entropy is not None]
    grid = sorted(set(np.round(np.linspace(min(entropies), max(entropies), options.sweep), 4)))
    taus = {name: value for name, value in (profile.taus.items() if profile else []) if value is not None}
    # our streaming exit: the calibrated policy live (forcing included), a sweep replayed
    chosen = None
    if profile is not None:
        policy = _policy(profile.tau, options, profile)
        chosen = PolicyRule(f"stream exit tau[{profile.method}]", policy)
        if options.live:
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
    for name, tau in [(f"tau[{m}]", taus[m]) for m in METHODS if m in taus] + [(f"{t:.3f}", t) for t in grid]:
        rows.append(_replayed(PolicyRule(f"stream exit {name}", _policy(tau, options)), traces)[1])
    # the paper's gate: extended step once per question, every tau offline
    gate = EntropyGate(profile.tau if profile else float(np.median(entropies)), options.extended)
    extended = run_extended(client, problems, traces, gate, config)
    for name, tau in [(f"tau[{m}]", taus[m]) for m in METHODS if m in taus] + [(f"{t:.3f}", t) for t in grid]:
        rows.append(gate_summary(f"gate {name}", float(tau), traces, extended))
    rows.append(gate_summary("always extend", None, traces, extended))
    # peers on the same model
    warm = (
        (profile.deepconf_threshold, profile.deepconf_window)
        if profile and profile.deepconf_threshold
        else None
    )
    peers: list[Any] = [BudgetCut(max(1, int(config.max_tokens * f))) for f in options.budgets]
    for keep in options.deepconf_keep:
        window = min(options.window, max(4, config.max_tokens // 4))
        threshold = deepconf_threshold([t.tokens for t in traces[:16]], keep=keep, window=window)
        if warm is not None and keep == options.deepconf_keep[0]:
            threshold, window = warm[0], int(warm[1] or window)
        peers.append(DeepConfOnline(threshold, window, name=f"DeepConf keep={keep:g} s={threshold:.2f}"))
    peers.append(fixed_entropy_rule(options.fixed_bits, window=options.window, min_tokens=options.min_tokens))
    for index, rule in enumerate(peers):
        outcomes, row = _replayed(rule, traces)
        rows.append(row)
        confirm = index in (1, len(options.budgets)) or rule is peers[-1]
        if options.live and confirm and row.exits:
            t0 = time.perf_counter()
            forced = force_answers(client, traces, outcomes, config, problems)
            extra = time.perf_counter() - t0
            rows.append(
                summarise(
                    rule.name + " (forced)",
                    rule.family,
                    forced,
                    traces,
                    forced=True,
                    wall_time_s=(row.wall_time_s or 0.0) + extra,
                    threshold=row.threshold,
                )
            )
    meta = {
        "dataset": dataset,
        "n": len(problems),
        "model": config.model,
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "k": 20,
        "profile": None
        if profile is None
        else f"{profile.model}: tau[{profile.method}]={profile.tau:.3f}, verdict {profile.verdict}",
        "policy shape": f"window {options.window}, min_tokens {options.min_tokens}",
        "wall time s": round(time.perf_counter() - started, 1),
    }
    write_results(out, rows, meta=meta, extra={"calibration": profile.to_dict() if profile else None})
    savings_vs_accuracy(rows, out / "savings_vs_accuracy.png")
    entropy_distributions(traces, out / "entropy_distributions.png", profile.tau if profile else None)
    trajectories(traces, chosen or peers[-1], out / "trajectories.png")
    (out / "results.md").write_text(markdown_table(rows, meta=meta))
    return rows
