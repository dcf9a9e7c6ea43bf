"""A ``create_agent`` agent with one real tool and ``EntropyExitMiddleware``; per-step savings.

Runs against the embedded llama.cpp server (started here) or ``--base-url http://host:port/v1``
(with ``--model NAME``). Exits non-zero unless the tool ran and a report per step was produced
(it runs in CI).

SmolLM2 cannot call tools on the embedded llama-server (its chat template has none, so it
answers in plain text even with ``tool_choice="required"``). ``ChatSchemaToolCalls`` fills the
gap: a required tool call is generated as JSON constrained by the tool's schema (a grammar on
the server) and streamed back as a tool call with its logprobs, so every step is monitored.
With a server and model that call tools themselves (vLLM with a tool parser), use plain
``ChatOpenAI`` instead.
"""

from __future__ import annotations

import argparse
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import wrap_model_call
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.lab.local import LocalServer
from entropy_exit_integrations.lab.local.langchain_tools import ChatSchemaToolCalls
from entropy_exit_integrations.langchain import EntropyExitMiddleware


@tool
def word_length(word: str) -> int:
    """Return the number of letters in a word."""
    return len(word)


@wrap_model_call
def call_the_tool_first(request: Any, handler: Any) -> Any:
    """Step 1 must call the tool (a 135M model rarely decides to by itself)."""
    if not any(isinstance(m, ToolMessage) for m in request.messages):
        request = request.override(tool_choice="required")
    return handler(request)


def run(base_url: str, model: str) -> None:
    llm = ChatSchemaToolCalls(
        base_url=base_url, api_key="sk-no-key", model=model, temperature=0, max_tokens=200
    )
    middleware = EntropyExitMiddleware(ExitPolicy(threshold=2.0, min_tokens=8))  # hand-set, uncalibrated
    agent = create_agent(llm, tools=[word_length], middleware=[middleware, call_the_tool_first])
    question = "How many letters are in the word 'lighthouse'? Use the tool, then explain in detail."
    result = agent.invoke({"messages": [{"role": "user", "content": question}]})

    tool_results = [m.content for m in result["messages"] if isinstance(m, ToolMessage)]
    print("tool results:", tool_results)
    print("answer:", result["messages"][-1].content.strip())
    for step in result["entropy_exit"]:
        print(
            f"  step {step['step']}: exited={step['exited']} generated={step['tokens_generated']} "
            f"saved={step['tokens_saved_vs_budget']} of {step['max_tokens']}"
        )
    summary = EntropyExitMiddleware.summary(result)
    print("saved tokens per step:", summary["saved_per_step"], "total:", summary["tokens_saved_vs_budget"])
    assert tool_results, "the tool did not run"
    assert summary["steps"] >= 2, "no per-step report"
    assert summary["exits"] >= 1, "no early exit happened"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the embedded one)")
    parser.add_argument("--model", help="model id (default: the server's)")
    args = parser.parse_args()
    with LocalServer(base_url=args.base_url, model_id=args.model, parallel=2) as server:
        run(server.base_url, server.model)


if __name__ == "__main__":
    main()
