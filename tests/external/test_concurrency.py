"""Eight concurrent monitored streams, all cut at once: every one exits, and the server goes idle."""

from __future__ import annotations

import asyncio

from entropy_exit_integrations import ExitPolicy, SavingsLedger
from entropy_exit_integrations.openai import astream_chat

from .conftest import EXIT_THRESHOLD, MAX_TOKENS, MIN_TOKENS, STORY, External, ServerMetrics, StopEvidence

EXIT = ExitPolicy(threshold=EXIT_THRESHOLD, min_tokens=MIN_TOKENS)
STREAMS = 8


async def _eight_exits(external: External) -> list:
    client = external.aclient()
    ledger = SavingsLedger()
    results = await asyncio.gather(
        *(
            astream_chat(
                client,
                policy=EXIT,
                force_answer=False,
                ledger=ledger,
                model=external.model,
                messages=STORY,
                max_tokens=MAX_TOKENS,
                temperature=0,
            )
            for _ in range(STREAMS)
        )
    )
    assert len(ledger) == STREAMS
    for result in results:
        report = result.report
        assert report.exited and report.ended == "we_closed", report
        assert report.decision_token_index == MIN_TOKENS - 1
        assert report.tokens_generated == len(result.tokens) < MAX_TOKENS
        # Each result is made of its own tokens only.
        assert "".join(t.token for t in result.tokens) == result.reasoning + result.text
    return results


async def test_eight_concurrent_exits_all_stop(external: External) -> None:
    await _eight_exits(external)


async def test_eight_concurrent_exits_leave_the_server_idle(
    external: External, metrics: ServerMetrics
) -> None:
    evidence = StopEvidence(metrics)
    results = await _eight_exits(external)
    await asyncio.to_thread(evidence.check, [r.report.tokens_generated for r in results], 2.0)
