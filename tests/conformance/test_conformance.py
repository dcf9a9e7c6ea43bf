"""Conformance of every integration to one behaviour (issue 11: one call engine, true reports).

Each case runs against ``fault_server.FaultServer`` (a real local SSE server that injects faults)
through every integration x {sync, async} (``drivers.py``), with the same expectations for all.
Where an integration cannot take part in a case, ``EXCLUDED`` says so and why (the parameter is
skipped with that reason, visible in ``pytest -rs``). Mechanics never depend on real entropies:
``threshold=3.0`` (above log2 k = 2.32 for k = 5) makes every known token confident, so the
policy exits as soon as ``min_tokens`` allows; ``threshold=0`` forbids any exit.

On main before issue 11 (commit 5cb983d), what fails, per case (openai = the openai helper,
wrapper = ChatEntropyExit, handler = the callback handlers, llamaindex = EntropyExitLLM):

==  ==================================  =================================================================
#   case                                failure on main before issue 11
==  ==================================  =================================================================
1   deferred stop, then the stream      openai, handler, llamaindex: the report says exited=True (savings
    ends on its own                     claimed) for a stream that ran out; with a tool call the tool
                                        tokens are held back and only observed at the end, then "exit";
                                        wrapper: already exited=False, but no ``ended`` /
                                        ``usage_source`` / ``decision_token_index`` in the report
2   body ends after 25 chunks, no       returns normally (finish_reason "stop"), no StreamInterrupted,
    finish_reason, no [DONE]            in every integration
3   invalid JSON / reset / error event  openai: StreamInterrupted with the right cause for reset, error
    / read timeout mid-stream           event and timeout (report without ``ended``), but the
                                        JSONDecodeError escapes raw; wrapper, handler, llamaindex: the
                                        raw error escapes (JSONDecodeError, httpx.ReadError,
                                        openai.APIError, httpx.ReadTimeout), no StreamInterrupted
4   NaN logprob on the sampled token    LogprobsFormatError("NaN logprob") ends the call, no warning,
                                        in every integration
5   -inf/-9999 candidates               exit at token 13 (the window of bad tokens reads as 0 bits)
                                        instead of >= 53; unknown_tokens 0
6   ``<think>`` split over chunks, or   openai: the first tag piece (or the newline) is tagged answer, so
    after a newline token               the monitor falls back to watching the answer: no exit in the
                                        reasoning, no forced answer; the tag tokens count as reasoning
                                        (13 instead of 12); wrapper, llamaindex: the answer keeps the
                                        tags ("<think> The quick...</think> It is...") and the reasoning
                                        is empty; handler: no ``last_result`` / ``EntropyExit.partial``
7   number guard                        the cut text ends in "3." / "1," / "3/" / " -" / "1e": the stop
                                        waits only while the last token is all digits
8   bad policy                          ChatEntropyExit and both handlers accept a dict and None;
                                        stream_chat/astream_chat raise AttributeError ('NoneType' object
                                        has no attribute 'top_k'); EntropyExitLLM already raised TypeError
9   ainvoke/astream over a              NotImplementedError from BaseChatModel._astream (sync is fine)
    ``_generate``-only inner model
10  event loop at the first exits       the first tiktoken load (the prompt estimate) blocks the loop
                                        0.5-0.7 s (0.02-0.14 s once warm): openai, wrapper, llamaindex;
                                        handler: no ``last_result`` (the probe's warm-up fails), and its
                                        reports estimate no prompt tokens
11  forcing after a reasoning_content   llamaindex: the forcing request's assistant message is only
    exit                                "Final answer:" (the cut reasoning is dropped) and the response
                                        has no reasoning_content; openai and wrapper carry it (they fail
                                        only on the missing report fields)
==  ==================================  =================================================================

The normal cases (no exit, exit, forced answer, exit in reasoning) behave on main except for the
report fields issue 11 adds (``ended``, ``finish_reason``, ``usage_source``), the handler's
``last_result`` / ``EntropyExit.partial``, the handler's missing prompt estimate and LlamaIndex's
missing reasoning_content.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from entropy_exit_integrations import (
    AuditRule,
    EntropyExitWarning,
    ExitPolicy,
    SavingsLedger,
    StreamInterrupted,
)
from entropy_exit_integrations.core.calibration import clopper_pearson_upper
from entropy_exit_integrations.core.probes import ProbeRule
from tests.conformance.drivers import BY_ID, DRIVERS, Call, Driver, K, Outcome, wrapper_stream_text
from tests.conformance.fault_server import (
    SERVER_PROMPT_TOKENS,
    FaultServer,
    Script,
    script,
    text_of,
    token_chunk,
    token_entry,
    tool_call_chunk,
)

HERE = Path(__file__).resolve().parent

# -- policies ------------------------------------------------------------------------------------

ALWAYS = 3.0
"""A threshold above log2 k (2.32 bits for k = 5): every known token reads as confident."""
assert ALWAYS > math.log2(K)


def exit_policy(min_tokens: int = 8, **kwargs: Any) -> ExitPolicy:
    """Exits at the first moment ``min_tokens`` allows."""
    return ExitPolicy(threshold=ALWAYS, min_tokens=min_tokens, top_k=K, **kwargs)


def never_policy() -> ExitPolicy:
    """Monitors only: threshold 0 never exits."""
    return ExitPolicy(threshold=0.0, top_k=K)


# -- scripted text ---------------------------------------------------------------------------------

_WORDS = " The quick brown fox jumps over the lazy dog while seven small geese watch it".split(" ")[1:]


def words(n: int, start: int = 0) -> list[str]:
    """n word tokens (leading space, no digits: nothing the number guard would hold)."""
    return [" " + _WORDS[(start + i) % len(_WORDS)] for i in range(n)]


def chunks_of(texts: list[str], **kwargs: Any) -> list[dict[str, Any]]:
    return [token_chunk(text, **kwargs) for text in texts]


ANSWER = "FORTYTWO"
"""What the forcing request's server reply says."""


def forcing_script() -> Script:
    return script([token_chunk(" " + ANSWER)])


CUT_DELAY = 0.003
"""Seconds between chunks of streams that are meant to be cut: the close reaches the server first."""
MAX_CLOSE_LATENCY_S = 0.2
"""From reading the token that decides to the server seeing the close (the server then stops)."""
CUT_TOKENS = 200
"""Length of streams that are meant to be cut: 0.6 s of server time at CUT_DELAY, so a client
that is slow to close (a loaded machine) still closes before the server runs out of script."""


# -- exclusions: the one place that says who cannot take part (or takes part differently) ----

_NO_REASONING_FIELD = (
    "ChatOpenAI drops delta.reasoning_content before any callback sees it, so the callback "
    "handler cannot tell reasoning from answer in this stream"
)
_CANNOT_FORCE = (
    "the callback handler only watches a run: it cannot send a second request, so it cannot force "
    "an answer (its exit is an EntropyExit carrying the partial result)"
)
_WRAPS_LANGCHAIN_MODELS = "only ChatEntropyExit wraps an arbitrary LangChain chat model"
_NO_EVENT_LOOP = "a sync call runs no event loop to block"

EXCLUDED: dict[tuple[str, str], str] = {
    # (case, integration | driver id | "sync"/"async") -> why it cannot take part (skipped with this reason)
    ("forced_answer", "handler"): _CANNOT_FORCE,
    ("exit_in_reasoning", "handler"): _NO_REASONING_FIELD,
    ("11_forcing_carries_cut_reasoning", "handler"): f"{_NO_REASONING_FIELD}; and {_CANNOT_FORCE}",
    ("09_async_parity_generate_only_inner", "openai"): _WRAPS_LANGCHAIN_MODELS,
    ("09_async_parity_generate_only_inner", "handler"): _WRAPS_LANGCHAIN_MODELS,
    ("09_async_parity_generate_only_inner", "llamaindex"): _WRAPS_LANGCHAIN_MODELS,
    ("10_event_loop_not_blocked", "sync"): _NO_EVENT_LOOP,
    ("12_probes", "handler"): "the callback handler only watches a run: it cannot send probe requests",
    ("14_think_open_forcing", "handler"): _CANNOT_FORCE,
    ("15_audit", "handler"): "the callback handler only watches a run: it cannot send the audit's request",
}

