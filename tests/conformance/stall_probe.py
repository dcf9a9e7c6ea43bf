"""Case 10's probe, run in a fresh process: how long does the event loop stall at the first exits?

Usage: ``python stall_probe.py DRIVER_ID BASE_URL N`` (the fault server runs in the parent test
process with one warm-up script and N exit scripts queued). The probe imports, makes the warm-up
call and prints a JSON line ``{"ready": ...}`` with ``encodings_before`` (tiktoken encodings
loaded before the package was imported), ``encodings_after_warmup`` and ``warmup_error``; then it
waits for a line on stdin (so that several probes can import side by side and measure one at a
time), runs the N calls twice (``cold``: the process's first exits; ``warm``: the same again)
and prints a JSON line with, per batch, ``max_stall_s`` and one outcome per call.
PYTHONPATH must name the package's root and the repository root (for ``tests.conformance``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from typing import Any


def _encodings() -> int:
    try:
        import tiktoken.registry
    except ImportError:
        return 0
    return len(getattr(tiktoken.registry, "ENCODINGS", {}))


async def _probe(driver_id: str, base_url: str, n: int, encodings_before: int) -> dict[str, Any]:
    from entropy_exit_integrations import ExitPolicy
    from tests.conformance.drivers import BY_ID, Call, K

    driver = BY_ID[driver_id]
    warmup_error = None
    warm = driver.prepare(base_url, Call(ExitPolicy(threshold=0.0, top_k=K)))
    outcome = await warm()  # type: ignore[misc]
    if outcome.error is not None:
        warmup_error = "".join(traceback.format_exception(outcome.error))
    after_warmup = _encodings()
    ready = {"ready": True, "encodings_after_warmup": after_warmup, "warmup_error": warmup_error}
    print(json.dumps({**ready, "encodings_before": encodings_before}), flush=True)
    sys.stdin.readline()  # the "go" (blocking: nothing else runs yet)

    call = driver.prepare(
        base_url, Call(ExitPolicy(threshold=3.0, min_tokens=4, top_k=K), force_answer=False)
    )
    cold = await _batch(call, n)  # the first exits of this process
    warm = await _batch(call, n)  # the same again: what the loop sees once everything is loaded
    return {"cold": cold, "warm": warm}


async def _batch(call: Any, n: int) -> dict[str, Any]:
    """``n`` concurrent calls while a ticker records the longest gap between its 5 ms sleeps."""
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()

    async def ticker() -> float:
        last = loop.time()
        worst = 0.0
        while not finished.is_set():
            await asyncio.sleep(0.005)
            now = loop.time()
            worst = max(worst, now - last)
            last = now
        return worst

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    outcomes = await asyncio.gather(*(call() for _ in range(n)))
    finished.set()
    max_stall = await ticking
    return {"max_stall_s": max_stall, "outcomes": [_summary(o) for o in outcomes]}


def _summary(outcome: Any) -> dict[str, Any]:
    report = outcome.report or {}
    return {
        "error": None if outcome.error is None else repr(outcome.error),
        "exited": report.get("exited"),
        "tokens_generated": report.get("tokens_generated"),
        "prompt_tokens": report.get("prompt_tokens"),
        "prompt_tokens_estimated": report.get("prompt_tokens_estimated"),
        "usage_source": report.get("usage_source"),
    }


def main() -> None:
    driver_id, base_url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    before = _encodings()  # before the package (and the frameworks through it) is imported
    result = asyncio.run(_probe(driver_id, base_url, n, before))
    print(json.dumps(result), flush=True)
    os._exit(0)  # skip the interpreter's teardown (about a second with the frameworks loaded)


if __name__ == "__main__":
    main()
