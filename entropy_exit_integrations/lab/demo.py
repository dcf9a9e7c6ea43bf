"""``entropy-exit demo``: calibrate on the embedded model, then answer through a LangChain chain.

1. Starts the embedded llama.cpp server (building it once into the cache, with progress).
2. Calibrates on a few training questions of a task the embedded model can do: generated
   arithmetic (SmolLM2-135M solves no GSM8K problem), and prints the verdict on the signal.
3. Answers test questions twice through ``prompt | model``: the baseline (threshold 0: the same
   request, monitored but never stopped, so both runs count tokens the same way, one per logprob
   entry) and ``ChatEntropyExit`` with the calibrated policy and answer forcing, printing per
   question the answer, whether it is right, and the tokens of both; then the totals and the
   saved share.
4. Writes a PNG of the token-entropy trajectories with the exit points.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entropy_exit_integrations.core.calibration import Calibration, format_calibration
from entropy_exit_integrations.core.policy import ExitPolicy

from .bench.commands import connect, run_calibration
from .bench.datasets import SYSTEM_PROMPTS, Problem, load_dataset
from .bench.graders import grade
from .bench.runner import RunConfig

SYSTEM_PROMPT = "Explain your reasoning step by step, then end with 'The answer is N.' where N is a number."


@dataclass
class DemoRow:
    problem: Problem
    baseline_text: str
    baseline_tokens: int
    exit_text: str
    exit_report: dict[str, Any]

    @property
    def baseline_correct(self) -> bool:
        return grade("numeric", self.baseline_text, self.problem.answer)

    @property
    def exit_correct(self) -> bool:
        return grade("numeric", self.exit_text, self.problem.answer)


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
    exit_chain = prompt | ChatEntropyExit(model=inner, policy=policy, force_answer=True)
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
    saved = 1 - cut / base if base else 0.0
    print(
        f"tokens: baseline {base}, with entropy exit {cut} (forced answers included): "
        f"saved {base - cut} = {saved:.1%}; exits {sum(r.exit_report['exited'] for r in rows)}/{len(rows)}"
    )


def plot_trajectories(rows: list[DemoRow], policy: ExitPolicy, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, row in enumerate(rows):
        report = row.exit_report
        blocks = report["entropy"]["trace"]
        monitored = report["tokens_generated"] - report["forced_answer_tokens"]
        size = max(1, math.ceil(monitored / max(len(blocks), 1)))  # tokens per trace point
        xs, running, total, count = [], [], 0.0, 0
        for j, value in enumerate(blocks):
            if value is not None:
                total, count = total + value, count + 1
            if count:
                xs.append(j * size + size - 1)
                running.append(total / count)
        (line,) = ax.plot(xs, running, lw=1.3, label=f"q{i + 1}")
        if report["exited"]:
            ax.plot([report["exit_token_index"]], [report["aggregate_entropy"]], "o", color=line.get_color())
    ax.axhline(policy.threshold, color="black", ls="--", lw=1, label=f"threshold {policy.threshold:.2f} bits")
    ax.set_xlabel("generated token")
    ax.set_ylabel("running mean entropy, bits (top-20, renormalised)")
    ax.set_title("The policy's aggregate (sequence mean) per answer; dots mark the early exits")
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
    if base_url is None:
        print("1/4 starting the embedded llama.cpp server")
    else:
        print(f"1/4 using the server at {base_url}")
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
    return rows


__all__ = ["SYSTEM_PROMPTS", "run_demo"]
