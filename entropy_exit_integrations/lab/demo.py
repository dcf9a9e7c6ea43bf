"""``entropy-exit demo``: calibrate on the embedded model, then answer through a LangChain chain.

1. Starts the embedded llama.cpp server (built by ``entropy-exit setup``; the demo builds nothing),
   or uses the server at ``--base-url`` or ``ENTROPY_EXIT_BASE_URL``.
2. Calibrates on a few training questions of a task the embedded model can do: generated
   arithmetic (SmolLM2-135M solves no GSM8K problem), and prints the verdict on the signal.
3. Answers test questions twice through ``prompt | model``: the baseline (threshold 0: the same
   request, monitored but never stopped, so both runs count tokens the same way, one per logprob
   entry) and ``ChatEntropyExit`` with the calibrated policy and answer forcing, printing per
   question the answer, whether it is right, and the tokens of both; then the totals. The last
   line gives n, both accuracies with 95% Wilson intervals, the saved share, and where the
   savings came from: exits on answers the no-exit run got right vs already wrong.
4. Writes a PNG of the policy's aggregate entropy per answer, at each token of the answer's own
   trace (the tokens the monitor saw), with the exit points.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entropy_exit_integrations.core.calibration import Calibration, format_calibration
from entropy_exit_integrations.core.monitor import EntropyMonitor
from entropy_exit_integrations.core.policy import ExitPolicy

from .bench.commands import connect, run_calibration
from .bench.datasets import SYSTEM_PROMPTS, Problem, load_dataset
from .bench.graders import grade
from .bench.replay import token_from_json
from .bench.report import wilson
from .bench.runner import RunConfig

SYSTEM_PROMPT = "Explain your reasoning step by step, then end with 'The answer is N.' where N is a number."


@dataclass
class DemoRow:
    problem: Problem
    baseline_text: str
    baseline_tokens: int
    exit_text: str
    exit_report: dict[str, Any]
    exit_tokens: list[list[Any]]
    """The exit run's monitored tokens, in the trace format (``[text, logprob, [tops], ...]``)."""

    @property
    def baseline_correct(self) -> bool:
        return grade("numeric", self.baseline_text, self.problem.answer)

    @property
    def exit_correct(self) -> bool:
        return grade("numeric", self.exit_text, self.problem.answer)

    @property
    def exited(self) -> bool:
        return bool(self.exit_report["exited"])

    @property
    def saved(self) -> int:
        """Tokens the exit saved on this question (negative when forcing cost more)."""
        return self.baseline_tokens - int(self.exit_report["tokens_generated"])

    def curve(self, policy: ExitPolicy) -> list[float | None]:
        """The policy's aggregate entropy after each token of the exit run's own trace (index i:
        after token i, as the monitor saw it), replayed from the recorded tokens."""
        monitor = EntropyMonitor(policy)
        return [monitor.observe(token_from_json(row)).entropy for row in self.exit_tokens]


