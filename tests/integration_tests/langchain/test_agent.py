"""A create_agent agent with one real tool and EntropyExitMiddleware, on the embedded server."""

from __future__ import annotations

from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import wrap_model_call
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.langchain import EntropyExitMiddleware


@tool
def word_length(word: str) -> int:
    """Return the number of letters in a word."""
    return len(word)


@wrap_model_call
def call_the_tool_first(request: Any, handler: Any) -> Any:
    # SmolLM2-135M rarely decides to call a tool by itself: require it on the first step.
    if not any(isinstance(m, ToolMessage) for m in request.messages):
        request = request.override(tool_choice="required")
    return handler(request)


def test_agent_with_middleware_reports_per_step(llama_server: Any) -> None:
    model = ChatOpenAI(base_url=llama_server.base_url, api_key="sk-no-key", model=llama_server.model,
                       temperature=0, max_tokens=160, max_retries=0)
    middleware = EntropyExitMiddleware(ExitPolicy(threshold=1.5, min_tokens=8))
    agent = create_agent(model, tools=[word_length], middleware=[middleware, call_the_tool_first])
    result = agent.invoke({"messages": [{"role": "user", "content": "How many letters are in the word "
                                         "'lighthouse'? Use the tool, then explain the answer in detail."}]})
    messages = result["messages"]
    assert any(isinstance(m, ToolMessage) and m.content == "10" for m in messages)
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content
    steps = result["entropy_exit"]
    assert [s["step"] for s in steps] == list(range(len(steps))) and len(steps) >= 2
    assert steps[0]["exited"] is False  # the tool call was never cut
    summary = EntropyExitMiddleware.summary(result)
    assert summary["saved_per_step"] == [s["tokens_saved_vs_budget"] for s in steps]
    assert summary["tokens_saved_vs_budget"] == sum(summary["saved_per_step"])
    assert len(middleware.ledger) == len(steps)
