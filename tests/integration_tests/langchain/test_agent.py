"""A create_agent agent with one real tool and EntropyExitMiddleware, on the embedded server.

The embedded llama-server cannot call tools with SmolLM2 (its chat template has no tools, so the
server answers in plain text even with ``tool_choice="required"``), and it refuses logprobs on a
streamed request that carries ``tools``. The cookbook's ``JsonSchemaToolCalls`` fills the gap the
way llama.cpp can: a required tool call is generated as a JSON document constrained by the
tool's parameter schema (the server turns it into a grammar) and handed back as a tool call. The
model, the tool, the agent loop and the middleware are all real.
"""

from __future__ import annotations

from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage

from cookbook.langchain_agent import JsonSchemaToolCalls, call_the_tool_first, word_length
from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.langchain import EntropyExitMiddleware


def test_agent_with_middleware_reports_per_step(llama_server: Any) -> None:
    model = JsonSchemaToolCalls(
        base_url=llama_server.base_url,
        api_key="sk-no-key",
        model=llama_server.model,
        temperature=0,
        max_tokens=160,
        max_retries=0,
    )
    middleware = EntropyExitMiddleware(ExitPolicy(threshold=2.0, min_tokens=8))
    agent = create_agent(model, tools=[word_length], middleware=[middleware, call_the_tool_first])
    question = (
        "How many letters are in the word 'lighthouse'? Use the tool, then explain the answer in detail."
    )
    result = agent.invoke({"messages": [{"role": "user", "content": question}]})
    messages = result["messages"]
    tool_results = [m.content for m in messages if isinstance(m, ToolMessage)]
    assert tool_results and all(r.isdigit() for r in tool_results)
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content
    steps = result["entropy_exit"]

    assert [s["step"] for s in steps] == list(range(len(steps))) and len(steps) >= 2
    assert steps[0]["exited"] is False  # a tool call is never cut
    assert steps[-1]["exited"] and steps[-1]["tokens_saved_vs_budget"] > 0
    summary = EntropyExitMiddleware.summary(result)
    assert summary["saved_per_step"] == [s["tokens_saved_vs_budget"] for s in steps]
    assert summary["tokens_saved_vs_budget"] == sum(summary["saved_per_step"]) > 0
    assert len(middleware.ledger) == len(steps)