DIFFERENT: dict[tuple[str, str], str] = {
    # (case, integration) -> why it takes part with a different expectation (the test says which)
    ("06b_forced_answer_after_inline_reasoning_exit", "handler"): (
        f"{_CANNOT_FORCE}: expected instead is an EntropyExit in the reasoning and no second request"
    ),
}


def _lookup(table: dict[tuple[str, str], str], case: str, driver: Driver) -> str | None:
    return (
        table.get((case, driver.integration))
        or table.get((case, driver.id))
        or table.get((case, "async" if driver.is_async else "sync"))
    )


def excluded(case: str, driver: Driver) -> str | None:
    return _lookup(EXCLUDED, case, driver)


def different(case: str, driver: Driver) -> str | None:
    return _lookup(DIFFERENT, case, driver)


def matrix(case: str) -> list[Any]:
    """Every driver; an excluded one is skipped with its reason (never silently)."""
    params = []
    for driver in DRIVERS:
        reason = excluded(case, driver)
        marks = [pytest.mark.skip(reason=f"excluded: {reason}")] if reason else []
        params.append(pytest.param(driver, id=driver.id, marks=marks))
    return params


# -- fixtures and helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_server() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
def server(fault_server: FaultServer) -> Iterator[FaultServer]:
    fault_server.reset()
    yield fault_server
    fault_server.wait_idle()
    fault_server.reset()


def run(driver: Driver, server: FaultServer, call: Call) -> Outcome:
    outcome = driver.run(server.base_url, call)
    server.wait_idle()
    return outcome


def _trace(error: BaseException | None) -> str:
    return "".join(traceback.format_exception(error)) if error is not None else ""


def ok(outcome: Outcome) -> dict[str, Any]:
    """The outcome ended without an error (an EntropyExit of the handler is not one); its report."""
    assert outcome.error is None, f"unexpected error:\n{_trace(outcome.error)}"
    assert outcome.report is not None, "no report on the result"
    return outcome.report


def interrupted(outcome: Outcome) -> StreamInterrupted:
    assert isinstance(outcome.error, StreamInterrupted), (
        f"expected StreamInterrupted, got {outcome.error!r}\n{_trace(outcome.error)}"
    )
    partial = outcome.error.partial
    for name in ("text", "reasoning", "tokens", "report"):
        assert hasattr(partial, name), f"StreamInterrupted.partial has no .{name}"
    return outcome.error


def assert_exited(outcome: Outcome, driver: Driver) -> dict[str, Any]:
    report = ok(outcome)
    assert report["exited"] is True
    assert report.get("ended") == "we_closed"
    assert report.get("finish_reason") == "entropy_exit"
    assert outcome.finish_reason == "entropy_exit"
    assert outcome.raised_exit is (driver.integration == "handler")
    return report


def assert_server_finished(outcome: Outcome, driver: Driver, *, finish: str) -> dict[str, Any]:
    """The stream ran to the server's end: no exit claimed, no savings, the server's usage."""
    report = ok(outcome)
    assert report["exited"] is False
    assert report.get("ended") == "server_done"
    assert report.get("finish_reason") == finish
    assert outcome.finish_reason == finish
    assert not outcome.raised_exit
    assert report["tokens_saved_vs_budget"] == 0
    assert report["saved_fraction"] == 0
    assert report.get("usage_source") == "server"
    assert report["prompt_tokens"] == SERVER_PROMPT_TOKENS
    assert report["prompt_tokens_estimated"] is False
    return report


def assert_server_usage(outcome: Outcome, scripted: Script) -> None:
    assert outcome.usage is not None, "no usage on the result"
    assert outcome.usage["prompt_tokens"] == scripted.usage["prompt_tokens"]
    assert outcome.usage["completion_tokens"] == scripted.usage["completion_tokens"]


def assert_cut(server: FaultServer, index: int = 0) -> None:
    """The server saw the client go away before it had sent its whole script.

    The server learns of a close at its next write (a chunk delay later), so it may hear of it
    a moment after the call returned: wait up to a second.
    """
    served = server.served[index]
    deadline = time.monotonic() + 1.0
    while not served.disconnected and not served.completed and time.monotonic() < deadline:
        time.sleep(0.005)
    assert served.disconnected, "the server did not see the client close the stream"
    assert not served.completed
    assert served.script is not None and served.chunks_sent < len(served.script.chunks)


# == the normal cases ==========================================================================


@pytest.mark.parametrize("driver", matrix("no_exit"))
def test_normal_no_exit(driver: Driver, server: FaultServer) -> None:
    texts = words(12)
    main = script(chunks_of(texts))
    server.push(main)
    outcome = run(driver, server, Call(never_policy()))
    report = assert_server_finished(outcome, driver, finish="stop")
    assert outcome.text == "".join(texts)
    assert report["tokens_generated"] == len(texts)
    assert report["exit_token_index"] is None
    assert_server_usage(outcome, main)
    assert server.served[0].completed and not server.served[0].disconnected


@pytest.mark.parametrize("driver", matrix("exit"))
def test_normal_exit(driver: Driver, server: FaultServer) -> None:
    texts = words(CUT_TOKENS)
    server.push(script(chunks_of(texts), delay_s=CUT_DELAY))
    outcome = run(driver, server, Call(exit_policy(min_tokens=8), force_answer=False))
    report = assert_exited(outcome, driver)
    assert len(server.served) == 1
    assert_cut(server)
    assert 8 <= report["tokens_generated"] < len(texts)
    assert report["exit_token_index"] is not None and report["exit_token_index"] >= 7
    assert report["tokens_saved_vs_budget"] > 0 and report["saved_fraction"] > 0
    # The stream is closed at once, not after the report is built: the role chunk and the
    # tokens read, then the close within MAX_CLOSE_LATENCY_S.
    latency = server.served[0].close_latency(report["tokens_generated"] + 1)
    assert latency < MAX_CLOSE_LATENCY_S, f"the stream was closed {latency:.3f} s after the last token read"
    # The text is what was read before the cut, nothing else.
    assert outcome.text and "".join(texts).startswith(outcome.text)
    # No usage chunk came (the client closed): the report counts and says so.
    assert report.get("usage_source") == "client"
    assert report["prompt_tokens_estimated"] is True and report["prompt_tokens"] > 0
    # ... and so do the framework's own usage fields: an estimate is never shown as exact there.
    if driver.integration == "wrapper":
        assert outcome.native.response_metadata["prompt_tokens_estimated"] is True
    elif driver.integration == "llamaindex":
        assert outcome.native.additional_kwargs["prompt_tokens_estimated"] is True
    elif driver.integration == "openai":
        assert outcome.usage is not None and outcome.usage["estimated"] is True


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_normal_exit_wrapper_stream_matches_invoke(is_async: bool, server: FaultServer) -> None:
    """``ChatEntropyExit.stream`` concatenated gives the content ``invoke`` gives."""
    texts = words(CUT_TOKENS)
    server.push(script(chunks_of(texts), delay_s=CUT_DELAY), times=2)
    call = Call(exit_policy(min_tokens=8), force_answer=False)
    invoked = run(BY_ID["wrapper-async" if is_async else "wrapper-sync"], server, call)
    streamed = wrapper_stream_text(server.base_url, call, is_async)
    server.wait_idle()
    ok(invoked)
    assert streamed == invoked.text and streamed


