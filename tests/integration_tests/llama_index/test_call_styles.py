"""Each of the eight call styles exits early with a high threshold and matches the plain LLM at 0."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage

from entropy_exit_integrations import ExitPolicy, SavingsReport
from entropy_exit_integrations.llama_index import REPORT_KEY, EntropyExitLLM

from .conftest import STORY

STYLES = [
    "chat",
    "achat",
    "stream_chat",
    "astream_chat",
    "complete",
    "acomplete",
    "stream_complete",
    "astream_complete",
]
MESSAGES = [ChatMessage(role="user", content=STORY)]


async def call(llm: Any, style: str) -> tuple[str, str, Any]:
    """(final text, concatenated deltas, final response) of one call in ``style``."""
    chat = "chat" in style
    arg = MESSAGES if chat else STORY
    method = getattr(llm, style)
    if not style.startswith(("stream", "astream")):
        response = await method(arg) if style.startswith("a") else method(arg)
        text = response.message.content if chat else response.text
        return text, text, response
    stream = await method(arg) if style.startswith("a") else method(arg)
    deltas, last = [], None
    if style.startswith("a"):
        async for last in stream:
            deltas.append(last.delta or "")
    else:
        for last in stream:
            deltas.append(last.delta or "")
    text = last.message.content if chat else last.text
    return text, "".join(deltas), last


@pytest.mark.parametrize("style", STYLES)
async def test_style_exits_early_and_matches_plain_at_zero(style: str, make_inner: Any) -> None:
    plain_text, plain_deltas, _ = await call(make_inner(), style)

    monitor = EntropyExitLLM(llm=make_inner(), policy=ExitPolicy(threshold=0))
    text, deltas, response = await call(monitor, style)
    assert text == plain_text and deltas == plain_deltas
    report = SavingsReport.from_dict(response.additional_kwargs[REPORT_KEY])
    assert not report.exited and report.tokens_generated == 32 and report.k == 20
    assert len(response.logprobs) == 32 and len(response.logprobs[0]) == 20

    stopper = EntropyExitLLM(llm=make_inner(), policy=ExitPolicy(threshold=10.0, min_tokens=6))
    text, _, response = await call(stopper, style)
    report = SavingsReport.from_dict(response.additional_kwargs[REPORT_KEY])
    assert report.exited and report.exit_token_index == 5 and report.tokens_generated == 6
    assert report.tokens_saved_vs_budget == 26
    assert plain_text.startswith(text) and len(text) < len(plain_text)
    assert stopper.last_report == report