def calibrated_policy(cal: Calibration) -> ExitPolicy:
    """The demo's policy: the calibrated threshold over the sequence mean, as in the paper."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy = ExitPolicy.from_calibration(cal, allow_weak=True, aggregation="mean", min_tokens=12)
    for warning in caught:
        print(f"warning: {warning.message}")
    return policy


def answer_all(
    base_url: str, model: str, problems: list[Problem], policy: ExitPolicy, max_tokens: int
) -> list[DemoRow]:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    from entropy_exit_integrations.langchain import ChatEntropyExit

    inner = ChatOpenAI(  # type: ignore[call-arg]
        base_url=base_url,
        api_key=SecretStr("sk-no-key"),
        model=model,
        temperature=0,
        max_tokens=max_tokens,
    )
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM_PROMPT), ("user", "{question}")])
    baseline_chain = prompt | ChatEntropyExit(model=inner, policy=ExitPolicy(threshold=0.0))
    recorded: list[dict[str, Any]] = []  # the exit run's calls in the trace format (for the plot)
    exit_chain = prompt | ChatEntropyExit(
        model=inner, policy=policy, force_answer=True, trace_sink=recorded.append
    )
    rows = []
    for problem in problems:
        baseline = baseline_chain.invoke({"question": problem.question})
        stopped = exit_chain.invoke({"question": problem.question})
        rows.append(
            DemoRow(
                problem,
                StrOutputParser().invoke(baseline),
                baseline.response_metadata["entropy_exit"]["tokens_generated"],
                StrOutputParser().invoke(stopped),
                stopped.response_metadata["entropy_exit"],
                recorded.pop()["tokens"] if recorded else [],
            )
        )
        print_row(rows[-1])
    return rows


def print_row(row: DemoRow) -> None:
    report = row.exit_report
    where = f"exit@{report['exit_token_index']}" if report["exited"] else "no exit"
    answer = " ".join(row.exit_text.split())[-60:]
    print(
        f"  {row.problem.question:<22} want {row.problem.answer:>5}"
        f" | baseline {row.baseline_tokens:4d} tok {'right' if row.baseline_correct else 'wrong'}"
        f" | exit {report['tokens_generated']:4d} tok ({where}, forced {report['forced_answer_tokens']})"
        f" {'right' if row.exit_correct else 'wrong'}: ...{answer}"
    )


def print_totals(rows: list[DemoRow], policy: ExitPolicy) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"entropy exit vs baseline (threshold {policy.threshold:.3f} bits, {policy.aggregation})"
    )
    for column in (
        "question",
        "answer",
        "baseline tokens",
        "baseline",
        "exit tokens",
        "exit",
        "forced",
        "exit answer",
    ):
        table.add_column(column)
    for row in rows:
        report = row.exit_report
        table.add_row(
            row.problem.question,
            row.problem.answer,
            str(row.baseline_tokens),
            "right" if row.baseline_correct else "wrong",
            str(report["tokens_generated"]),
            "right" if row.exit_correct else "wrong",
            str(report["forced_answer_tokens"]),
            " ".join(row.exit_text.split())[-40:],
        )
    base = sum(r.baseline_tokens for r in rows)
    cut = sum(r.exit_report["tokens_generated"] for r in rows)
    table.add_row(
        "total",
        "",
        str(base),
        f"{sum(r.baseline_correct for r in rows)}/{len(rows)}",
        str(cut),
        f"{sum(r.exit_correct for r in rows)}/{len(rows)}",
        str(sum(r.exit_report["forced_answer_tokens"] for r in rows)),
        "",
    )
    Console(width=160).print(table)


def summary_line(rows: list[DemoRow]) -> str:
    """The demo's verdict in one line: n, both accuracies with 95% Wilson intervals, the tokens
    saved, and where they came from (exits on answers the no-exit run got right vs wrong)."""
    n = len(rows)
    base = sum(r.baseline_tokens for r in rows)
    cut = sum(int(r.exit_report["tokens_generated"]) for r in rows)

    def accuracy(right: int) -> str:
        low, high = wilson(right, n)
        return f"{right}/{n} (95% CI {low:.0%}-{high:.0%})"

    exits = [r for r in rows if r.exited]
    on_right = [r for r in exits if r.baseline_correct]
    on_wrong = [r for r in exits if not r.baseline_correct]
    kept = sum(r.exit_correct for r in on_right)
    fixed = sum(r.exit_correct for r in on_wrong)
    saved = base - cut
    share = saved / base if base else 0.0
    line = (
        f"n={n}: accuracy no exit {accuracy(sum(r.baseline_correct for r in rows))}, "
        f"with exit {accuracy(sum(r.exit_correct for r in rows))}; "
        f"tokens {base} -> {cut} (forced answers included), saved {saved} = {share:.1%}; "
        f"exits {len(exits)}/{n}: {len(on_right)} on answers the no-exit run got right "
        f"({kept} kept right, {sum(r.saved for r in on_right)} tokens saved), "
        f"{len(on_wrong)} on answers already wrong ({fixed} made right, "
        f"{sum(r.saved for r in on_wrong)} tokens saved)"
    )
    if exits and not on_right:
        line += ": no exit was tested on a right answer"
    if n < 30:
        line += f"; n={n} shows the mechanism, it does not measure a saving"
    return line


def plot_trajectories(rows: list[DemoRow], policy: ExitPolicy, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, row in enumerate(rows):
        report = row.exit_report
        curve = row.curve(policy)  # one point per token of this answer's own trace
        xs = [j for j, value in enumerate(curve) if value is not None]
        (line,) = ax.plot(xs, [curve[j] for j in xs], lw=1.3, label=f"q{i + 1}")
        if report["exited"]:
            ax.plot([report["exit_token_index"]], [report["aggregate_entropy"]], "o", color=line.get_color())
    ax.axhline(policy.threshold, color="black", ls="--", lw=1, label=f"threshold {policy.threshold:.2f} bits")
    ax.set_xlabel("token index in the answer's trace (the tokens the monitor saw)")
    ax.set_ylabel(f"{policy.aggregation} entropy, bits (top-{policy.top_k}, renormalised)")
    ax.set_title(f"The policy's aggregate ({policy.aggregation}) per answer; dots mark the early exits")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(
    *,
    base_url: str | None = None,
    model: str | None = None,
    n_calibration: int = 16,
    n_test: int = 8,
    max_tokens: int = 128,
    out_dir: str | Path = "demo-out",
) -> list[DemoRow]:
    """Run the whole demo; returns the per-question rows (the CLI prints everything)."""
    from .local.pins import ENV_BASE_URL

    if base_url is not None:
        print(f"1/4 using the server at {base_url}")
    elif os.environ.get(ENV_BASE_URL):  # the embedded server's stand-in: nothing starts
        print(f"1/4 using the server at {os.environ[ENV_BASE_URL]} ({ENV_BASE_URL})")
    else:
        print("1/4 starting the embedded llama.cpp server (built by `entropy-exit setup`)")
    with connect(base_url, model) as (client, model_id):
        server_url = str(client.base_url).rstrip("/")
        print(f"    server {server_url}, model {model_id}")
        print(f"2/4 calibrating on {n_calibration} generated arithmetic questions (train seed)")
        config = RunConfig(model=model_id, max_tokens=max_tokens, system_prompt=SYSTEM_PROMPT, progress=False)
        cal = run_calibration(
            client, config, dataset="arithmetic", n=n_calibration, out=Path(out_dir) / "profile.json"
        )
        print(format_calibration(cal))
        policy = calibrated_policy(cal)
        print(f"3/4 answering {n_test} test questions: baseline (no exit) vs ChatEntropyExit")
        problems = load_dataset("arithmetic", split="test", n=n_test)
        rows = answer_all(server_url, model_id, problems, policy, max_tokens)
    print_totals(rows, policy)
    path = plot_trajectories(rows, policy, Path(out_dir) / "entropy_trajectories.png")
    print(f"4/4 wrote {path}")
    print(summary_line(rows))  # the last line: the verdict
    return rows


__all__ = ["SYSTEM_PROMPTS", "run_demo"]
