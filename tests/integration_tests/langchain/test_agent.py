"""A create_agent agent with one real tool and EntropyExitMiddleware, on the embedded server.

The embedded llama-server cannot call tools with SmolLM2 (its chat template has no tools, so the
server answers in plain text even with ``tool_choice="required"``), and it refuses logprobs on a
streamed request that carries ``tools``. ``JsonSchemaToolCalls`` below is a test-only ChatOpenAI
that fills the gap the way llama.cpp can: a required tool call is generated as a JSON document
constrained by the tool's parameter schema (the server turns it into a grammar) and handed back
as a tool call. The model, the tool, the agent loop and the middleware are all real.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import wrap_model_call
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.langchain import EntropyExitMiddleware


class JsonSchemaToolCalls(ChatOpenAI):
    """ChatOpenAI for a server without tool calling (test-only; see the module docstring)."""

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        tools = kwargs.pop("tools", None)
        choice = kwargs.pop("tool_choice", None)
        kwargs.pop("parallel_tool_calls", None)
        messages = [_as_text(m) for m in messages]
        if not tools or choice not in ("required", "any"):
            yield from super()._stream(messages, stop, run_manager, **kwargs)
            return
        function = tools[0]["function"]
        kwargs["extra_body"] = {"json_schema": function["parameters"]}  # llama-server: grammar
        args = "".join(c.text for c in super()._stream(messages, stop, run_manager, **kwargs))
        json.loads(args)
        call = tool_call_chunk(name=function["name"], args=args, id="call_0", index=0)
        yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[call]))


def _as_text(message: BaseMessage) -> BaseMessage:
    """Tool turns as plain text, for a chat template that has no tool roles."""
    if isinstance(message, ToolMessage):
        return HumanMessage(f"The tool returned: {message.content}")
    if isinstance(message, AIMessage) and message.tool_calls:
        calls = ", ".join(f"{c['name']}({json.dumps(c['args'])})" for c in message.tool_calls)
        return AIMessage(f"I call the tool: {calls}")
    return message


@tool
def word_length(word: str) -> int:
    """Return the number of letters in a word."""
    return len(word)


@wrap_model_call
def call_the_tool_first(request: Any, handler: Any) -> Any:
    # A 135M model rarely decides to call a tool by itself: require it on the first step.
    if not any(isinstance(m, ToolMessage) for m in request.messages):
        request = request.override(tool_choice="required")
    return handler(request)


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
