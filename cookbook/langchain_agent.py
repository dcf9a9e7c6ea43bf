"""A ``create_agent`` agent with one real tool and ``EntropyExitMiddleware``; per-step savings.

Runs against the embedded llama.cpp server (started here) or ``--base-url http://host:port/v1``
(with ``--model NAME``). Exits non-zero unless the tool ran and a report per step was produced
(it runs in CI).

llama.cpp's server refuses logprobs for a streamed request that carries ``tools`` ("logprobs is
not supported with tools + stream"), so on it the tool-calling step cannot be monitored: the
policy's ``on_missing="pass_through"`` runs such a step unmonitored (with a warning) instead of
failing. This demo agent calls its tool once, then answers without tools (a small middleware
below), so the answering step is monitored and cut. vLLM streams logprobs with tools, so there
every step is monitored.
"""

from __future__ import annotations

import argparse
import warnings

from langchain.agents import create_agent
from langchain.agents.middleware import wrap_model_call
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from entropy_exit_integrations import EntropyExitWarning, ExitPolicy
from entropy_exit_integrations.langchain import EntropyExitMiddleware
from entropy_exit_integrations.local import LocalServer


@tool
def word_length(word: str) -> int:
    """Return the number of letters in a word."""
    return len(word)


@wrap_model_call
def one_tool_call_then_answer(request, handler):  # type: ignore[no-untyped-def]
    """Step 1 must call the tool (a 135M model rarely decides to); afterwards, answer."""
    if any(isinstance(m, ToolMessage) for m in request.messages):
        request = request.override(tools=[], tool_choice=None)
    else:
        request = request.override(tool_choice="required")
    return handler(request)


def run(base_url: str, model: str) -> None:
    llm = ChatOpenAI(base_url=base_url, api_key="sk-no-key", model=model, temperature=0, max_tokens=200)
    policy = ExitPolicy(threshold=1.5, min_tokens=8, on_missing="pass_through")  # hand-set, uncalibrated
    middleware = EntropyExitMiddleware(policy)
    agent = create_agent(llm, tools=[word_length], middleware=[middleware, one_tool_call_then_answer])
    question = "How many letters are in the word 'lighthouse'? Use the tool, then explain in detail."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EntropyExitWarning)  # the unmonitored tool-calling step
        result = agent.invoke({"messages": [{"role": "user", "content": question}]})

    tool_results = [m.content for m in result["messages"] if isinstance(m, ToolMessage)]
    print("tool results:", tool_results)
    print("answer:", result["messages"][-1].content.strip())
    for step in result["entropy_exit"]:
        print(f"  step {step['step']}: exited={step['exited']} generated={step['tokens_generated']} "
              f"saved={step['tokens_saved_vs_budget']} of {step['max_tokens']}")
    summary = EntropyExitMiddleware.summary(result)
    print("saved tokens per step:", summary["saved_per_step"], "total:", summary["tokens_saved_vs_budget"])
    assert tool_results == ["10"], "the tool did not run"
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