@pytest.mark.parametrize("driver", matrix("forced_answer"))
def test_normal_forced_answer(driver: Driver, server: FaultServer) -> None:
    texts = words(CUT_TOKENS)
    server.push(script(chunks_of(texts), delay_s=CUT_DELAY), forcing_script())
    outcome = run(driver, server, Call(exit_policy(min_tokens=8), force_answer=True))
    report = assert_exited(outcome, driver)
    assert len(server.served) == 2, "no forcing request reached the server"
    assert_cut(server, 0)
    assert outcome.text.rstrip().endswith(ANSWER)
    assert outcome.text.startswith("".join(texts[:8]))  # the cut text, then the forced answer
    assert report["forced_answer_tokens"] == 1


@pytest.mark.parametrize("driver", matrix("exit_in_reasoning"))
def test_normal_exit_in_reasoning(driver: Driver, server: FaultServer) -> None:
    """reasoning_content deltas; the exit cuts the reasoning, so the answer is forced by itself."""
    texts = words(CUT_TOKENS)
    server.push(script(chunks_of(texts, reasoning=True), delay_s=CUT_DELAY), forcing_script())
    outcome = run(driver, server, Call(exit_policy(min_tokens=8)))  # force_answer=None: automatic
    report = assert_exited(outcome, driver)
    assert len(server.served) == 2, "no forcing request after an exit in the reasoning"
    assert_cut(server, 0)
    assert outcome.text.strip() == ANSWER
    assert outcome.reasoning and "".join(texts).startswith(outcome.reasoning)
    assert report["reasoning_tokens"] == report["tokens_generated"] - report["forced_answer_tokens"] > 0


# == 1. savings that never happened ===========================================================


@pytest.mark.parametrize("driver", matrix("01_deferred_stop_digit"))
def test_01_deferred_stop_then_server_finishes_digit(driver: Driver, server: FaultServer) -> None:
    """The policy says "confident" at a digit; the stop waits; then the stream ends by itself."""
    texts = [*words(7), " 42"]
    main = script(chunks_of(texts))
    server.push(main)
    outcome = run(driver, server, Call(exit_policy(min_tokens=8), force_answer=False))
    report = assert_server_finished(outcome, driver, finish="stop")
    assert_server_usage(outcome, main)
    assert outcome.text == "".join(texts)
    assert report["tokens_generated"] == len(texts)
    assert report.get("decision_token_index") == len(texts) - 1  # the policy did say "confident"
    assert report["exit_token_index"] is None


@pytest.mark.parametrize("driver", matrix("01_deferred_stop_tool_call"))
def test_01_deferred_stop_then_server_finishes_tool_call(driver: Driver, server: FaultServer) -> None:
    """The policy says "confident" while a tool call streams; the call is never cut; it ends."""
    texts = words(3)
    pieces = ['{"', "q", '":', ' "', "six", " times", " seven", '"}']
    tool = [tool_call_chunk("", name="lookup", call_id="call_1")] + [tool_call_chunk(p) for p in pieces]
    main = script([*chunks_of(texts), *tool], finish="tool_calls")
    server.push(main)
    outcome = run(driver, server, Call(exit_policy(min_tokens=5), force_answer=False))
    report = assert_server_finished(outcome, driver, finish="tool_calls")
    assert_server_usage(outcome, main)
    assert outcome.text == "".join(texts)
    assert report["exit_token_index"] is None
    assert server.served[0].completed


# == 2. a broken stream ==========================================================================


@pytest.mark.parametrize("driver", matrix("02_truncated_stream"))
def test_02_stream_closed_without_finish_is_interrupted(driver: Driver, server: FaultServer) -> None:
    """The body ends cleanly after 25 chunks: no finish_reason, no usage, no [DONE]."""
    main = script(chunks_of(words(40)), close_after=25)
    server.push(main)
    outcome = run(driver, server, Call(never_policy()))
    error = interrupted(outcome)
    partial = error.partial
    assert partial.text == text_of(main.chunks[:25])
    assert len(partial.tokens) == 24 == partial.report.tokens_generated
    assert getattr(partial.report, "ended", None) == "broken"
    assert partial.report.exited is False and partial.report.tokens_saved_vs_budget == 0


# == 3. raw transport errors =====================================================================

FAULTS = {
    # fault option -> (the error class family the real client raises, client timeout)
    "invalid_json_at": ((json.JSONDecodeError,), 5.0),
    "reset_at": ((httpx.ReadError, httpx.RemoteProtocolError), 5.0),
    "error_event_at": ((openai.APIError,), 5.0),
    "stall_at": ((httpx.ReadTimeout,), 0.3),
}
FAULT_AT = 10


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("driver", matrix("03_transport_errors"))
def test_03_transport_error_is_interrupted_with_partial_and_cause(
    driver: Driver, fault: str, server: FaultServer
) -> None:
    main = script(chunks_of(words(30)), **{fault: FAULT_AT})
    causes, timeout = FAULTS[fault]
    server.push(main)
    outcome = run(driver, server, Call(never_policy(), timeout=timeout))
    error = interrupted(outcome)
    assert isinstance(error.__cause__, causes), f"__cause__ is {error.__cause__!r}, expected {causes}"
    partial = error.partial
    before = main.chunks[:FAULT_AT]  # the role chunk and FAULT_AT - 1 tokens
    assert partial.text == text_of(before)
    assert partial.reasoning == ""
    assert len(partial.tokens) == FAULT_AT - 1 == partial.report.tokens_generated
    assert getattr(partial.report, "ended", None) == "broken"
    assert partial.report.exited is False


# == 4. NaN logprob =================================================================================


@pytest.mark.parametrize("driver", matrix("04_nan_logprob"))
def test_04_nan_logprob_is_an_unknown_token_with_a_warning(driver: Driver, server: FaultServer) -> None:
    texts = words(12)
    chunks = [token_chunk(t, nan=(i == 5)) for i, t in enumerate(texts)]
    assert "NaN" in json.dumps(chunks[5])  # the JSON literal goes over the wire
    main = script(chunks)
    server.push(main)
    with pytest.warns(EntropyExitWarning):
        outcome = run(driver, server, Call(never_policy()))
    report = assert_server_finished(outcome, driver, finish="stop")
    assert outcome.text == "".join(texts)
    assert report["tokens_generated"] == len(texts)
    assert report["unknown_tokens"] == 1


# == 5. bad candidates must not read as confidence =================================================

CASE5_POLICY = ExitPolicy(threshold=0.3, aggregation="window", window=4, min_tokens=10, top_k=K)


def _case5_kinds() -> list[str]:
    kinds = []
    for i in range(CUT_TOKENS):
        if 10 <= i < 20:
            kinds.append("bad")
        elif i >= 50:
            kinds.append("confident")
        else:
            kinds.append("uncertain")
    return kinds


def _first_confident_window(kinds: list[str], window: int, min_tokens: int) -> int:
    """Index of the first token that closes ``window`` known confident tokens in a row."""
    for i in range(max(window, min_tokens) - 1, len(kinds)):
        if all(kind == "confident" for kind in kinds[i - window + 1 : i + 1]):
            return i
    raise AssertionError("the script has no confident window")


@pytest.mark.parametrize("driver", matrix("05_bad_candidates"))
def test_05_bad_candidates_are_unknown_not_confident(driver: Driver, server: FaultServer) -> None:
    kinds = _case5_kinds()
    texts = words(len(kinds))
    chunks = [
        token_chunk(t, bad_candidates=(kind == "bad"), confident=(kind == "confident"))
        for t, kind in zip(texts, kinds)
    ]
    server.push(script(chunks, delay_s=CUT_DELAY, delay_from=45))
    earliest = _first_confident_window(kinds, CASE5_POLICY.window, CASE5_POLICY.min_tokens)
    outcome = run(driver, server, Call(CASE5_POLICY, force_answer=False))
    report = assert_exited(outcome, driver)
    assert earliest <= report["exit_token_index"] < len(kinds), (
        f"exit at token {report['exit_token_index']}, before the confident region (>= {earliest})"
    )
    assert report["unknown_tokens"] == kinds.count("bad")


# == 6. wrong phase: inline <think> split over chunks, or after a newline ========================

