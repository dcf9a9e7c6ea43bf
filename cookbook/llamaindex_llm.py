"""EntropyExitLLM around a LlamaIndex OpenAILike: stop once the model is sure, force the answer.

Runs against the embedded llama.cpp server (started here) or any OpenAI-compatible server that
streams logprobs (``--base-url http://host:port/v1 --model NAME``). Prints the answer and the
tokens saved; fails if no exit happened.
"""

from __future__ import annotations

import argparse

from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike

from entropy_exit_integrations import ExitPolicy, SavingsLedger
from entropy_exit_integrations.lab.local import LocalServer
from entropy_exit_integrations.llama_index import REPORT_KEY, EntropyExitLLM, http_clients


def run(base_url: str, model: str) -> None:
    sync_client, async_client = http_clients()  # an exit closes the HTTP response: the server stops
    inner = OpenAILike(
        http_client=sync_client,
        async_http_client=async_client,
        model=model,
        api_base=base_url,
        api_key="sk-no-key",
        is_chat_model=True,
        max_tokens=200,
        temperature=0,
    )
    ledger = SavingsLedger()
    # An uncalibrated, hand-set threshold for this demo: use calibrate() for a real one.
    llm = EntropyExitLLM(
        llm=inner,
        policy=ExitPolicy(threshold=1.5, min_tokens=12),
        force_answer=True,
        ledger=ledger,
    )
    question = [ChatMessage(role="user", content="What is the capital of France? Explain why in detail.")]
    response = llm.chat(question)
    report = response.additional_kwargs[REPORT_KEY]
    print("answer:", response.message.content)
    print(
        f"exited: {report['exited']} at token {report['exit_token_index']}; "
        f"generated {report['tokens_generated']} (forced answer {report['forced_answer_tokens']}); "
        f"saved {report['tokens_saved_vs_budget']} of {report['max_tokens']} budget"
    )
    print("per-token logprobs on the response:", len(response.logprobs))
    print("streaming:", end=" ")
    for chunk in llm.stream_complete("Name three colours of the rainbow and describe each."):
        print(chunk.delta, end="", flush=True)
    print()
    print("ledger:", ledger)
    assert report["exited"], "expected an early exit"
    assert ledger.summary()["tokens_saved_vs_budget"] > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the embedded one)")
    parser.add_argument("--model", default="smollm2", help="model name for --base-url")
    args = parser.parse_args()
    if args.base_url:
        run(args.base_url, args.model)
        return
    with LocalServer(parallel=1) as server:
        run(server.base_url, server.model)


if __name__ == "__main__":
    main()
