"""MonitoredCall: reports true by construction, usage provenance, bad data only delays."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from entropy_exit_integrations import EntropyExitWarning, ExitOptions, ExitPolicy, StreamInterrupted
from entropy_exit_integrations.core.probes import ProbeRule
from entropy_exit_integrations.driver import drive as run_driver
from entropy_exit_integrations.engine import ENTROPY_EXIT, MonitoredCall, RequestSpec
from entropy_exit_integrations.providers import ChunkParts, parse_chat_chunk


def chunk(text: str, *, sure: bool = True, finish: str | None = None, tool: bool = False) -> dict:
    """A chat chunk of one token: near certain (2 candidates) or uniform over 4."""
    top = (
        [{"token": text, "logprob": -0.001}, {"token": "~", "logprob": -9.0}]
        if sure
        else [{"token": f"{text}{i}", "logprob": math.log(0.25)} for i in range(4)]
    )
    delta: dict = {"content": text}
    if tool:
        delta["tool_calls"] = [{"index": 0, "function": {"arguments": "{"}}]
    entry = {"token": text, "logprob": top[0]["logprob"], "top_logprobs": top}
    return {
        "choices": [{"index": 0, "delta": delta, "logprobs": {"content": [entry]}, "finish_reason": finish}]
    }


def usage(prompt: int, completion: int) -> dict:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


def drive(call: MonitoredCall, chunks: list[dict]) -> bool:
    """The loop every shim runs; returns whether it cut the stream."""
    for c in chunks:
        call.feed(parse_chat_chunk(c))
        if call.should_stop:
            break
    cut = call.should_stop
    call.end_main(cut=cut)
    return cut


def test_an_exit_is_a_cut_and_counts_client_side() -> None:
    call = MonitoredCall(ExitPolicy(threshold=1.0, min_tokens=3), max_tokens=50, messages=[], model="m")
    assert drive(call, [chunk("a"), chunk("b"), chunk("c"), chunk("d")])
    result = call.finish()
    report = result.report
    assert result.finish_reason == ENTROPY_EXIT and report.exited and report.ended == "we_closed"
    assert report.exit_token_index == 2 and report.tokens_generated == 3
    assert report.tokens_saved_vs_budget == 47 and report.usage_source == "client"
    assert report.prompt_tokens_estimated and result.usage["estimated"] is True


def test_a_deferred_stop_the_stream_outran_is_not_an_exit() -> None:
    """Case 1 of the engine issue: confident while a tool call streams, then the model finished."""
    call = MonitoredCall(ExitPolicy(threshold=1.0, min_tokens=1), max_tokens=100)
    chunks = [chunk("a", tool=True), chunk("b"), chunk("c", finish="tool_calls"), usage(11, 95)]
    assert not drive(call, chunks)
    result = call.finish()
    report = result.report
    assert result.finish_reason == "tool_calls" and not report.exited and report.ended == "server_done"
    assert report.tokens_saved_vs_budget == 0 and report.decision_token_index == 0
    assert report.usage_source == "server" and result.usage == {
        "prompt_tokens": 11,
        "completion_tokens": 95,
        "total_tokens": 106,
    }


def test_no_stop_after_the_model_finished() -> None:
    call = MonitoredCall(ExitPolicy(threshold=1.0, min_tokens=1))
    call.feed(parse_chat_chunk(chunk("a", finish="stop")))
    assert call.session.decision.should_exit and not call.should_stop


def test_a_stream_without_a_finish_reason_is_broken() -> None:
    call = MonitoredCall(ExitPolicy(threshold=0.0), max_tokens=100)
    assert not drive(call, [chunk("a"), chunk("b")])
    with pytest.raises(StreamInterrupted) as raised:
        call.finish()
    partial = raised.value.partial
    assert partial.text == "ab" and len(partial.tokens) == 2
    assert partial.report.ended == "broken" and partial.report.exit_reason == "interrupted"
    assert isinstance(raised.value.__cause__, ConnectionError)


def test_framework_streams_without_finish_reasons_are_not_broken() -> None:
    call = MonitoredCall(ExitPolicy(threshold=0.0), terminal_required=False)
    drive(call, [chunk("a")])
    assert call.finish().finish_reason == "stop"


class Scripted:
    """A transport whose streams are scripted: one iterable of chat chunks per request opened."""

    def __init__(self, *streams: object) -> None:
        self.streams = list(streams)
        self.specs: list[RequestSpec] = []
        self.parts = parse_chat_chunk
        self.closed = 0

    def open(self, spec: RequestSpec) -> Iterator[dict]:
        self.specs.append(spec)
        stream = self.streams.pop(0)
        if isinstance(stream, Exception):
            raise stream
        return iter(stream)  # type: ignore[call-overload]

    def close(self, stream: Iterator[dict]) -> None:
        self.closed += 1


def result_of(call: MonitoredCall, transport: Scripted):
    *_, last = run_driver(call, transport)
    return last.result


def test_the_driver_turns_mid_stream_errors_into_stream_interrupted() -> None:
    def stream():
        yield chunk("a")
        raise ValueError("bad json")

    with pytest.raises(StreamInterrupted) as raised:
        result_of(MonitoredCall(ExitPolicy(threshold=0.0)), Scripted(stream()))
    assert raised.value.partial.text == "a" and isinstance(raised.value.__cause__, ValueError)

    def fails_at_once():
        raise KeyError("rate limited")
        yield  # pragma: no cover

    with pytest.raises(KeyError):  # before the first chunk: the provider's own error
        result_of(MonitoredCall(ExitPolicy(threshold=0.0)), Scripted(fails_at_once()))


def test_an_exit_closes_the_stream_and_the_forcing_request_drops_tools() -> None:
    """One rule for every short request: no tools, no n, its own budget and stop."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    call = MonitoredCall(
        ExitOptions(policy=ExitPolicy(threshold=1.0, min_tokens=2), force_answer=True),
        fields={"model": "m", "tools": tools, "max_tokens": 50, "temperature": 0},
        messages=[{"role": "user", "content": "q"}],
    )
    endless = (chunk(w) for w in ["a", "b", "c", "d", "e"])
    transport = Scripted(endless, [chunk("42"), chunk("", finish="stop")])
    result = result_of(call, transport)
    main, forcing = transport.specs
    assert main.fields["tools"] == tools and main.fields["logprobs"] is True
    assert "tools" not in forcing.fields and forcing.fields["max_tokens"] == 64
    assert forcing.fields["temperature"] == 0 and forcing.role == "forcing"
    assert result.report.exited and result.forced_answer == "42" and transport.closed == 2


