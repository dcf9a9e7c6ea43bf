"""openai-SDK helpers against the real embedded llama.cpp server."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from entropy_exit_integrations import ExitPolicy, Phase, SavingsLedger
from entropy_exit_integrations.errors import LogprobsUnavailableError
from entropy_exit_integrations.openai import (
    ENTROPY_EXIT,
    aiter_chat,
    astream_chat,
    astream_completion,
    iter_chat,
    stream_chat,
    stream_completion,
)

STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
EAGER = ExitPolicy(threshold=3.0, min_tokens=8)  # SmolLM2's windows sit well under 3 bits
NEVER = ExitPolicy(threshold=0.0)


@pytest.fixture
def client(llama_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=llama_server.base_url, api_key="sk-no-key")


@pytest.fixture
def aclient(llama_server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=llama_server.base_url, api_key="sk-no-key")


def tokens_predicted(server) -> float:
    return server.metrics()["llamacpp:tokens_predicted_total"]


def assert_server_stopped(server, before: float, budget: int) -> tuple[float, float]:
    """The server went idle within 1 s and predicted far fewer tokens than the budget."""
    idle_after = server.wait_until_idle(timeout=1.0)
    time.sleep(0.05)  # the counter is updated when the cancelled task ends
    predicted = tokens_predicted(server) - before
    assert predicted < budget / 2, f"server predicted {predicted} of {budget} tokens after the exit"
    return idle_after, predicted


def test_high_threshold_exits_early_and_the_server_stops(client, llama_server) -> None:
    llama_server.wait_until_idle(timeout=30)
    before = tokens_predicted(llama_server)
    result = stream_chat(
        client,
        policy=EAGER,
        force_answer=False,
        model=llama_server.model,
        messages=STORY,
        max_tokens=400,
        temperature=0,
        seed=1,
    )
    assert result.finish_reason == ENTROPY_EXIT
    assert result.report.exited and result.report.tokens_generated < 400
    assert result.report.tokens_saved_vs_budget == 400 - result.report.tokens_generated
    assert result.text and result.report.k == 20
    assert result.usage["completion_tokens"] == result.report.tokens_generated
    assert result.usage.get("estimated") is True  # an aborted stream gets no usage chunk
    assert_server_stopped(llama_server, before, 400)


async def test_async_exit_closes_the_stream_and_the_server_stops(aclient, llama_server) -> None:
    llama_server.wait_until_idle(timeout=30)
    before = tokens_predicted(llama_server)
    result = await astream_chat(
        aclient,
        policy=EAGER,
        force_answer=False,
        model=llama_server.model,
        messages=STORY,
        max_tokens=400,
        temperature=0,
        seed=1,
    )
    assert result.finish_reason == ENTROPY_EXIT and result.report.tokens_generated < 400
    assert_server_stopped(llama_server, before, 400)


def test_threshold_zero_never_exits_and_matches_a_plain_call(client, llama_server) -> None:
    kwargs = dict(model=llama_server.model, messages=STORY, max_tokens=48, temperature=0, seed=7)
    plain = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(stream=True, **kwargs)
        if c.choices
    )
    result = stream_chat(client, policy=NEVER, **kwargs)
    assert result.finish_reason == "length" and not result.report.exited
    assert result.text == plain
    assert result.report.tokens_generated == 48 == result.usage["completion_tokens"]


def test_iterator_form_streams_deltas_then_gives_the_result(client, llama_server) -> None:
    with iter_chat(
        client,
        policy=EAGER,
        force_answer=False,
        model=llama_server.model,
        messages=STORY,
        max_tokens=200,
        temperature=0,
    ) as stream:
        deltas = [d.text for d in stream]
    assert "".join(deltas) == stream.result.text
    assert stream.result.finish_reason == ENTROPY_EXIT


def test_iterator_form_streams_the_forced_answer_too(client, llama_server) -> None:
    question = [{"role": "user", "content": "What is 7 + 5? Explain step by step."}]
    kwargs = dict(model=llama_server.model, messages=question, max_tokens=200, temperature=0)
    with iter_chat(client, policy=EAGER, force_answer=True, **kwargs) as stream:
        deltas = list(stream)
    assert "".join(d.text for d in deltas) == stream.result.text
    forced = "".join(d.text for d in deltas if d.forced)
    assert forced.startswith("\n\nFinal answer:") and forced.endswith(stream.result.forced_answer)


async def test_async_iterator_form(aclient, llama_server) -> None:
    async with aiter_chat(
        aclient, policy=NEVER, model=llama_server.model, messages=STORY, max_tokens=16, temperature=0
    ) as stream:
        deltas = [d.text async for d in stream]
    assert "".join(deltas) == stream.result.text and stream.result.report.tokens_generated == 16


def test_answer_forcing_after_an_answer_phase_exit(client, llama_server) -> None:
    question = [{"role": "user", "content": "What is 7 + 5? Explain step by step."}]
    result = stream_chat(
        client,
        policy=EAGER,
        force_answer=True,
        model=llama_server.model,
        messages=question,
        max_tokens=200,
        temperature=0,
    )
    assert result.finish_reason == ENTROPY_EXIT
    assert result.forced_answer is not None and result.forced_answer.strip()
    assert result.text.endswith(result.forced_answer)
    assert "Final answer:" in result.text  # the cut answer keeps the cue so it reads on
    assert 0 < result.report.forced_answer_tokens <= 64
    # Savings are net of the forcing tokens.
    assert result.report.tokens_generated == len(result.tokens) + result.report.forced_answer_tokens


def test_inline_think_tags_exit_in_reasoning_and_force_the_answer(client, llama_server) -> None:
    messages = [
        {"role": "system", "content": "Think inside <think> </think> tags, then answer."},
        {"role": "user", "content": "What is 7 + 5?"},
        {"role": "assistant", "content": "<think>"},  # prefill: the model continues its thinking
    ]
    result = stream_chat(
        client, policy=EAGER, model=llama_server.model, messages=messages, max_tokens=200, temperature=0
    )
    # llama.cpp echoes the prefilled "<think>", so the splitter sees the tag open.
    assert result.finish_reason == ENTROPY_EXIT
    assert result.report.reasoning_tokens > 0
    assert result.reasoning and result.forced_answer is not None
    assert result.text == result.forced_answer  # the answer is the forced one alone


def test_reasoning_content_exit_forces_the_answer(reasoning_server) -> None:
    client = openai.OpenAI(base_url=reasoning_server.base_url, api_key="sk-no-key")
    question = [{"role": "user", "content": "What is 7 + 5? Think step by step."}]
    full = stream_chat(
        client, policy=NEVER, model=reasoning_server.model, messages=question, max_tokens=60, temperature=0
    )
    assert full.reasoning and full.report.reasoning_tokens == len(full.tokens)
    cut = stream_chat(
        client, policy=EAGER, model=reasoning_server.model, messages=question, max_tokens=60, temperature=0
    )
    assert cut.finish_reason == ENTROPY_EXIT
    assert full.reasoning.startswith(cut.reasoning) and len(cut.reasoning) < len(full.reasoning)
    assert all(t.phase is Phase.REASONING for t in cut.tokens)
    assert cut.forced_answer is not None and cut.text == cut.forced_answer
    assert cut.report.forced_answer_tokens > 0


async def test_eight_concurrent_streams_keep_separate_monitors(aclient, llama_server) -> None:
    ledger = SavingsLedger()
    policies = [
        ExitPolicy(threshold=t, min_tokens=m)
        for t, m in [(0.0, 1), (3.0, 4), (3.0, 12), (0.0, 1), (3.0, 20), (0.0, 1), (3.0, 8), (3.0, 30)]
    ]
    results = await asyncio.gather(
        *(
            astream_chat(
                aclient,
                policy=p,
                force_answer=False,
                ledger=ledger,
                model=llama_server.model,
                messages=STORY,
                max_tokens=40,
                temperature=0,
            )
            for p in policies
        )
    )
    assert len(ledger) == 8
    for policy, result in zip(policies, results):
        assert result.report.threshold == policy.threshold
        assert result.report.tokens_generated == len(result.tokens)
        if policy.threshold == 0.0:
            assert not result.report.exited and result.report.tokens_generated == 40
        else:
            assert result.report.exited
            assert result.report.exit_token_index == policy.min_tokens - 1  # first allowed exit
    # Each result is made of its own tokens only. (Equal greedy texts across the streams are
    # not expected: llama.cpp's batched decoding across slots changes the numerics.)
    for result in results:
        assert "".join(t.token for t in result.tokens) == result.text


def test_legacy_completions_path(client, llama_server) -> None:
    kwargs = dict(model=llama_server.model, prompt="Once upon a time", max_tokens=100, temperature=0)
    full = stream_completion(client, policy=NEVER, **kwargs)
    assert full.report.tokens_generated == 100 and full.report.k == 20
    cut = stream_completion(client, policy=EAGER, force_answer=False, **kwargs)
    assert cut.finish_reason == ENTROPY_EXIT and full.text.startswith(cut.text)


async def test_async_legacy_completions(llama_server) -> None:
    aclient = openai.AsyncOpenAI(base_url=llama_server.base_url, api_key="sk-no-key")
    cut = await astream_completion(
        aclient,
        policy=EAGER,
        force_answer=True,
        model=llama_server.model,
        prompt="The recipe for bread is",
        max_tokens=100,
        temperature=0,
    )
    assert cut.finish_reason == ENTROPY_EXIT and cut.forced_answer is not None


def test_a_stream_without_logprobs_raises_with_the_fix(client, llama_server) -> None:
    # Greedy and without the prompt cache (reused KV changes the numerics): the same text twice.
    request = {
        "model": llama_server.model,
        "messages": STORY,
        "max_tokens": 50,
        "temperature": 0,
        "extra_body": {"cache_prompt": False},
    }
    with pytest.raises(LogprobsUnavailableError, match="logprobs=True, top_logprobs=k") as error:
        stream_chat(client, policy=EAGER, logprobs=False, top_logprobs=None, **request)
    plain = client.chat.completions.create(stream=True, **request)
    text = "".join(c.choices[0].delta.content or "" for c in plain if c.choices)
    kept = error.value.partial_text
    assert kept and text.startswith(kept)  # what arrived before the error is kept, as it came
