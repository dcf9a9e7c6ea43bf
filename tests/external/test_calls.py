"""No exit, exit, and the server really stopping: the same expectations through every integration.

The engine's conformance cases run against a fault-injecting server in ``tests/conformance``
(broken and truncated streams, error events, bad logprobs: faults an arbitrary server cannot be
made to produce on demand); this suite runs the cases a real server can produce.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from entropy_exit_integrations import ExitPolicy

from .conftest import (
    EXIT_THRESHOLD,
    MAX_TOKENS,
    MIN_TOKENS,
    STORY,
    External,
    ServerMetrics,
    StopEvidence,
)
from .integrations import DRIVER_IDS, DRIVERS, Driver, assert_exited, assert_no_exit

NEVER = ExitPolicy(threshold=0.0)
EXIT = ExitPolicy(threshold=EXIT_THRESHOLD, min_tokens=MIN_TOKENS)


@pytest.mark.parametrize("driver", DRIVERS, ids=DRIVER_IDS)
async def test_no_exit_matches_a_plain_call(driver: Driver, external: External, plain: Any) -> None:
    outcome = await driver.run(external, NEVER, STORY, MAX_TOKENS)
    assert_no_exit(outcome, plain(STORY), NEVER)


@pytest.mark.parametrize("driver", DRIVERS, ids=DRIVER_IDS)
async def test_exit_closes_the_stream(driver: Driver, external: External, plain: Any) -> None:
    reference = plain(STORY)
    outcome = await driver.run(external, EXIT, STORY, MAX_TOKENS, force_answer=False)
    assert_exited(outcome, reference, EXIT, MAX_TOKENS)


@pytest.mark.parametrize("driver", DRIVERS, ids=DRIVER_IDS)
async def test_exit_stops_the_server(
    driver: Driver,
    external: External,
    metrics: ServerMetrics,
    plain: Any,
) -> None:
    reference = plain(STORY)
    evidence = StopEvidence(metrics)
    outcome = await driver.run(external, EXIT, STORY, MAX_TOKENS, force_answer=False)
    # In a thread: the event loop must keep running (an async generator aborted by an exception
    # is closed, with its HTTP response, by the loop's finaliser), as it does in an application.
    await asyncio.to_thread(evidence.check, [outcome.report.tokens_generated], 1.0)
    assert_exited(outcome, reference, EXIT, MAX_TOKENS)