def test_n_above_one_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="one call per sample"):
        MonitoredCall(ExitPolicy(threshold=1.0), fields={"n": 2})


def test_a_required_tool_call_is_never_cut() -> None:
    call = MonitoredCall(
        ExitPolicy(threshold=1.0, min_tokens=1), fields={"tools": [{}], "tool_choice": "required"}
    )
    assert not drive(call, [chunk(w) for w in "abcdef"])


def test_forcing_after_a_reasoning_cut_sends_the_reasoning_inline_when_the_client_cannot() -> None:
    call = MonitoredCall(ExitPolicy(threshold=1.0, min_tokens=2), reasoning_field=False)
    reasoning = [
        {"choices": [{"delta": {"reasoning_content": t}, "logprobs": chunk(t)["choices"][0]["logprobs"]}]}
        for t in ("think", "ing")
    ]
    assert drive(call, reasoning) and call.wants_forcing()
    plan = call.forcing_spec()
    assert plan.messages[-1]["content"].startswith("<think>\nthinking\n</think>")
    # vLLM may stream the continuation of a cut reasoning as reasoning: it is the answer.
    call.feed_forced(ChunkParts(reasoning=" 42", finish_reason="stop"))
    call.finish_forced()
    result = call.finish()
    assert result.text == "42" and result.forced_answer == "42" and result.reasoning == "thinking"


def test_a_bad_policy_is_a_type_error_naming_what_it_got() -> None:
    with pytest.raises(TypeError, match="dict"):
        ExitOptions(policy={"threshold": 1.0})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="NoneType"):
        MonitoredCall(None)  # type: ignore[arg-type]


# -- bad data only delays: a property over any stream and any corruption ----------------------

CORRUPTIONS = {
    "nan": lambda top: [{**c, "logprob": float("nan")} for c in top],
    "empty": lambda top: [],
    "one_live": lambda top: [top[0]] + [{**c, "logprob": -9999.0} for c in top[1:]],
    "minus_inf": lambda top: [top[0]] + [{**c, "logprob": float("-inf")} for c in top[1:]],
    "positive": lambda top: [{**c, "logprob": 0.7} for c in top],
    "string": lambda top: [{**c, "logprob": "x"} for c in top],
    "not_a_list": lambda top: 3,
}