OPENINGS = {
    "unsplit": ["<think>"],
    "split": ["<th", "in", "k>"],
    "newline": ["\n", "<think>"],
}
INSIDE = words(12)
AFTER = [" It", " is", " " + ANSWER, "."]


def _inline_script(opening: list[str], inside: list[str], *, close: bool = True, **options: Any) -> Script:
    texts = [*opening, *inside, *(["</think>", *AFTER] if close else [])]
    return script(chunks_of(texts), **options)


def expected_reasoning_tokens(opening: list[str], inside: list[str], *, closed: bool = True) -> int:
    """Reasoning tokens of a stream that opens its reasoning with ``opening``.

    The contract (README "Phases"): the reasoning segment runs from the opening tag to the
    closing tag, both included, and whitespace before the opening tag belongs to it (its tokens
    wait, undecided, until the tag decides them). So a whole tag, a tag split over chunks and a
    leading newline differ only by their own tokens, never by where the boundary falls. The
    closing tag is one token ("</think>") in these streams, when it came (``closed``).
    """
    return len(opening) + len(inside) + int(closed)


def _no_tags(text: str) -> bool:
    return not any(fragment in text for fragment in ("<", ">", "think", "<th", "k>"))


@pytest.mark.parametrize("driver", matrix("06a_inline_think_phases"))
def test_06a_inline_think_tokens_are_reasoning(driver: Driver, server: FaultServer) -> None:
    """No exit. For each opening (whole tag, tag split over 3 chunks, a "\\n" token before the
    tag): the tokens between the tags, and only those, are reasoning tokens; no tag leaks into
    the answer or the reasoning; and a split tag gives exactly what the whole tag gives."""
    for opening in OPENINGS.values():
        server.push(_inline_script(opening, INSIDE))
    outcomes = dict(zip(OPENINGS, driver.run_many(server.base_url, Call(never_policy()), len(OPENINGS))))
    for name, outcome in outcomes.items():
        assert_server_finished(outcome, driver, finish="stop")
        assert outcome.reasoning.strip() == "".join(INSIDE).strip(), name
        assert outcome.text.strip() == "".join(AFTER).strip(), name
        assert _no_tags(outcome.text) and _no_tags(outcome.reasoning), name
    whole, split, newline = outcomes["unsplit"], outcomes["split"], outcomes["newline"]
    assert (split.text, split.reasoning) == (whole.text, whole.reasoning)
    # The "\n" before the tag is whitespace outside it: the answer reads the same.
    assert (newline.text.strip(), newline.reasoning) == (whole.text.strip(), whole.reasoning)
    counts = {name: outcome.report["reasoning_tokens"] for name, outcome in outcomes.items()}  # type: ignore[index]
    expected = {name: expected_reasoning_tokens(opening, INSIDE) for name, opening in OPENINGS.items()}
    assert counts == expected, "reasoning_tokens per opening"


CASE6B = "06b_forced_answer_after_inline_reasoning_exit"


@pytest.mark.parametrize("driver", matrix(CASE6B))
def test_06b_exit_in_inline_reasoning_forces_the_answer(driver: Driver, server: FaultServer) -> None:
    """The exit comes inside inline reasoning (for each opening): the answer is forced, and the
    returned answer is the forced one alone."""
    inside = words(CUT_TOKENS)
    forcing = not different(CASE6B, driver)  # the handler cannot force (see DIFFERENT)
    for opening in OPENINGS.values():
        server.push(_inline_script(opening, inside, close=False, delay_s=CUT_DELAY))
        if forcing:
            server.push(forcing_script())
    call = Call(exit_policy(min_tokens=6))  # force_answer=None: forced because the reasoning was cut
    outcomes = driver.run_many(server.base_url, call, len(OPENINGS))
    per_call = 2 if forcing else 1
    assert len(server.served) == per_call * len(OPENINGS), "a forcing request is missing (or extra)"
    for i, (name, opening) in enumerate(OPENINGS.items()):
        outcome = outcomes[i]
        report = assert_exited(outcome, driver)
        assert_cut(server, per_call * i)
        assert outcome.reasoning.strip() and "".join(inside).startswith(outcome.reasoning), name
        assert _no_tags(outcome.reasoning), name
        # The cut came inside the reasoning: the tokens read are the opening and some of `inside`.
        read = report["tokens_generated"] - report["forced_answer_tokens"]
        inside_read = read - len(opening)
        assert inside_read > 0, name
        read_inside = inside[:inside_read]
        assert report["reasoning_tokens"] == expected_reasoning_tokens(opening, read_inside, closed=False), (
            name
        )
        if forcing:
            assert outcome.text.strip() == ANSWER, f"{name}: {outcome.text!r}"  # no tag, no reasoning
        else:
            assert outcome.text.strip() == "", f"{name}: {outcome.text!r}"


# == 7. the number guard ==========================================================================

NUMBERS = {
    "3.14": [" 3", ".", "14"],
    "1,000": [" 1", ",", "000"],
    "3/4": [" 3", "/", "4"],
    "-2": [" -", "2"],
    "1e5": [" 1", "e", "5"],
}


@pytest.mark.parametrize("driver", matrix("07_number_guard"))
def test_07_stop_never_cuts_a_number(driver: Driver, server: FaultServer) -> None:
    """The policy wants to stop at the first piece of a number (for each number): the cut text
    ends with the whole number (and maybe the non-number token after it)."""
    before = words(5)
    after = [" because", *words(CUT_TOKENS, start=5)]
    for pieces in NUMBERS.values():
        server.push(script(chunks_of([*before, *pieces, *after]), delay_s=CUT_DELAY))
    call = Call(exit_policy(min_tokens=len(before) + 1), force_answer=False)
    outcomes = driver.run_many(server.base_url, call, len(NUMBERS))
    cut_inside = {}
    for (number, pieces), outcome in zip(NUMBERS.items(), outcomes):
        assert_exited(outcome, driver)
        whole = "".join(before) + "".join(pieces)
        if outcome.text not in (whole, whole + after[0]):
            cut_inside[number] = outcome.text
    assert not cut_inside, f"stopped inside numbers: {cut_inside}"


# == 8. bad arguments fail at construction ====================================================

BAD_POLICIES = {"dict": {"threshold": 1.0}, "None": None}


def _construct(driver: Driver, policy: Any, server: FaultServer) -> None:
    if driver.integration == "openai":
        from entropy_exit_integrations.openai import astream_chat, stream_chat

        kwargs = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        if driver.is_async:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            asyncio.run(astream_chat(client, policy=policy, **kwargs))
        else:
            client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            stream_chat(client, policy=policy, **kwargs)
    elif driver.integration == "wrapper":
        from langchain_openai import ChatOpenAI

        from entropy_exit_integrations.langchain import ChatEntropyExit

        ChatEntropyExit(model=ChatOpenAI(base_url=server.base_url, api_key="x", model="m"), policy=policy)
    elif driver.integration == "handler":
        from entropy_exit_integrations.langchain import (
            AsyncEntropyExitCallbackHandler,
            EntropyExitCallbackHandler,
        )

        (AsyncEntropyExitCallbackHandler if driver.is_async else EntropyExitCallbackHandler)(policy)
    else:
        from llama_index.llms.openai_like import OpenAILike

        from entropy_exit_integrations.llama_index import EntropyExitLLM

        inner = OpenAILike(model="m", api_base=server.base_url, api_key="x", is_chat_model=True)
        EntropyExitLLM(llm=inner, policy=policy)


@pytest.mark.parametrize("bad", list(BAD_POLICIES))
@pytest.mark.parametrize("driver", matrix("08_bad_arguments"))
def test_08_bad_policy_is_a_type_error_naming_the_type(driver: Driver, bad: str, server: FaultServer) -> None:
    policy = BAD_POLICIES[bad]
    with pytest.raises(TypeError) as caught:
        _construct(driver, policy, server)
    message = str(caught.value)
    assert "ExitPolicy" in message, message
    assert type(policy).__name__ in message or repr(policy) in message, message
    assert server.requests == [], "the call reached the server with a bad policy"


