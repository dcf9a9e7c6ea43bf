import warnings

import pytest

from entropy_exit_integrations import ExitPolicy, Phase
from entropy_exit_integrations.errors import EntropyExitWarning, LogprobsUnavailableError
from entropy_exit_integrations.providers import ChunkParts, parse_chat_chunk
from entropy_exit_integrations.session import ExitSession
from tests.unit_tests.recordings import load_chunks


def chunk(text: str = "", *, reasoning: str = "", role: bool = False, tool: bool = False) -> dict:
    """A llama.cpp-shaped chat chunk whose one token is near certain (0.002 bits)."""
    delta: dict = {"content": text or None}
    if reasoning:
        delta["reasoning_content"] = reasoning
    if role:
        delta["role"] = "assistant"
    if tool:
        delta["tool_calls"] = [{"index": 0, "function": {"arguments": "{"}}]
    token = text or reasoning or "x"
    top = [{"token": token, "logprob": -0.001}, {"token": "\u00a7", "logprob": -9.0}]
    entry = {"token": token, "logprob": -0.001, "top_logprobs": top}
    return {"choices": [{"index": 0, "delta": delta, "logprobs": {"content": [entry]}}]}


def feed_all(session: ExitSession, chunks: list[dict]) -> None:
    for c in chunks:
        session.feed(parse_chat_chunk(c))


def test_inline_think_tags_split_text_and_tag_tokens() -> None:
    session = ExitSession(ExitPolicy(threshold=0.0))
    feed_all(
        session, [chunk("<th"), chunk("ink>"), chunk("7+5"), chunk("=12</th"), chunk("ink>"), chunk("12")]
    )
    session.close_text()
    assert session.reasoning == "7+5=12" and session.text == "12"
    # The tag tokens belong to the reasoning: "<th" waits undecided until "ink>" opens the tag,
    # and the tokens that close it were written inside it.
    assert [t.phase for t in session.tokens] == [Phase.REASONING] * 5 + [Phase.ANSWER]
    assert session.monitor.reasoning_tokens == 5


@pytest.mark.parametrize(
    "pieces",
    [["<think>", "7+5", "=12", "</think>", "12"], ["<th", "in", "k>", "7+5", "=12</", "think>", "12"]],
)
@pytest.mark.parametrize("lead", ["", "\n", " \n"])
def test_a_split_tag_reads_like_the_tag_unsplit(pieces: list[str], lead: str) -> None:
    session = ExitSession(ExitPolicy(threshold=0.0))
    feed_all(session, [chunk(p) for p in ([lead] if lead else []) + pieces])
    session.close_text()
    assert (session.reasoning, session.text) == ("7+5=12", "12")
    phases = [t.phase for t in session.tokens]
    assert phases[-1] is Phase.ANSWER and set(phases[:-1]) == {Phase.REASONING}
    assert session.monitor.watched == len(phases) - 1  # auto watches the reasoning, only it


def test_reasoning_exit_is_in_reasoning_phase_and_answer_is_ignored() -> None:
    session = ExitSession(ExitPolicy(threshold=0.5, min_tokens=3))
    feed_all(session, [chunk(reasoning=f" r{i}") for i in range(3)])
    assert session.should_stop and session.stop_in_reasoning


def test_text_free_tokens_take_the_phase_of_the_next_text() -> None:
    chunks = load_chunks("llamacpp_reasoning_content_top20.jsonl")
    session = ExitSession(ExitPolicy(threshold=0.0))
    feed_all(session, chunks)
    session.close_text()
    assert session.tokens[0].phase is Phase.REASONING  # it came in the role chunk
    assert session.monitor.reasoning_tokens == len(session.tokens)
    assert session.monitor.decision.reason != "not_watched"


def test_missing_logprobs_raise_with_partial_text() -> None:
    session = ExitSession(ExitPolicy(threshold=1.0))
    chunks = load_chunks("llamacpp_chat_nologprobs.jsonl")
    with pytest.raises(LogprobsUnavailableError, match="top_logprobs=k") as error:
        feed_all(session, chunks)
    first_text = next(
        c["choices"][0]["delta"]["content"] for c in chunks if c["choices"][0]["delta"].get("content")
    )
    assert error.value.partial_text == first_text  # raised at the first text chunk, which it keeps


def test_missing_logprobs_pass_through_warns_once_and_never_exits() -> None:
    session = ExitSession(ExitPolicy(threshold=5.0, min_tokens=0, on_missing="pass_through"))
    chunks = load_chunks("llamacpp_chat_nologprobs.jsonl")
    with pytest.warns(EntropyExitWarning, match="no logprobs") as caught:
        feed_all(session, chunks)
    assert len(caught) == 1
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert not session.should_stop and session.text == streamed != ""
    assert session.monitor.unknown_tokens == session.monitor.tokens_seen > 0