def exit_index(chunks: list[dict], policy: ExitPolicy) -> int | None:
    call = MonitoredCall(policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, c in enumerate(chunks):
            call.feed(parse_chat_chunk(c))
            if call.session.decision.should_exit:
                return i
    return None


@settings(max_examples=300, deadline=None)
@example(  # found by this test: a lone live -1.3e-164 read 1.9e-164 bits instead of unknown
    stream=[[0.0, 0.0]] * 8 + [[-1.3394672349903213e-164, 0.0]],
    corrupt={8: "one_live"},
    aggregation="mean",
    window=1,
    min_tokens=0,
    patience=1,
    threshold=1.0,
)
@given(
    stream=st.lists(
        st.lists(st.floats(min_value=-12.0, max_value=0.0), min_size=2, max_size=6), min_size=1, max_size=40
    ),
    corrupt=st.dictionaries(st.integers(0, 39), st.sampled_from(sorted(CORRUPTIONS))),
    aggregation=st.sampled_from(["mean", "window", "ema"]),
    window=st.integers(1, 8),
    min_tokens=st.integers(0, 10),
    patience=st.integers(1, 3),
    threshold=st.floats(min_value=0.0, max_value=3.0),
)
def test_corrupting_any_tokens_logprobs_never_moves_the_exit_earlier(
    stream, corrupt, aggregation, window, min_tokens, patience, threshold
) -> None:
    policy = ExitPolicy(
        threshold=threshold,
        aggregation=aggregation,
        window=window,
        min_tokens=min_tokens,
        patience=patience,
        top_k=5,
    )
    clean = []
    for i, values in enumerate(stream):
        top = [{"token": f"t{i}_{j}", "logprob": v} for j, v in enumerate(values)]
        entry = {"token": top[0]["token"], "logprob": values[0], "top_logprobs": top}
        clean.append({"choices": [{"delta": {"content": "w"}, "logprobs": {"content": [entry]}}]})
    dirty = copy.deepcopy(clean)
    for i, kind in corrupt.items():
        if i < len(dirty):
            entry = dirty[i]["choices"][0]["logprobs"]["content"][0]
            entry["top_logprobs"] = CORRUPTIONS[kind](entry["top_logprobs"])
            if kind in ("nan", "string"):
                entry["logprob"] = entry["top_logprobs"][0]["logprob"] if entry["top_logprobs"] else None
    before = exit_index(clean, policy)
    after = exit_index(dirty, policy)
    assert after is None or (before is not None and after >= before)


def probe_stream(answer: str, breaks: Exception | None) -> Iterator[dict]:
    """A probe's stream: the answer, then the end, or ``breaks`` raised after the answer."""
    yield chunk(answer)
    if breaks is not None:
        raise breaks
    yield chunk("", finish="stop")


def test_a_probe_stream_that_breaks_is_no_answer_and_the_call_goes_on() -> None:
    call = MonitoredCall(
        ExitOptions(
            policy=ExitPolicy(threshold=0.0, min_tokens=0), probes=ProbeRule(every=1, agree=2, min_tokens=0)
        ),
        max_tokens=50,
        messages=[{"role": "user", "content": "q"}],
        model="m",
    )
    main = (chunk("x") for _ in range(10))
    # a broken probe's "42" counts as no answer, so the next "42" does not agree with it
    transport = Scripted(
        main,
        probe_stream("42", ValueError("invalid JSON")),
        probe_stream("42", None),
        probe_stream("42", None),
    )
    result = result_of(call, transport)
    assert result.report.exited and result.report.probes == 3 and result.forced_answer == "42"
    assert [spec.role for spec in transport.specs] == ["main", "probe", "probe", "probe"]


def test_a_pass_through_report_shows_no_entropy() -> None:
    """Without logprobs (on_missing="pass_through") nothing was measured: no entropy is reported."""
    call = MonitoredCall(ExitPolicy(threshold=1.0, on_missing="pass_through"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EntropyExitWarning)
        for text in "abc":
            call.feed(ChunkParts(content=text))
    call.feed(ChunkParts(finish_reason="stop"))
    call.end_main(cut=False)
    report = call.finish(estimate_prompt=False).report
    assert report.unknown_tokens == 3 and report.aggregate_entropy is None and report.entropy.mean is None
    assert "entropy n/a" in str(report)