# == 9. async parity over an inner model that only implements _generate ===========================

GENERATE_ONLY_TOKENS = words(9)


def _generate_only_model() -> Any:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class GenerateOnly(BaseChatModel):
        """A chat model with ``_generate`` only; its logprobs in the OpenAI shape."""

        @property
        def _llm_type(self) -> str:
            return "generate-only"

        def _generate(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> ChatResult:
            logprobs = {"content": [token_entry(t) for t in GENERATE_ONLY_TOKENS]}
            message = AIMessage(
                content="".join(GENERATE_ONLY_TOKENS),
                response_metadata={"logprobs": logprobs, "finish_reason": "stop"},
            )
            info = {"logprobs": logprobs, "finish_reason": "stop"}
            return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])

    return GenerateOnly()


@pytest.mark.parametrize("driver", matrix("09_async_parity_generate_only_inner"))
def test_09_async_parity_over_generate_only_inner(driver: Driver) -> None:
    from langchain_core.messages import AIMessageChunk

    from entropy_exit_integrations.langchain import ChatEntropyExit

    llm = ChatEntropyExit(model=_generate_only_model(), policy=never_policy())
    if driver.is_async:

        async def both() -> tuple[Any, Any]:
            invoked = await llm.ainvoke("hi")
            merged: AIMessageChunk | None = None
            async for chunk in llm.astream("hi"):
                merged = chunk if merged is None else merged + chunk
            return invoked, merged

        invoked, streamed = asyncio.run(both())
    else:
        invoked = llm.invoke("hi")
        streamed = None
        for chunk in llm.stream("hi"):
            streamed = chunk if streamed is None else streamed + chunk
    reference = llm.invoke("hi")  # the sync path, the yardstick
    expected = "".join(GENERATE_ONLY_TOKENS)
    for message in (invoked, streamed):
        assert message is not None and message.content == expected
        report = message.response_metadata["entropy_exit"]
        assert report["tokens_generated"] == len(GENERATE_ONLY_TOKENS)
        assert report["unknown_tokens"] == 0 and report["exited"] is False
        for key in ("tokens_generated", "unknown_tokens", "exited", "reasoning_tokens", "k"):
            assert report[key] == reference.response_metadata["entropy_exit"][key], key


# == 10. the event loop is not blocked at the first exit =======================================

CONCURRENT = 8
MAX_STALL_S = 0.2
CASE10 = "10_event_loop_not_blocked"


class _Probe:
    """One stall probe process, its fault server, and what it said."""

    def __init__(self, driver: Driver, env: dict[str, str], cwd: Path) -> None:
        self.server = FaultServer().start()
        self.server.push(script(chunks_of(words(3))))  # the warm-up call: no exit, server usage
        # Long scripts: a stream outlives any stall, so every call's close reaches the server.
        self.server.push(script(chunks_of(words(400)), delay_s=CUT_DELAY), times=2 * CONCURRENT)
        self.stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "stall_probe.py"), driver.id, self.server.base_url, str(CONCURRENT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
            cwd=str(cwd),
        )
        self.ready: dict[str, Any] | None = None

    def read(self, timeout: float) -> dict[str, Any]:
        """The probe's next stdout line as JSON; fails with its stderr when it dies or hangs."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
            line = self.proc.stdout.readline() if selector.select(timeout) else None  # type: ignore[union-attr]
        if not line:
            self.close()
            self.stderr.seek(0)
            pytest.fail(f"the stall probe ended or hung (exit {self.proc.returncode}):\n{self.stderr.read()}")
        return json.loads(line)

    def go(self) -> dict[str, Any]:
        self.proc.stdin.write("go\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.read(timeout=60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.server.stop()


@pytest.fixture(scope="module", autouse=True)
def stall_probes(request: pytest.FixtureRequest) -> Iterator[dict[str, _Probe]]:
    """One fresh process per selected case-10 driver, each with its own fault server.

    Started with the module, so that they import and warm up while the other cases run; case 10
    waits until every one is ready, then lets each measure in turn (so no probe measures while
    another one burns CPU). Nothing starts when no case-10 test is selected.
    """
    import entropy_exit_integrations

    wanted = [
        item.callspec.params["driver"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_10_first_exit_does_not_block_the_event_loop"
        and item.module is request.module
        and not excluded(CASE10, item.callspec.params["driver"])
    ]
    package_root = Path(entropy_exit_integrations.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), str(HERE.parents[1])])}
    probes = {driver.id: _Probe(driver, env, package_root) for driver in wanted}
    try:
        yield probes
    finally:
        for probe in probes.values():
            probe.close()


def _all_ready(probes: dict[str, _Probe]) -> None:
    for probe in probes.values():
        if probe.ready is None and probe.proc.poll() is None:
            with contextlib.suppress(pytest.fail.Exception):  # reported by the probe's own test
                probe.ready = probe.read(timeout=120)


@pytest.mark.parametrize("driver", matrix(CASE10))
def test_10_first_exit_does_not_block_the_event_loop(driver: Driver, stall_probes: dict[str, _Probe]) -> None:
    """N concurrent async calls that all exit, in a fresh process (tiktoken not loaded yet).

    The probe (stall_probe.py) first makes one warm-up call without an exit (the server sends
    usage, so no prompt needs counting) to load the frameworks' lazy parts, checks that no
    tiktoken encoding is loaded, then runs N calls that exit (their streams are cut, so no
    usage chunk comes and the prompt tokens must be estimated) while a ticker task records the
    longest gap between its 5 ms sleeps; then the same N calls again (warm), the yardstick of
    what a loaded machine costs anyway.
    """
    _all_ready(stall_probes)
    probe = stall_probes[driver.id]
    ready = probe.ready if probe.ready is not None else probe.read(timeout=1)
    assert ready["encodings_before"] == 0, "tiktoken had an encoding loaded before the package was imported"
    assert ready["warmup_error"] is None, ready["warmup_error"]
    assert ready["encodings_after_warmup"] == 0, (
        "the warm-up call (no exit, server usage) loaded a tiktoken encoding: the measurement "
        "would not see the first load"
    )
    result = probe.go()
    server = probe.server
    server.wait_idle()
    cold, warm = result["cold"], result["warm"]
    for batch in (cold, warm):
        assert len(batch["outcomes"]) == CONCURRENT
        for outcome in batch["outcomes"]:
            assert outcome["error"] is None, outcome["error"]
            assert outcome["exited"] is True
            # The estimate path ran: no usage chunk on a cut stream, the prompt was counted.
            assert outcome["prompt_tokens_estimated"] is True and outcome["usage_source"] == "client", outcome
    stall, warm_stall = cold["max_stall_s"], warm["max_stall_s"]
    assert _not_blocked(stall, warm_stall, MAX_STALL_S), (
        f"the event loop stalled {stall:.3f} s at the first exits ({warm_stall:.3f} s once warm)"
    )
    # Each stream closed at once after the token that decided (the same for all calls).
    streams = server.served[1:]
    assert len(streams) == 2 * CONCURRENT and all(s.disconnected for s in streams)
    latencies = []
    for batch, served in ((cold, streams[:CONCURRENT]), (warm, streams[CONCURRENT:])):
        (read,) = {outcome["tokens_generated"] for outcome in batch["outcomes"]}
        latencies.append(max(s.close_latency(read + 1) for s in served))
    assert _not_blocked(latencies[0], latencies[1], MAX_CLOSE_LATENCY_S), (
        f"the first streams closed {latencies[0]:.3f} s after the deciding token "
        f"({latencies[1]:.3f} s once warm)"
    )


def _not_blocked(cold: float, warm: float, limit: float) -> bool:
    """The first exits stayed under ``limit``, or, on a machine so loaded that even the warm
    batch comes near it, cost at most half the limit more than the warm batch (a first tiktoken
    load costs 0.15-0.7 s more; scheduling noise costs both batches alike)."""
    return cold < limit or cold - warm < limit / 2


# == 11. forcing after a reasoning_content exit carries the cut reasoning =====================


def carried_reasoning(body: dict[str, Any]) -> str | None:
    """The reasoning a forcing request sends back: on its last assistant message, as
    ``reasoning_content`` or inline ``<think>...</think>`` in the content."""
    assistants = [m for m in body.get("messages") or [] if m.get("role") == "assistant"]
    if not assistants:
        return None
    message = assistants[-1]
    if isinstance(message.get("reasoning_content"), str):
        return message["reasoning_content"]
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    match = re.search(r"<think>(.*?)</think>", content or "", re.DOTALL)
    return match.group(1) if match else None


@pytest.mark.parametrize("driver", matrix("11_forcing_carries_cut_reasoning"))
def test_11_forcing_request_carries_the_cut_reasoning(driver: Driver, server: FaultServer) -> None:
    texts = words(CUT_TOKENS)
    server.push(script(chunks_of(texts, reasoning=True), delay_s=CUT_DELAY), forcing_script())
    outcome = run(driver, server, Call(exit_policy(min_tokens=6)))
    assert_exited(outcome, driver)
    assert len(server.served) == 2, "no forcing request after an exit in the reasoning"
    assert outcome.reasoning and "".join(texts).startswith(outcome.reasoning)
    carried = carried_reasoning(server.requests[1])
    assert carried is not None, f"the forcing request carries no reasoning: {server.requests[1]['messages']}"
    assert carried.strip() == outcome.reasoning.strip()
    assert outcome.text.strip() == ANSWER


# == 12. answer probes (issue 14): stop only when probes agree ====================================


def _probe_script(answer: str) -> Script:
    return script([token_chunk(" " + answer)])


@pytest.mark.parametrize("driver", matrix("12_probes"))
def test_12_agreeing_probes_cut_the_stream_and_give_the_answer(driver: Driver, server: FaultServer) -> None:
    """Periodic probes every 8 tokens, 2 must agree: the second probe agrees with the first, the
    stream is cut, the agreed answer is the forced answer, and the probes' tokens are counted."""
    server.push(script(chunks_of(words(CUT_TOKENS)), delay_s=CUT_DELAY))
    server.push(_probe_script(ANSWER))
    server.push(_probe_script(ANSWER))
    rule = ProbeRule(every=8, agree=2, min_tokens=8, max_tokens=5)
    (outcome,) = driver.run_many(server.base_url, Call(never_policy(), probes=rule), 1)
    report = assert_exited(outcome, driver)
    assert_cut(server, 0)
    main, *probes = server.served
    budgets = [p.body.get("max_tokens", p.body.get("max_completion_tokens")) for p in probes]
    assert budgets == [5, 5]  # ChatOpenAI names it max_completion_tokens
    assert report["probes"] == 2 and report["probe_tokens"] == 2
    read = report["tokens_generated"] - report["probe_tokens"] - report["forced_answer_tokens"]
    assert read >= 16 and report["forced_answer_tokens"] == 0  # no forcing request: the probes answered
    assert outcome.text.rstrip().endswith(ANSWER)


