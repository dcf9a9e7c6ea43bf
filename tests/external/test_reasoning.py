"""Reasoning phases: a server that streams ``delta.reasoning_content`` (llama.cpp, older vLLM) or
``delta.reasoning`` (newer vLLM). Skipped, with the reason, when the server streams neither."""

from __future__ import annotations

from typing import Any

import pytest

from entropy_exit_integrations import ExitPolicy, Phase
from entropy_exit_integrations.openai import stream_chat

from .conftest import (
    EXIT_THRESHOLD,
    MAX_TOKENS,
    MIN_TOKENS,
    REASONING_PROMPT,
    External,
    StreamShape,
    known_issues,
)
from .integrations import FORCING_DRIVERS, Driver, assert_exited, assert_no_exit, outcome_of

pytestmark = pytest.mark.usefixtures("reasoning")

NEVER = ExitPolicy(threshold=0.0)
EXIT = ExitPolicy(threshold=EXIT_THRESHOLD, min_tokens=MIN_TOKENS)


def test_reasoning_without_exit_matches_a_plain_call(external: External, plain: Any) -> None:
    reference = plain(REASONING_PROMPT)
    assert reference.reasoning, "the plain call returned no message.reasoning_content / reasoning"
    result = stream_chat(
        external.client(),
        policy=NEVER,
        model=external.model,
        messages=REASONING_PROMPT,
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert_no_exit(outcome_of(result), reference, NEVER)
    assert result.reasoning == reference.reasoning and result.report.reasoning_tokens > 0


@pytest.fixture(scope="module")
def reasoning_reference(external: External) -> Any:
    """An exit in the reasoning through ``stream_chat``: forcing runs by default (force_answer=None)."""
    return stream_chat(
        external.client(),
        policy=EXIT,
        model=external.model,
        messages=REASONING_PROMPT,
        max_tokens=MAX_TOKENS,
        temperature=0,
    )


def test_exit_in_reasoning_forces_the_answer(reasoning_reference: Any, plain: Any) -> None:
    result, report = reasoning_reference, reasoning_reference.report
    assert_exited(outcome_of(result), plain(REASONING_PROMPT), EXIT, MAX_TOKENS, forced=True)
    assert report.reasoning_tokens == len(result.tokens) > 0
    assert all(t.phase is Phase.REASONING for t in result.tokens)
    assert result.reasoning
    assert result.forced_answer is not None and result.forced_answer.strip()
    assert report.forced_answer_tokens > 0
    assert result.text == result.forced_answer  # the answer is the forced one alone


@pytest.mark.parametrize("driver", FORCING_DRIVERS, ids=[d.id for d in FORCING_DRIVERS])
async def test_exit_in_reasoning_is_the_same_through_every_integration(
    driver: Driver,
    external: External,
    reasoning_reference: Any,
    plain: Any,
    shape: StreamShape,
    request: pytest.FixtureRequest,
) -> None:
    known_issues(request, driver, shape, compares_counts=True)
    outcome = await driver.run(external, EXIT, REASONING_PROMPT, MAX_TOKENS)  # force_answer=None
    assert_exited(outcome, plain(REASONING_PROMPT), EXIT, MAX_TOKENS, forced=True)
    report, reference = outcome.report, reasoning_reference.report
    assert outcome.reasoning == reasoning_reference.reasoning
    assert (
        report.reasoning_tokens
        == reference.reasoning_tokens
        == report.tokens_generated - report.forced_answer_tokens
    )
    assert report.forced_answer_tokens > 0 and outcome.text.strip()
    if driver.integration == "openai":
        assert outcome.text == reasoning_reference.text
        assert report.forced_answer_tokens == reference.forced_answer_tokens
    # LangChain and LlamaIndex messages cannot carry reasoning_content: those shims send the cut
    # reasoning back inline in <think> tags, so the forced answer may differ from the helper's.
