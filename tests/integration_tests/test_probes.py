"""Answer probes on the embedded server, through every integration that sends requests.

Whether a 135M model's probes agree is the model's business, so these tests assert what holds
either way: every probe that was sent is counted with its tokens, a cut happens exactly when the
probes agreed and then carries the agreed answer, and the server is idle after the call.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from langchain_openai import ChatOpenAI
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.openai_like import OpenAILike

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.core.probes import ProbeRule
from entropy_exit_integrations.langchain import ChatEntropyExit
from entropy_exit_integrations.llama_index import EntropyExitLLM
from entropy_exit_integrations.openai import astream_chat, stream_chat

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have? Explain step by step."
POLICY = ExitPolicy(threshold=1.5, aggregation="window", window=8, min_tokens=8)
RULES = {
    "periodic": ProbeRule(every=8, agree=2, min_tokens=8, max_tokens=12),
    "gated": ProbeRule(gate=3.0, agree=2, min_tokens=8, min_gap=8, max_tokens=12),
}


def _check(report: dict[str, Any], forced_answer: str | None, text: str, rule: ProbeRule) -> None:
    assert 1 <= report["probes"] <= rule.max_probes
    assert report["probes"] <= report["probe_tokens"] <= report["probes"] * rule.max_tokens
    read = report["tokens_generated"] - report["probe_tokens"] - report["forced_answer_tokens"]
    assert read >= rule.min_tokens and report["forced_answer_tokens"] == 0  # probes never force
    if report["exited"]:  # only agreeing probes cut: their answer is the result's
        assert report["ended"] == "we_closed" and forced_answer and forced_answer.strip()
        assert text.endswith(forced_answer.strip())
    else:
        assert report["ended"] == "server_done" and report["tokens_saved_vs_budget"] == 0


@pytest.mark.parametrize("use_async", [False, True])
@pytest.mark.parametrize("rule_name", sorted(RULES))
async def test_openai_helper_probes(llama_server: Any, rule_name: str, use_async: bool) -> None:
    rule = RULES[rule_name]
    kwargs = {
        "policy": POLICY,
        "probes": rule,
        "model": llama_server.model,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 160,
        "temperature": 0,
    }
    if use_async:
        aclient = openai.AsyncOpenAI(base_url=llama_server.base_url, api_key="none", max_retries=0)
        result = await astream_chat(aclient, **kwargs)
    else:
        result = stream_chat(
            openai.OpenAI(base_url=llama_server.base_url, api_key="none", max_retries=0), **kwargs
        )
    _check(result.report.to_dict(), result.forced_answer, result.text, rule)
    llama_server.wait_until_idle(timeout=2.0)


@pytest.mark.parametrize("use_async", [False, True])
async def test_chat_entropy_exit_probes(llama_server: Any, use_async: bool) -> None:
    rule = RULES["periodic"]
    inner = ChatOpenAI(
        base_url=llama_server.base_url,
        api_key="none",
        model=llama_server.model,
        temperature=0,
        max_tokens=160,
        max_retries=0,
    )
    llm = ChatEntropyExit(model=inner, policy=POLICY, probes=rule)
    message = await llm.ainvoke(QUESTION) if use_async else llm.invoke(QUESTION)
    report = message.response_metadata["entropy_exit"]
    forced = message.content.rsplit("Final answer:", 1)[-1] if report["exited"] else None
    _check(report, forced, message.content, rule)


@pytest.mark.parametrize("use_async", [False, True])
async def test_entropy_exit_llm_probes(llama_server: Any, use_async: bool) -> None:
    rule = RULES["periodic"]
    inner = OpenAILike(
        model=llama_server.model,
        api_base=llama_server.base_url,
        api_key="none",
        is_chat_model=True,
        max_tokens=160,
        temperature=0,
        max_retries=0,
    )
    llm = EntropyExitLLM(llm=inner, policy=POLICY, probes=rule)
    messages = [ChatMessage(role="user", content=QUESTION)]
    response = await llm.achat(messages) if use_async else llm.chat(messages)
    report = response.additional_kwargs["entropy_exit"]
    text = response.message.content or ""
    forced = text.rsplit("Final answer:", 1)[-1] if report["exited"] else None
    _check(report, forced, text, rule)