@pytest.mark.parametrize("driver", matrix("12_probes"))
def test_12_disagreeing_probes_never_cut(driver: Driver, server: FaultServer) -> None:
    """Three probes that never agree (max_probes=3): the stream runs to its end, nothing is
    claimed, and the probes still count as tokens spent."""
    texts = words(40)
    server.push(script(chunks_of(texts)))
    for answer in ("1", "2", "3"):
        server.push(_probe_script(answer))
    rule = ProbeRule(every=8, agree=2, min_tokens=8, max_probes=3)
    (outcome,) = driver.run_many(server.base_url, Call(never_policy(), probes=rule), 1)
    assert outcome.error is None and outcome.report is not None
    report = outcome.report
    assert not report["exited"] and report["ended"] == "server_done" and report["tokens_saved_vs_budget"] == 0
    assert report["probes"] == 3 and report["probe_tokens"] == 3 and len(server.served) == 4
    assert report["tokens_generated"] >= len(texts) + 3
    assert "".join(texts) in outcome.text


# == 13. forcing and probes with tools bound (issue 18): one rule for every short request ========

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
        },
    }
]


@pytest.mark.parametrize("driver", matrix("11_forcing_carries_cut_reasoning"))
def test_13_forcing_with_tools_bound_sends_no_tools(driver: Driver, server: FaultServer) -> None:
    """llama.cpp refuses ``tools`` with ``logprobs`` + ``stream``: the forcing request after an
    exit drops the tools (and their choice) in every integration, and the answer is forced."""
    server.push(script(chunks_of(words(CUT_TOKENS), reasoning=True), delay_s=CUT_DELAY), forcing_script())
    outcome = run(driver, server, Call(exit_policy(min_tokens=6), tools=TOOLS))
    assert_exited(outcome, driver)
    main, forcing = server.served
    assert main.body.get("tools"), "the main request lost its tools"
    assert "tools" not in forcing.body and "tool_choice" not in forcing.body
    assert outcome.text.strip() == ANSWER


@pytest.mark.parametrize("driver", matrix("12_probes"))
def test_13_probes_with_tools_bound_send_no_tools(driver: Driver, server: FaultServer) -> None:
    server.push(script(chunks_of(words(CUT_TOKENS)), delay_s=CUT_DELAY))
    server.push(_probe_script(ANSWER))
    server.push(_probe_script(ANSWER))
    rule = ProbeRule(every=8, agree=2, min_tokens=8, max_tokens=5)
    (outcome,) = driver.run_many(server.base_url, Call(never_policy(), probes=rule, tools=TOOLS), 1)
    assert_exited(outcome, driver)
    main, *probes = server.served
    assert main.body.get("tools") and len(probes) == 2
    assert all("tools" not in p.body and "tool_choice" not in p.body for p in probes)
    assert outcome.text.rstrip().endswith(ANSWER)


# == 14. wire shapes of reasoning and agent deployments (issue 19) ===============================


def _bare_close_script(reasoning: list[str], answer: list[str], **options: Any) -> Script:
    """A template-opened ``<think>`` (DeepSeek-R1 distills, QwQ, Qwen3-Thinking without a
    reasoning parser): the output is reasoning up to a bare ``</think>``, then the answer."""
    return script([*chunks_of(reasoning), token_chunk("</think>"), *chunks_of(answer)], **options)


@pytest.mark.parametrize("driver", matrix("14_think_open"))
def test_14_template_opened_think_splits_reasoning_from_answer(driver: Driver, server: FaultServer) -> None:
    reasoning, answer = words(6), [" forty", " two"]
    server.push(_bare_close_script(reasoning, answer))
    outcome = run(driver, server, Call(never_policy(), reasoning_format="think_open"))
    report = ok(outcome)
    assert not report["exited"]
    assert outcome.reasoning.strip() == "".join(reasoning).strip()
    assert outcome.text.strip() == "forty two" and "</think>" not in outcome.text
    assert report["reasoning_tokens"] == len(reasoning) + 1  # the closing tag is a reasoning token


@pytest.mark.parametrize("driver", matrix("14_think_open_forcing"))
def test_14_exit_in_template_opened_reasoning_forces_the_answer(driver: Driver, server: FaultServer) -> None:
    server.push(_bare_close_script(words(CUT_TOKENS), [" late"], delay_s=CUT_DELAY), forcing_script())
    outcome = run(driver, server, Call(exit_policy(min_tokens=6), reasoning_format="think_open"))
    assert_exited(outcome, driver)
    assert len(server.served) == 2, "an exit in the reasoning must force the answer"
    assert outcome.reasoning and outcome.text.strip() == ANSWER


