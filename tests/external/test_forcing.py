"""Forcing the final answer after an exit: a second, short request continues the cut text.

Against a server other than api.openai.com the cut generation goes back as a trailing assistant
message ending in the answer cue, with ``continue_final_message=True, add_generation_prompt=False``
in ``extra_body`` (vLLM and SGLang need them to continue the prefix; llama.cpp continues a trailing
assistant message by itself): the server must accept that request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from entropy_exit_integrations import ExitPolicy, Phase
from entropy_exit_integrations.forcing import AnswerForcing
from entropy_exit_integrations.openai import aiter_chat, iter_chat

from .conftest import EXIT_THRESHOLD, MAX_TOKENS, MIN_TOKENS, External, StreamShape, known_issues
from .integrations import FORCING_DRIVERS, Driver, assert_exited, outcome_of

QUESTION = [{"role": "user", "content": "What is 7 + 5? Explain step by step."}]
EXIT = ExitPolicy(threshold=EXIT_THRESHOLD, min_tokens=MIN_TOKENS)


@dataclass
class Forced:
    """A forced call through ``iter_chat``/``aiter_chat``: the streamed answer, split, and the result."""

    cut: str
    forced: str
    result: Any

    @classmethod
    def of(cls, deltas: list[Any], result: Any) -> Forced:
        return cls(
            cut="".join(d.text for d in deltas if d.phase is Phase.ANSWER and not d.forced),
            forced="".join(d.text for d in deltas if d.forced),
            result=result,
        )

    @property
    def in_reasoning(self) -> bool:
        return self.result.report.reasoning_tokens == len(self.result.tokens)


def _check(forced: Forced, external: External, plain: Any) -> None:
    result, report = forced.result, forced.result.report
    assert_exited(outcome_of(result), plain(QUESTION), EXIT, MAX_TOKENS, forced=True)
    # A second request ran and streamed an answer.
    assert result.forced_answer is not None and result.forced_answer.strip()
    assert report.forced_answer_tokens > 0
    assert report.tokens_generated == len(result.tokens) + report.forced_answer_tokens
    # The final text is the cut text, then the forced part (cue + the server's continuation).
    assert result.text == forced.cut + forced.forced
    assert forced.forced.endswith(result.forced_answer)
    reference = plain(QUESTION)
    if forced.in_reasoning:  # the answer is the forced one alone
        assert forced.cut == "" and result.text == forced.forced
    else:
        assert forced.cut and reference.text.startswith(forced.cut) and len(forced.cut) < len(reference.text)
        if AnswerForcing().resolved_style(external.base_url) == "prefix":
            assert forced.forced.startswith(AnswerForcing().cue)


@pytest.fixture(scope="module")
def forced_reference(external: External) -> Forced:
    """The forced answer through ``iter_chat``: the reference for every integration."""
    with iter_chat(
        external.client(),
        policy=EXIT,
        force_answer=True,
        model=external.model,
        messages=QUESTION,
        max_tokens=MAX_TOKENS,
        temperature=0,
    ) as stream:
        deltas = list(stream)
    return Forced.of(deltas, stream.result)


def test_forced_answer_follows_the_cut_text(forced_reference: Forced, external: External, plain: Any) -> None:
    _check(forced_reference, external, plain)


async def test_forced_answer_async(forced_reference: Forced, external: External, plain: Any) -> None:
    async with aiter_chat(
        external.aclient(),
        policy=EXIT,
        force_answer=True,
        model=external.model,
        messages=QUESTION,
        max_tokens=MAX_TOKENS,
        temperature=0,
    ) as stream:
        deltas = [d async for d in stream]
    forced = Forced.of(deltas, stream.result)
    _check(forced, external, plain)
    assert forced.result.text == forced_reference.result.text


@pytest.mark.parametrize("driver", FORCING_DRIVERS, ids=[d.id for d in FORCING_DRIVERS])
async def test_forcing_is_the_same_through_every_integration(
    driver: Driver,
    external: External,
    forced_reference: Forced,
    plain: Any,
    shape: StreamShape,
    request: pytest.FixtureRequest,
) -> None:
    known_issues(request, driver, shape, compares_counts=True)
    outcome = await driver.run(external, EXIT, QUESTION, MAX_TOKENS, force_answer=True)
    reference = forced_reference.result
    assert_exited(outcome, plain(QUESTION), EXIT, MAX_TOKENS, forced=True)
    assert outcome.report.tokens_generated - outcome.report.forced_answer_tokens == len(reference.tokens)
    assert outcome.report.forced_answer_tokens > 0
    assert outcome.reasoning == reference.reasoning
    if not forced_reference.in_reasoning or driver.integration == "openai":
        # The same forcing request, so the same answer at temperature 0.
        assert outcome.text == reference.text
        assert outcome.report.forced_answer_tokens == reference.report.forced_answer_tokens
    else:
        # LangChain and LlamaIndex messages cannot carry reasoning_content: those shims send the
        # cut reasoning back inline in <think> tags, so the server may force another answer.
        assert outcome.text.strip()
