"""ChatSchemaToolCalls: tool calling for small local models that cannot call tools themselves.

SmolLM2's chat template has no tools, and Qwen2.5-Coder-0.5B answers a tool request with a bare
``{"name": ..., "arguments": ...}`` that llama.cpp does not parse as a tool call, so neither
drives an agent on the embedded llama.cpp server. This ``ChatOpenAI`` fills the gap the way
llama.cpp can: when a tool call is *required* (``tool_choice="required"``/``"any"``/a named
tool), the call's arguments are generated as JSON constrained by the tool's parameter schema
(llama-server's ``json_schema`` field, a grammar) and streamed back as a tool call, every token
with its logprobs, so ``ChatEntropyExit`` monitors the step (and, since it is a tool call, never
cuts it). Otherwise it is plain ``ChatOpenAI`` (tools bound, the model answers in text; the
engine asks llama.cpp for ``n_probs``, so that step is monitored too). Tool turns in the history
are rendered as text, for templates without tool roles.

With a server and model that call tools natively (vLLM with a tool parser), use ``ChatOpenAI``.

Example (``entropy-exit serve`` prints the URL)::

    from langchain.agents import create_agent
    from entropy_exit_integrations.lab.local.langchain_tools import ChatSchemaToolCalls
    from entropy_exit_integrations.langchain import EntropyExitMiddleware

    llm = ChatSchemaToolCalls(base_url=url, api_key="none", model="smollm2", max_tokens=160)
    agent = create_agent(llm, tools=[word_length], middleware=[EntropyExitMiddleware(policy)])
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_openai import ChatOpenAI


class ChatSchemaToolCalls(ChatOpenAI):
    """ChatOpenAI whose required tool calls come from schema-constrained JSON (llama.cpp)."""

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        function, kwargs = _required_call(kwargs)
        messages = [_as_text(m) for m in messages]
        chunks = super()._stream(messages, stop, run_manager, **kwargs)
        if function is None:
            yield from chunks
            return
        for i, chunk in enumerate(chunks):
            yield _as_call_chunk(chunk, function["name"], first=i == 0)

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        function, kwargs = _required_call(kwargs)
        messages = [_as_text(m) for m in messages]
        chunks = super()._astream(messages, stop, run_manager, **kwargs)
        i = 0
        async for chunk in chunks:
            yield chunk if function is None else _as_call_chunk(chunk, function["name"], first=i == 0)
            i += 1


def _required_call(kwargs: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The function a required call must use (None if no call is required), and the kwargs."""
    tools = kwargs.get("tools") or []
    choice = kwargs.get("tool_choice")
    if not tools or choice in (None, "auto", "none"):
        return None, kwargs
    functions = [tool["function"] for tool in tools if "function" in tool]
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    function = next((f for f in functions if f["name"] == name), functions[0] if functions else None)
    if function is None:
        return None, kwargs
    rest = {k: v for k, v in kwargs.items() if k not in ("tools", "tool_choice", "parallel_tool_calls")}
    rest["extra_body"] = {**(rest.get("extra_body") or {}), "json_schema": function["parameters"]}
    return function, rest


def _as_call_chunk(chunk: ChatGenerationChunk, name: str, *, first: bool) -> ChatGenerationChunk:
    """A JSON chunk as a tool-call chunk; its logprobs stay, its finish reason says tool_calls."""
    message = chunk.message
    call = tool_call_chunk(
        name=name if first else None, args=chunk.text, id="call_0" if first else None, index=0
    )
    info = dict(chunk.generation_info or {})
    if info.get("finish_reason"):
        info["finish_reason"] = "tool_calls"
    metadata = dict(message.response_metadata)
    if metadata.get("finish_reason"):
        metadata["finish_reason"] = "tool_calls"
    usage = message.usage_metadata if isinstance(message, AIMessageChunk) else None
    out = AIMessageChunk(
        content="", tool_call_chunks=[call], response_metadata=metadata, usage_metadata=usage
    )
    return ChatGenerationChunk(message=out, generation_info=info or None)


def _as_text(message: BaseMessage) -> BaseMessage:
    """Tool turns as plain text, for a chat template that has no tool roles."""
    if isinstance(message, ToolMessage):
        return HumanMessage(f"The tool returned: {message.content}")
    if isinstance(message, AIMessage) and message.tool_calls:
        calls = ", ".join(f"{c['name']}({json.dumps(c['args'])})" for c in message.tool_calls)
        return AIMessage(f"I call the tool: {calls}")
    return message