def _guided_tool_call_script() -> Script:
    """vLLM's guided decoding of a required tool call: chunks with logprobs but no text and no
    tool-call delta, then the tool call in the last chunks (built from vLLM 0.32's shape)."""
    silent = [_silent_chunk() for _ in range(40)]
    call = [tool_call_chunk('{"word": ', name="lookup"), tool_call_chunk('"fox"}')]
    return script([*silent, *call], finish="tool_calls", delay_s=CUT_DELAY)


def _silent_chunk() -> dict[str, Any]:
    chunk = token_chunk("x")
    chunk["choices"][0]["delta"] = {}
    return chunk


@pytest.mark.parametrize("driver", matrix("14_required_tool_call"))
def test_14_a_required_tool_call_is_never_cut(driver: Driver, server: FaultServer) -> None:
    server.push(_guided_tool_call_script())
    call = Call(exit_policy(min_tokens=4), tools=TOOLS, tool_choice="required")
    outcome = run(driver, server, call)
    report = ok(outcome)
    assert not report["exited"] and report["ended"] == "server_done"
    assert server.served[0].completed and len(server.served) == 1  # read to the end, nothing forced


@pytest.mark.parametrize("driver", matrix("14_n_choices"))
def test_14_several_choices_are_refused_before_sending(driver: Driver, server: FaultServer) -> None:
    outcome = run(driver, server, Call(exit_policy(), n=2))
    assert isinstance(outcome.error, ValueError), outcome.error
    assert "one call per sample" in str(outcome.error)
    assert server.served == []


@pytest.mark.parametrize("driver", matrix("14_decision_on_last_token"))
def test_14_a_decision_on_the_last_budget_token_is_no_exit(driver: Driver, server: FaultServer) -> None:
    """The server's finish reason wins: ``length`` arrives in its own chunk after the last
    token, on which the policy decided; the whole budget was generated, nothing was saved."""
    budget = 8
    server.push(script(chunks_of(words(budget)), finish="length"))
    outcome = run(driver, server, Call(exit_policy(min_tokens=budget), max_tokens=budget))
    report = ok(outcome)
    assert not report["exited"] and report["finish_reason"] == "length"
    assert report["tokens_saved_vs_budget"] == 0


# == 15. sampled audits of exits (issue 21) ======================================================


@pytest.mark.parametrize("harmful", [False, True], ids=["harmless", "harmful"])
@pytest.mark.parametrize("driver", matrix("15_audit"))
def test_15_an_audited_exit_reads_to_the_end(driver: Driver, server: FaultServer, harmful: bool) -> None:
    """At the decision the forced answer is asked on a second request while the stream goes on;
    the stream is read to its natural end; nothing is claimed saved; the answers are compared."""
    texts = [*words(12), " " + ANSWER]
    server.push(script(chunks_of(texts)), script([token_chunk(" WRONG" if harmful else " " + ANSWER)]))
    outcome = run(driver, server, Call(exit_policy(min_tokens=6), audit=AuditRule(rate=1.0)))
    report = ok(outcome)
    main, audit = server.served
    assert main.completed and not main.disconnected  # read to the end
    assert "tools" not in audit.body and audit.body["messages"][-1]["role"] == "assistant"
    assert not report["exited"] and report["ended"] == "server_done" and report["tokens_saved_vs_budget"] == 0
    assert report["audited"] is True and report["audit_harmful"] is harmful
    assert report["audit_tokens"] == 1 and report["audit_would_save"] == len(texts) - 6 - 1
    assert outcome.text == "".join(texts)  # the full answer, untouched by the audit


@pytest.mark.parametrize("driver", matrix("15_audit"))
def test_15_rate_zero_changes_nothing(driver: Driver, server: FaultServer) -> None:
    server.push(script(chunks_of(words(CUT_TOKENS)), delay_s=CUT_DELAY), forcing_script())
    outcome = run(
        driver, server, Call(exit_policy(min_tokens=6), force_answer=True, audit=AuditRule(rate=0.0))
    )
    report = assert_exited(outcome, driver)
    assert report["audited"] is False and len(server.served) == 2


@pytest.mark.parametrize("driver", matrix("15_audit"))
def test_15_the_ledger_bounds_the_harm_of_audited_exits(driver: Driver, server: FaultServer) -> None:
    """Four audited calls through the integration, one harmful: the ledger counts them exactly and
    gives the exact one-sided Clopper-Pearson bound."""
    texts = [*words(12), " " + ANSWER]
    answers = [" WRONG", " " + ANSWER, " " + ANSWER, " " + ANSWER]
    for answer in answers:
        server.push(script(chunks_of(texts)), script([token_chunk(answer)]))
    ledger = SavingsLedger()
    call = Call(exit_policy(min_tokens=6), audit=AuditRule(rate=1.0), ledger=ledger)
    outcomes = driver.run_many(server.base_url, call, len(answers))
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    summary = ledger.audit(confidence=0.95)
    assert summary.audited == 4 and summary.harmful == 1 and summary.exits == 0
    assert summary.harm_upper_bound == pytest.approx(clopper_pearson_upper(1, 4, 0.95))
    assert summary.audit_tokens == 4 and summary.tokens_saved == 0


# == 16. exact usage after a cut: continuous_usage_stats (issue 19) ===========================

ASKS_CONTINUOUS_USAGE = ("openai", "llamaindex")
"""The integrations that ask for usage in every chunk (``engine.STREAM_USAGE``). Through
LangChain it is not sent: ChatOpenAI replaces ``stream_options`` with its own ``include_usage``,
so a cut stream's prompt count there is an estimate, flagged as one."""

CONTINUOUS = "continuous_usage_stats"


def _asked_continuous(body: dict[str, Any]) -> bool:
    return bool((body.get("stream_options") or {}).get(CONTINUOUS))


@pytest.mark.parametrize("driver", matrix("16_continuous_usage"))
def test_16_a_cut_stream_reports_the_servers_exact_counts(driver: Driver, server: FaultServer) -> None:
    """vLLM streams prompt and completion counts in every chunk when asked: a cut stream's report
    has the server's exact prompt tokens and its count of what was generated (usage_source
    "server"); where it is not asked for, the estimate is flagged, never shown as exact."""
    server.push(script(chunks_of(words(CUT_TOKENS)), delay_s=CUT_DELAY, continuous_usage=True))
    outcome = run(driver, server, Call(exit_policy(min_tokens=8), force_answer=False))
    report = assert_exited(outcome, driver)
    assert_cut(server)
    asks = driver.integration in ASKS_CONTINUOUS_USAGE
    assert _asked_continuous(server.served[0].body) is asks
    if asks:
        assert report["prompt_tokens"] == SERVER_PROMPT_TOKENS
        assert report["prompt_tokens_estimated"] is False
        assert report["usage_source"] == "server"
        assert report["tokens_generated"] == report["exit_token_index"] + 1  # what the server counted
        assert outcome.usage is not None and outcome.usage["prompt_tokens"] == SERVER_PROMPT_TOKENS
        assert "estimated" not in outcome.usage
    else:
        assert report["prompt_tokens_estimated"] is True and report["usage_source"] == "client"


@pytest.mark.parametrize("driver", matrix("16_continuous_usage"))
def test_16_a_server_that_rejects_continuous_usage_gets_one_retry_without_it(
    driver: Driver, server: FaultServer
) -> None:
    """A server that does not know the field (the OpenAI API's schema has no
    ``continuous_usage_stats``) answers 400 naming it: one retry without it, and the forcing
    request does not send it again."""
    field = f"stream_options.{CONTINUOUS}"
    main = script(chunks_of(words(CUT_TOKENS)), delay_s=CUT_DELAY, reject_field=field)
    forcing = forcing_script()
    forcing.reject_field = field
    server.push(main, forcing)
    outcome = run(driver, server, Call(exit_policy(min_tokens=8), force_answer=True))
    assert_exited(outcome, driver)
    asks = driver.integration in ASKS_CONTINUOUS_USAGE
    rejected = [s for s in server.served if s.rejected]
    assert len(rejected) == (1 if asks else 0)
    if asks:
        assert server.served[0].rejected and _asked_continuous(server.served[0].body)
    sent = [s for s in server.served if not s.rejected]
    assert not any(_asked_continuous(s.body) for s in sent)
    assert_cut(server, server.served.index(sent[0]))
    if driver.integration != "handler":  # (it neither sets the request nor forces: _CANNOT_FORCE)
        assert sent[0].body["stream_options"]["include_usage"] is True
        assert len(sent) == 2 and outcome.text.rstrip().endswith(ANSWER)