def test_logprobs_dropping_out_mid_stream_count_as_unknown() -> None:
    session = ExitSession(ExitPolicy(threshold=0.5, min_tokens=4, aggregation="window", window=2))
    session.feed(parse_chat_chunk(chunk("a")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            session.feed(ChunkParts(content="b"))
    assert session.monitor.unknown_tokens == 5 and not session.should_stop
    assert session.text == "abbbbb"


def test_tool_calls_are_never_cut() -> None:
    session = ExitSession(ExitPolicy(threshold=0.5, min_tokens=1))
    session.feed(parse_chat_chunk(chunk("x", tool=True)))
    assert session.monitor.decision.should_exit and not session.should_stop


def test_a_number_is_never_cut_in_the_middle() -> None:
    session = ExitSession(ExitPolicy(threshold=0.5, min_tokens=2))
    feed_all(session, [chunk("is"), chunk(" 4")])
    assert session.monitor.decision.should_exit and not session.should_stop  # "48" may follow
    feed_all(session, [chunk("8")])
    assert not session.should_stop
    feed_all(session, [chunk(".")])
    assert not session.should_stop  # "48.5" may follow
    feed_all(session, [chunk(" So")])
    assert session.should_stop and session.text == "is 48. So"
    assert session.decision.token_index == 1  # the report keeps where the policy decided


@pytest.mark.parametrize(
    "pieces",
    [
        ["3", ".", "14"],
        ["1", ",", "000"],
        ["3", "/", "4"],
        [" -", "2"],
        ["1", "e", "5"],
        ["2", "e", "-", "3"],
    ],
)
def test_no_kind_of_number_is_cut(pieces: list[str]) -> None:
    session = ExitSession(ExitPolicy(threshold=0.5, min_tokens=1))
    feed_all(session, [chunk("x =")])
    assert session.should_stop
    for piece in pieces:
        feed_all(session, [chunk(piece)])
        assert not session.should_stop, f"cut inside {''.join(pieces)!r} after {piece!r}"
    feed_all(session, [chunk(" done")])
    assert session.should_stop and session.text == "x =" + "".join(pieces) + " done"


def test_a_newline_ends_a_number() -> None:
    """A line break after "11." (recorded from vLLM: "7 plus 5 is 11.\n") ends the number:
    the guard reads the text's real end, not the point before a final newline (regex ``$``)."""
    session = ExitSession(ExitPolicy(threshold=0.5, min_tokens=1))
    feed_all(session, [chunk("is 11")])
    assert not session.should_stop
    feed_all(session, [chunk(".")])
    assert not session.should_stop
    feed_all(session, [chunk("\n")])
    assert session.should_stop


def test_the_number_guard_gives_up_after_its_bound() -> None:
    from entropy_exit_integrations.core.guards import MAX_NUMBER_DEFERRAL

    session = ExitSession(ExitPolicy(threshold=0.5, min_tokens=1))
    feed_all(session, [chunk("1")])
    for _ in range(MAX_NUMBER_DEFERRAL - 1):
        feed_all(session, [chunk("1")])
        assert not session.should_stop
    feed_all(session, [chunk("1")])
    assert session.should_stop


def test_a_run_of_textless_tokens_is_hidden_reasoning() -> None:
    """ChatOpenAI drops reasoning deltas: the handler sees their tokens without text."""
    session = ExitSession(ExitPolicy(threshold=0.5, min_tokens=3))
    textless = {**chunk(reasoning="r"), "choices": [{**chunk(reasoning="r")["choices"][0], "delta": {}}]}
    feed_all(session, [textless])
    assert session.monitor.tokens_seen == 0  # one textless chunk waits (a llama.cpp role chunk)
    feed_all(session, [textless, textless])
    assert session.monitor.reasoning_tokens == 3 and session.should_stop and session.stop_in_reasoning
    assert session.reasoning == "" and session.text == ""  # nothing shown, nothing invented


def test_textless_tool_call_tokens_are_the_answer() -> None:
    session = ExitSession(ExitPolicy(threshold=0.0))
    call = chunk(tool=True)
    call["choices"][0]["delta"]["content"] = None
    feed_all(session, [call, call, call])
    assert session.monitor.reasoning_tokens == 0 and session.monitor.tokens_seen == 3


def test_starts_in_reasoning_reads_like_think_open() -> None:
    """A template that opened ``<think>`` in the prompt: the output only closes it."""
    for session in (
        ExitSession(ExitPolicy(threshold=0.0), starts_in_reasoning=True),
        ExitSession(ExitPolicy(threshold=0.0), reasoning_format="think_open"),
    ):
        feed_all(session, [chunk("7+5"), chunk("=12</th"), chunk("ink>"), chunk("12")])
        session.close_text()
        assert (session.reasoning, session.text) == ("7+5=12", "12")
        assert [t.phase for t in session.tokens] == [Phase.REASONING] * 3 + [Phase.ANSWER]
        assert session.inline_think and session.detected_format == "think_open"


def test_token_store_reads_back_what_was_kept() -> None:
    from entropy_exit_integrations.core.tokens import TokenLogprob, TokenStore

    kept = [
        TokenLogprob("a", -0.1, ("a", "b"), (-0.1, -2.5)),
        TokenLogprob("b", None, (), (), Phase.REASONING),
        TokenLogprob("a", -0.7, ("b", "a", "c"), (-0.6, -0.7, -3.0)),
    ]
    store = TokenStore(kept[:1])
    store.extend(kept[1:])
    assert len(store) == 3 and store == kept and list(store) == kept and store[-1] == kept[2]
    assert store[1:] == kept[1:] and store[1].logprob is None
    store.relabel(Phase.REASONING)
    assert [t.phase for t in store] == [Phase.REASONING] * 3
    with pytest.raises(IndexError):
        store[3]
    assert store.unknown == 1
