"""Entropy early exit over the plain openai SDK: stream to the terminal, stop when sure.

    python cookbook/openai_stream.py                     # starts the embedded llama.cpp server
    python cookbook/openai_stream.py --base-url http://127.0.0.1:8080/v1 --model my-model

Prints the streamed text, why it ended, and the savings report; asserts that an exit happened.
"""

from __future__ import annotations

import argparse

import openai

from entropy_exit_integrations import ExitPolicy, SavingsLedger
from entropy_exit_integrations.lab.local import LocalServer
from entropy_exit_integrations.openai import iter_chat


def main() -> None:
    parser = argparse.ArgumentParser(description="entropy early exit over the openai SDK")
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the embedded one)")
    parser.add_argument("--model")
    args = parser.parse_args()
    # Uncalibrated on purpose, to show the mechanics: see cookbook/calibrate_and_bench.py for a
    # threshold measured on the model.
    policy = ExitPolicy(threshold=1.5, aggregation="window", window=16, min_tokens=16)
    ledger = SavingsLedger()
    with LocalServer(parallel=1, base_url=args.base_url) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-no-key")
        question = "A baker has 12 loaves and sells 5. How many are left? Explain step by step."
        with iter_chat(
            client,
            policy=policy,
            force_answer=True,
            ledger=ledger,
            model=args.model or server.model,
            messages=[{"role": "user", "content": question}],
            max_tokens=300,
            temperature=0,
        ) as stream:
            for delta in stream:
                print(delta.text, end="", flush=True)
        result = stream.result
    print(f"\n\nfinish_reason: {result.finish_reason}")
    print(f"forced answer: {result.forced_answer!r}")
    print(f"report: {result.report}")
    print(f"ledger: {ledger}")
    assert result.finish_reason == "entropy_exit", "expected an early exit with this threshold"
    assert result.report.tokens_saved_vs_budget and result.report.tokens_saved_vs_budget > 0


if __name__ == "__main__":
    main()
