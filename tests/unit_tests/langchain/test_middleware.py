"""EntropyExitMiddleware in a real create_agent loop (ChatOpenAI over recorded llama.cpp streams)."""

from __future__ import annotations

from typing import Any

from langchain.agents import create_agent

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.langchain import EntropyExitMiddleware

TOP20 = "llamacpp_chat_top20.jsonl"


def test_each_step_is_wrapped_and_reported(replay: Any) -> None:
    server = replay(TOP20)
    middleware = EntropyExitMiddleware(ExitPolicy(threshold=3.0, min_tokens=3))
    agent = create_agent(server.chat(), tools=[], middleware=[middleware])
    result = agent.invoke({"messages": [{"role": "user", "content": "What is 17 + 25?"}]})
    (step,) = result["entropy_exit"]
    assert step["step"] == 0 and step["exited"] and server.closed_early(0)
    assert result["messages"][-1].response_metadata["entropy_exit"]["exited"]
    summary = EntropyExitMiddleware.summary(result)
    assert summary["steps"] == 1 and summary["exits"] == 1
    assert summary["tokens_saved_vs_budget"] == 64 - step["tokens_generated"] == summary["saved_per_step"][0]
    assert len(middleware.ledger) == 1
    assert server.requests[0]["logprobs"] is True


async def test_async_agent(replay: Any) -> None:
    server = replay(TOP20)
    middleware = EntropyExitMiddleware(ExitPolicy(threshold=0.0))
    agent = create_agent(server.chat(), tools=[], middleware=[middleware])
    result = await agent.ainvoke({"messages": [{"role": "user", "content": "q"}]})
    assert result["messages"][-1].content == "17 + 25 = 32."
    assert [s["exited"] for s in result["entropy_exit"]] == [False]
