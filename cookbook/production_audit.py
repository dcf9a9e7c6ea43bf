"""Trust it in production: sampled audits of exits, a live bound, traces that recalibrate.

    python cookbook/production_audit.py                  # embedded server (SmolLM2-135M), ~1-2 min
    python cookbook/production_audit.py --base-url http://GPU-HOST:8000/v1 --model Qwen/Qwen3-8B \\
        --questions 400 --max-tokens 1024

Four steps, as a deployment runs them:

1. calibrate a streaming policy on a few graded questions (``entropy-exit calibrate``); when that
   finds no usable threshold (likely with the tiny embedded model and a small n), a hand-set
   uncalibrated policy is used instead, and the output says so;
2. serve GSM8K test questions through ``stream_chat`` with ``ExitOptions(audit=AuditRule(rate=0.25),
   trace_sink=..., ledger=SavingsLedger())``: a quarter of the exit decisions are audited (the
   stream is read to its end, the exit's forced answer asked on a second slot and compared);
3. print the live bound (``ledger.audit()``) and what the audits cost: one forced answer per
   audited call, plus the tokens those calls did not save;
4. recalibrate from the trace sink (``entropy-exit calibrate --traces SINK --risk 0.05``): each
   traced call is graded against its own full answer (``label: answer_changed``).

Exits non-zero when a step did not happen (no exit decision audited, no trace written, the
recalibration failed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import openai

from entropy_exit_integrations import AuditRule, ExitOptions, ExitPolicy, SavingsLedger
from entropy_exit_integrations.core.calibration import Calibration
from entropy_exit_integrations.errors import PolicyError
from entropy_exit_integrations.lab.bench.datasets import load_dataset, messages_for
from entropy_exit_integrations.lab.cli import main as entropy_exit
from entropy_exit_integrations.lab.local import LocalServer
from entropy_exit_integrations.openai import stream_chat

SHAPE = {"aggregation": "window", "window": 16, "min_tokens": 16}
#: Used when calibration finds no usable threshold: NOT calibrated, shown for the mechanics.
HAND_SET = ExitPolicy(threshold=1.5, **SHAPE)  # type: ignore[arg-type]


def calibrate(endpoint: list[str], out: Path, n: int, max_tokens: int) -> tuple[ExitPolicy, str]:
    """Step 1: the calibrated policy, or the hand-set one when calibration finds none."""
    profile = out / "profile.json"
    argv = ["calibrate", *endpoint, "--dataset", "arithmetic", "--n", str(n), "--risk", "0.2"]
    argv += ["--aggregation", "window", "--window", "16", "--min-tokens", "16"]
    argv += ["--max-tokens", str(max_tokens), "--no-progress", "--out", str(profile)]
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = entropy_exit(argv)
    if code == 0 and profile.exists():
        try:
            return ExitPolicy.from_calibration(Calibration.load(profile)), "calibrated"
        except PolicyError as error:
            reason = str(error)
    else:
        reason = errors.getvalue().strip() or f"entropy-exit calibrate exited with {code}"
    print(f"calibration found no usable threshold ({reason})")
    print(f"USING A HAND-SET, UNCALIBRATED POLICY: threshold {HAND_SET.threshold} bits, window 16")
    return HAND_SET, "hand-set (uncalibrated)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the embedded one)")
    parser.add_argument("--model")
    parser.add_argument("--questions", type=int, default=40, help="GSM8K test questions served")
    parser.add_argument("--max-tokens", type=int, default=64, help="budget per question")
    parser.add_argument("--n-calibration", type=int, default=8)
    parser.add_argument("--rate", type=float, default=0.25, help="audit rate")
    parser.add_argument("--seed", type=int, default=3, help="audit sampling seed")
    parser.add_argument("--out", default=None, help="output directory (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="entropy-exit-audit-"))
    out.mkdir(parents=True, exist_ok=True)
    sink = out / "prod.jsonl"
    sink.unlink(missing_ok=True)
    started = time.perf_counter()
    with LocalServer(parallel=2, base_url=args.base_url) as server:
        model = args.model or server.model
        endpoint = ["--base-url", server.base_url, "--model", model]
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-no-key")

        print("== 1. calibrate")
        policy, origin = calibrate(endpoint, out, args.n_calibration, args.max_tokens)
        print(f"policy ({origin}): {policy}")

        print(f"\n== 2. serve {args.questions} GSM8K test questions, auditing {args.rate:.0%} of exits")
        ledger = SavingsLedger(confidence=0.95)
        options = ExitOptions(
            policy=policy,
            force_answer=True,
            audit=AuditRule(rate=args.rate, seed=args.seed),
            trace_sink=str(sink),
            ledger=ledger,
        )
        problems = load_dataset("gsm8k", split="test", n=args.questions)
        for problem in problems:
            result = stream_chat(
                client,
                options=options,
                model=model,
                messages=messages_for(problem),
                max_tokens=args.max_tokens,
                temperature=0,
            )
            report = result.report
            if report.audited:
                verdict = "HARMFUL" if report.audit_harmful else "harmless"
                print(
                    f"  audited {problem.id}: exit answer {report.audit_exit_answer!r} vs full run "
                    f"-> {verdict}; would have saved {report.audit_would_save} tokens, "
                    f"audit cost {report.audit_tokens}"
                )

        print("\n== 3. the live bound")
        summary = ledger.audit()
        print(ledger.audit())
        print(
            f"cost of the audits: {summary.audited} audited calls, one forced answer each = "
            f"{summary.audit_tokens} tokens, plus {summary.audit_would_have_saved} tokens they did not "
            f"save; {summary.exits} exits saved {summary.tokens_saved} tokens; "
            f"net {summary.net_tokens_saved}"
        )
        lines = sink.read_text().splitlines() if sink.exists() else []
        print(f"trace sink: {len(lines)} calls written to {sink}")

        print("\n== 4. recalibrate from the sink")
        recalibrated = out / "recalibrated.json"
        argv = ["calibrate", "--traces", str(sink), "--risk", "0.05", *endpoint]
        argv += ["--window", "16", "--min-tokens", "16", "--max-tokens", str(args.max_tokens)]
        argv += ["--no-progress", "--out", str(recalibrated)]
        print("$ entropy-exit " + " ".join(argv))
        code = entropy_exit(argv)

    cal = Calibration.load(recalibrated) if code == 0 and recalibrated.exists() else None
    if cal is not None and cal.risk is not None:
        if cal.usable:
            print(f"\nrecalibrated: threshold {cal.tau:.4f} bits ({cal.risk.detail})")
        else:
            print(f"\nrecalibrated: no threshold qualifies yet ({cal.risk.detail}); keep the current policy")
    print(f"outputs in {out} ({time.perf_counter() - started:.0f} s)")
    failures = []
    if summary.audited == 0:
        failures.append("no exit decision was audited")
    if len(lines) < len(problems):
        failures.append(f"the trace sink holds {len(lines)} calls, not {len(problems)}")
    if cal is None or cal.risk is None:
        failures.append(f"the recalibration did not run (exit code {code})")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
