"""A LlamaIndex ReActAgent and a query engine on EntropyExitLLM; per-step savings from the ledger.

Also attaches ``EntropyExitEventHandler`` so that the query engine's response carries the reports
of its LLM calls. Runs against the embedded llama.cpp server (started here) or
``--base-url http://host:port/v1 --model NAME``. Fails if no report was produced.

Note: llama-server refuses logprobs with ``tools`` + ``stream``, so a FunctionAgent (which always
sends ``tools``) cannot be monitored there; the ReActAgent puts its tools in the prompt instead.
"""

from __future__ import annotations

import argparse
import asyncio

from llama_index.core import Document, SummaryIndex
from llama_index.core.agent.workflow import ReActAgent
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike

from entropy_exit_integrations import ExitPolicy, SavingsLedger
from entropy_exit_integrations.lab.local import LocalServer
from entropy_exit_integrations.llama_index import (
    REPORT_KEY,
    EntropyExitEventHandler,
    EntropyExitLLM,
    http_clients,
)


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


async def run(base_url: str, model: str) -> None:
    sync_client, async_client = http_clients()  # an exit closes the HTTP response: the server stops
    inner = OpenAILike(
        http_client=sync_client,
        async_http_client=async_client,
        model=model,
        api_base=base_url,
        api_key="sk-no-key",
        is_chat_model=True,
        max_tokens=128,
        temperature=0,
        context_window=4096,
    )
    ledger = SavingsLedger()
    policy = ExitPolicy(threshold=2.0, min_tokens=8)  # hand-set for the demo (uncalibrated)
    llm = EntropyExitLLM(llm=inner, policy=policy, ledger=ledger)

    agent = ReActAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm)
    result = await agent.run("What is 6 times 7?")
    print("agent answer:", str(result).strip())
    for step, report in enumerate(ledger.reports, 1):
        print(f"  step {step}: {report}")

    handler = EntropyExitEventHandler(policy=policy)
    get_dispatcher().add_event_handler(handler)
    docs = [Document(text="The Eiffel Tower is in Paris."), Document(text="Paris is the capital of France.")]
    response = SummaryIndex.from_documents(docs).as_query_engine(llm=llm).query("Where is the Eiffel Tower?")
    print("query answer:", str(response).strip())
    records = response.metadata[REPORT_KEY]
    for record in records:
        r = record["report"]
        print(
            f"  query LLM call: exited={r['exited']} generated={r['tokens_generated']} "
            f"saved={r['tokens_saved_vs_budget']}"
        )
    print("ledger:", ledger)
    assert len(ledger) >= 2 and records, "expected reports from the agent and the query engine"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the embedded one)")
    parser.add_argument("--model", default="smollm2", help="model name for --base-url")
    args = parser.parse_args()
    if args.base_url:
        asyncio.run(run(args.base_url, args.model))
        return
    with LocalServer(parallel=1) as server:
        asyncio.run(run(server.base_url, server.model))


if __name__ == "__main__":
    main()