# == 17. wire shapes recorded from real servers (issue 19) ======================================

WIRE = HERE.parent / "data" / "recordings" / "wire"
"""One fixture per server x format, recorded by ``benchmarks/record_wire_shapes.py``: NAME.jsonl
(the SSE payloads, verbatim) and NAME.meta.json (server, version, flags, model, date, request,
and the replay settings: ``reasoning_format``, tools, ``tool_choice``). Two are built by hand
(``tests/data/recordings/hand_built.py``: Ollama ``/v1`` and GPT-OSS harmony as raw text; their
``server`` says so, and the harmony one states its split in ``replay.expected``)."""

RECORDED = sorted(path.stem for path in WIRE.glob("*.jsonl"))

_REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")


class Recording:
    """A recorded stream and what it says, read from the chunks alone (not by the package)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.chunks = [json.loads(line) for line in (WIRE / f"{name}.jsonl").read_text().splitlines()]
        self.meta = json.loads((WIRE / f"{name}.meta.json").read_text())
        replay = self.meta["replay"]
        self.reasoning_format: str = replay["reasoning_format"]
        self.tools = replay.get("tools")
        self.tool_choice = replay.get("tool_choice")
        choices = [c["choices"][0] for c in self.chunks if c.get("choices")]
        deltas = [choice.get("delta") or {} for choice in choices]
        self.finish = next(c["finish_reason"] for c in reversed(choices) if c.get("finish_reason"))
        usage = next(c["usage"] for c in reversed(self.chunks) if c.get("usage"))
        self.prompt_tokens, self.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        self.continuous_usage = any(c.get("usage") for c in self.chunks if c.get("choices"))
        self.tokens_per_chunk = [
            len((choice.get("logprobs") or {}).get("content") or []) for choice in choices
        ]
        self.tool_call = any(d.get("tool_calls") for d in deltas)
        field_reasoning = "".join(d.get(k) or "" for d in deltas for k in _REASONING_FIELDS)
        content = "".join(d.get("content") or "" for d in deltas)
        if field_reasoning:
            self.reasoning, self.answer, self.inline = field_reasoning, content, False
        elif "</think>" in content:  # inline tags, whole or opened by the template
            before, self.answer = content.split("</think>", 1)
            self.reasoning, self.inline = before.replace("<think>", ""), True
        else:
            self.reasoning, self.answer, self.inline = "", content, False
        expected = replay.get("expected")  # a hand-built harmony stream: the split is stated
        if expected:
            self.reasoning, self.answer, self.inline = expected["reasoning"], expected["answer"], True
        self.starts_in_reasoning = bool(self.reasoning.strip())  # (servers send the reasoning first)

    @property
    def requires_tool(self) -> bool:
        return self.tool_choice is not None

    def script(self, **options: Any) -> Script:
        """The recorded chunks as the server's stream (their own usage chunk: none added)."""
        return Script(list(self.chunks), send_usage=False, continuous_usage=self.continuous_usage, **options)

    def call(self, policy: ExitPolicy, **kwargs: Any) -> Call:
        return Call(
            policy,
            reasoning_format=self.reasoning_format,
            tools=self.tools,
            tool_choice=self.tool_choice,
            **kwargs,
        )

    def chunk_of_token(self, n: int) -> int:
        """Index (in the script) of the chunk that carries the n-th token (1-based)."""
        seen = 0
        index = 0
        for index, chunk in enumerate(self.chunks):
            choice = (chunk.get("choices") or [{}])[0]
            seen += len((choice.get("logprobs") or {}).get("content") or [])
            if seen >= n:
                return index
        return index


def _sees_reasoning_text(recording: Recording, driver: Driver) -> bool:
    """ChatOpenAI drops reasoning fields before the callback handler sees them (_NO_REASONING_FIELD)."""
    return not (driver.integration == "handler" and not recording.inline)


def test_17_every_recording_has_its_sidecar() -> None:
    assert RECORDED, f"no recordings in {WIRE}"
    for name in RECORDED:
        meta = json.loads((WIRE / f"{name}.meta.json").read_text())
        for key in ("server", "version", "flags", "model", "date", "request", "replay"):
            assert meta.get(key), f"{name}.meta.json has no {key}"


@pytest.mark.parametrize("name", RECORDED)
@pytest.mark.parametrize("driver", matrix("17_recorded_no_exit"))
def test_17_a_recorded_stream_reads_as_the_server_sent_it(
    driver: Driver, name: str, server: FaultServer
) -> None:
    """No exit: the answer, the reasoning, the finish reason and the server's usage, exactly."""
    recording = Recording(name)
    server.push(recording.script())
    outcome = run(driver, server, recording.call(never_policy()))
    report = ok(outcome)
    assert not report["exited"] and report["ended"] == "server_done"
    assert report["finish_reason"] == recording.finish and outcome.finish_reason == recording.finish
    assert report["prompt_tokens"] == recording.prompt_tokens and report["prompt_tokens_estimated"] is False
    assert report["tokens_generated"] == recording.completion_tokens and report["usage_source"] == "server"
    assert outcome.text.strip() == recording.answer.strip()
    assert "</think>" not in outcome.text and "<think>" not in outcome.text
    if _sees_reasoning_text(recording, driver):
        assert outcome.reasoning.strip() == recording.reasoning.strip()
    assert server.served[0].completed and len(server.served) == 1


EXIT_AT = 4
"""Tokens a recorded stream's exit waits for (``min_tokens``)."""
REPLAY_CUT_DELAY = 0.1
"""Pause after each chunk from the one carrying token EXIT_AT: the close is seen before the end."""


@pytest.mark.parametrize("name", RECORDED)
@pytest.mark.parametrize("driver", matrix("17_recorded_exit"))
def test_17_a_recorded_stream_exits_as_every_stream_does(
    driver: Driver, name: str, server: FaultServer
) -> None:
    """An exit (every known token is confident): the stream is cut, in the reasoning the answer
    is forced; a required tool call is never cut; after a cut the prompt count is the server's
    where the integration asked for per-chunk usage and the server sends it (vLLM)."""
    recording = Recording(name)
    delay_from = recording.chunk_of_token(EXIT_AT)
    server.push(recording.script(delay_s=REPLAY_CUT_DELAY, delay_from=delay_from), forcing_script())
    outcome = run(driver, server, recording.call(exit_policy(min_tokens=EXIT_AT)))
    if recording.requires_tool:
        report = ok(outcome)
        assert not report["exited"] and report["ended"] == "server_done"
        assert server.served[0].completed and len(server.served) == 1
        return
    report = assert_exited(outcome, driver)
    assert_cut(server)
    forced = recording.starts_in_reasoning and driver.integration != "handler"  # (_CANNOT_FORCE)
    assert len(server.served) == (2 if forced else 1)
    if forced:
        assert outcome.text.strip() == ANSWER
    elif recording.starts_in_reasoning:  # the handler: cut in the reasoning, no answer yet
        assert outcome.text == ""
    else:
        assert outcome.text and recording.answer.startswith(outcome.text)
    if recording.starts_in_reasoning and _sees_reasoning_text(recording, driver):
        assert outcome.reasoning.strip() and recording.reasoning.strip().startswith(outcome.reasoning.strip())
    exact = recording.continuous_usage and driver.integration in ASKS_CONTINUOUS_USAGE
    assert report["prompt_tokens_estimated"] is not exact
    if exact:
        assert report["prompt_tokens"] == recording.prompt_tokens
