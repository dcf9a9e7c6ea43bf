"""Agents on the embedded server with every model step monitored.

SmolLM2 cannot call tools on llama-server (its template has none), so the agent's model is
``ChatSchemaToolCalls``: a required call is generated as schema-constrained JSON and streamed
back as a tool call with its logprobs. Steps with tools bound but no call required go to
llama-server with ``tools``, where it refuses ``logprobs`` and the engine asks for ``n_probs``.
The model, the tool, the agent loop and the middleware are all real.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import wrap_model_call
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.lab.local.langchain_tools import ChatSchemaToolCalls
from entropy_exit_integrations.langchain import ChatEntropyExit, EntropyExitMiddleware


@tool
def word_length(word: str) -> int:
    """Return the number of letters in a word."""
    return len(word)


@wrap_model_call
def call_the_tool_first(request: Any, handler: Any) -> Any:
    """Step 1 must call the tool (a 135M model does not decide to by itself)."""
    if not any(isinstance(m, ToolMessage) for m in request.messages):
        request = request.override(tool_choice="required")
    return handler(request)


def _model(server: Any, max_tokens: int = 160) -> ChatSchemaToolCalls:
    return ChatSchemaToolCalls(
        base_url=server.base_url,
        api_key="sk-no-key",
        model=server.model,
        temperature=0,
        max_tokens=max_tokens,
        max_retries=0,
    )


def test_agent_with_middleware_monitors_every_step(llama_server: Any) -> None:
    middleware = EntropyExitMiddleware(ExitPolicy(threshold=2.0, min_tokens=8))
    agent = create_agent(
        _model(llama_server), tools=[word_length], middleware=[middleware, call_the_tool_first]
    )
    question = (
        "How many letters are in the word 'lighthouse'? Use the tool, then explain the answer in detail."
    )
    result = agent.invoke({"messages": [{"role": "user", "content": question}]})
    messages = result["messages"]
    tool_results = [m.content for m in messages if isinstance(m, ToolMessage)]
    assert tool_results == ["10"]
    ai_steps = [m for m in messages if isinstance(m, AIMessage)]
    steps = result["entropy_exit"]
    assert [s["step"] for s in steps] == list(range(len(ai_steps))) and len(steps) >= 2
    for message, step in zip(ai_steps, steps, strict=True):
        assert message.response_metadata["entropy_exit"] == {k: v for k, v in step.items() if k != "step"}
        # k may be 21: under the grammar the sampled token can be outside the top 20 (it is added)
        assert step["k"] >= 20 and step["unknown_tokens"] == 0 and step["tokens_generated"] > 0
        if message.tool_calls:  # a tool step is never cut
            assert not step["exited"] and step["finish_reason"] == "tool_calls"
            assert step["decision_token_index"] is not None  # it was confident: the guard held the stop
    assert ai_steps[0].tool_calls and steps[-1]["exited"] and steps[-1]["tokens_saved_vs_budget"] > 0
    summary = EntropyExitMiddleware.summary(result)
    assert summary["tokens_saved_vs_budget"] == sum(summary["saved_per_step"]) > 0
    assert len(middleware.ledger) == len(steps)


@pytest.mark.parametrize("use_async", [False, True])
async def test_bound_tools_step_is_monitored_through_n_probs(llama_server: Any, use_async: bool) -> None:
    """Tools bound, no call required: llama-server refuses logprobs, the engine asks for n_probs."""
    llm = ChatEntropyExit(model=_model(llama_server, 48), policy=ExitPolicy(threshold=0.0)).bind_tools(
        [word_length]
    )
    question = "How many letters are in 'cat'?"
    message = await llm.ainvoke(question) if use_async else llm.invoke(question)
    report = message.response_metadata["entropy_exit"]
    assert report["k"] == 20 and report["unknown_tokens"] == 0 and not report["exited"]
    assert (
        report["usage_source"] == "server"
        and report["tokens_generated"] == message.usage_metadata["output_tokens"]
    )


@pytest.mark.parametrize("use_async", [False, True])
async def test_required_tool_call_is_streamed_with_logprobs_and_never_cut(
    llama_server: Any, use_async: bool
) -> None:
    policy = ExitPolicy(threshold=10.0, min_tokens=2)  # confident from token 2: only the guard holds it
    llm = ChatEntropyExit(model=_model(llama_server), policy=policy).bind_tools(
        [word_length], tool_choice="required"
    )
    message = (
        await llm.ainvoke("Length of 'lighthouse'?") if use_async else llm.invoke("Length of 'lighthouse'?")
    )
    (call,) = message.tool_calls
    assert call["name"] == "word_length" and isinstance(call["args"]["word"], str)
    report = message.response_metadata["entropy_exit"]
    assert (
        not report["exited"]
        and report["decision_token_index"] == 1
        and report["finish_reason"] == "tool_calls"
    )
    assert report["k"] >= 20 and report["unknown_tokens"] == 0  # grammar: a sampled token may be added
