"""Every reasoning format through ExitSession, whole and split across chunks at every boundary.

Streams are written by hand in each format's documented wire shape (DeepSeek-R1/Qwen3 ``<think>``,
template-opened ``</think>``, Magistral ``[THINK]``, GPT-OSS harmony as raw text): no server on
this machine emits most of them as raw text.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_exit_integrations import ExitPolicy, Phase
from entropy_exit_integrations.providers import (
    REASONING_FORMATS,
    ChunkParts,
    ReasoningSplitter,
    ThinkTagSplitter,
    check_reasoning_format,
    format_for_model,
    format_from_props,
    parse_chat_chunk,
    resolve_format,
)
from entropy_exit_integrations.session import ExitSession

R, A = Phase.REASONING, Phase.ANSWER


def chunk(text: str = "", *, reasoning: str = "") -> dict:
    """A chat chunk carrying one near-certain token (0.002 bits) whose text is the delta."""
    delta: dict = {"content": text or None}
    if reasoning:
        delta["reasoning_content"] = reasoning
    token = text or reasoning
    top = [{"token": token, "logprob": -0.001}, {"token": "\u00a7", "logprob": -9.0}]
    return {
        "choices": [{"index": 0, "delta": delta, "logprobs": {"content": [{**top[0], "top_logprobs": top}]}}]
    }


def run(fmt: str, pieces: list[str], *, policy: ExitPolicy | None = None, **kwargs) -> ExitSession:
    session = ExitSession(policy or ExitPolicy(threshold=0.0), reasoning_format=fmt, **kwargs)
    for piece in pieces:
        session.feed(parse_chat_chunk(chunk(piece)))
    session.close_text()
    return session


def splits(text: str) -> list[list[str]]:
    """The text whole, cut at every single point, and in pieces of every size from 1 to 12."""
    out = [[text]] + [[text[:i], text[i:]] for i in range(1, len(text))]
    out += [[text[i : i + size] for i in range(0, len(text), size)] for size in range(1, 13)]
    return out


# (format, stream text, reasoning, answer, end of the text that closes the reasoning)
CASES = [
    ("think", "<think>7+5=12</think>12", "7+5=12", "12"),
    ("think", "\n <think>7+5=12</think>12", "7+5=12", "12"),
    ("auto", "<think>7+5=12</think>12", "7+5=12", "12"),
    ("auto", "\n<think>7+5=12</think>The sum is 12.", "7+5=12", "The sum is 12."),
    ("think_open", "7+5=12</think>12", "7+5=12", "12"),
    ("think_open", "<think>7+5=12</think>12", "7+5=12", "12"),  # an old template: dropped
    ("mistral", "[THINK]7+5=12[/THINK]12", "7+5=12", "12"),
    ("auto", "[THINK]7+5=12[/THINK]12", "7+5=12", "12"),
]
CLOSES = {"think": "</think>", "auto": None, "think_open": "</think>", "mistral": "[/THINK]"}


@pytest.mark.parametrize(("fmt", "text", "reasoning", "answer"), CASES)
def test_tag_formats_whole_and_split_anywhere(fmt: str, text: str, reasoning: str, answer: str) -> None:
    close = CLOSES[fmt] or ("[/THINK]" if "[THINK]" in text else "</think>")
    end_of_reasoning = text.index(close) + len(close)
    for pieces in splits(text):
        session = run(fmt, pieces)
        assert (session.reasoning, session.text) == (reasoning, answer), pieces
        # A chunk is reasoning when it starts before the close tag ends (the tag tokens are
        # reasoning; a chunk that carries the close and answer text is the reasoning's end).
        starts = [sum(map(len, pieces[:i])) for i in range(len(pieces))]
        expected = [R if start < end_of_reasoning else A for start, piece in zip(starts, pieces) if piece]
        assert [t.phase for t in session.tokens] == expected, pieces
        assert session.monitor.reasoning_tokens == expected.count(R)
        assert session.inline_think and not session.relabelled


HARMONY = [
    "<|channel|>",
    "analysis",
    "<|message|>",
    "User asks 7+5.",
    " It is 12.",
    "<|end|>",
    "<|start|>",
    "assistant",
    "<|channel|>",
    "final",
    "<|message|>",
    "The sum is",
    " 12.",
    "<|return|>",
]


@pytest.mark.parametrize("fmt", ["harmony", "auto"])
def test_harmony_channels_as_raw_text(fmt: str) -> None:
    session = run(fmt, HARMONY)
    assert (session.reasoning, session.text) == ("User asks 7+5. It is 12.", "The sum is 12.")
    # The analysis header and its <|end|> are reasoning; the final header is the answer's.
    assert [t.phase for t in session.tokens] == [R] * 6 + [A] * 8
    assert session.detected_format == "harmony" and session.inline_think
    for pieces in splits("".join(HARMONY)):
        split = run(fmt, pieces)
        assert (split.reasoning, split.text) == ("User asks 7+5. It is 12.", "The sum is 12."), pieces
        assert len(split.tokens) == len([p for p in pieces if p])  # no token is lost


def test_harmony_tool_calls_commentary_and_text_that_is_no_marker() -> None:
    stream = (
        "<|channel|>analysis<|message|>Need weather.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>"
        '{"city": "Paris"}<|call|>'
    )
    session = run("harmony", [stream[i : i + 5] for i in range(0, len(stream), 5)])
    assert (session.reasoning, session.text) == ("Need weather.", '{"city": "Paris"}')
    plain = run("harmony", ["a <| b < c"])  # no markers: the answer, "<|" included
    assert (plain.reasoning, plain.text) == ("", "a <| b < c")
    opened = run(
        "harmony",
        ["still thinking<|end|><|start|>assistant<|channel|>final<|message|>4"],
        starts_in_reasoning=True,
    )
    assert (opened.reasoning, opened.text) == ("still thinking", "4")


@pytest.mark.parametrize("close", ["</think>", "</th|ink>", "<|/|think>", "</|think>"])
def test_auto_relabels_the_answer_before_a_bare_close(close: str) -> None:
    """A template-opened tag seen only by its close: the text before it was reasoning."""
    pieces = ["Let me", " add: 7+5", "=12.", *close.split("|"), "\n\n12"]
    session = run("auto", pieces)
    assert (session.reasoning, session.text) == ("Let me add: 7+5=12.", "\n\n12")
    assert session.relabelled and session.detected_format == "think_open"
    n_close = len(close.split("|"))
    assert [t.phase for t in session.tokens] == [R] * (3 + n_close) + [A]  # kept tokens re-labelled
    # ... but the monitor observed the first tokens as answer: it cannot re-run its aggregate.
    assert session.monitor.reasoning_tokens == n_close


def test_auto_with_no_tags_is_all_answer_and_mid_answer_tags_stay_text() -> None:
    session = run("auto", ["Use", " <b> and a < b", " or <think> as text"])
    assert (session.reasoning, session.text) == ("", "Use <b> and a < b or <think> as text")
    assert not session.relabelled and session.detected_format is None


def test_think_format_parses_tags_anywhere_and_auto_tags_only_at_the_start() -> None:
    text = "Sure.<think>hmm</think>Done."
    assert (run("think", [text]).reasoning, run("think", [text]).text) == ("hmm", "Sure.Done.")
    assert run("auto", [text]).text == text


@pytest.mark.parametrize("fmt", ["field", "none"])
def test_field_and_none_never_parse_the_content(fmt: str) -> None:
    session = ExitSession(ExitPolicy(threshold=0.0), reasoning_format=fmt)
    for c in [chunk(reasoning="hidden"), chunk("<think>x</think>"), chunk("[THINK]y")]:
        session.feed(parse_chat_chunk(c))
    session.close_text()
    if fmt == "field":
        assert (session.reasoning, session.text) == ("hidden", "<think>x</think>[THINK]y")
        assert [t.phase for t in session.tokens] == [R, A, A]
    else:  # "none": everything is answer, the field's text too
        assert (session.reasoning, session.text) == ("", "hidden<think>x</think>[THINK]y")
        assert [t.phase for t in session.tokens] == [A, A, A]
        textless = ExitSession(ExitPolicy(threshold=0.0), reasoning_format="none")
        for _ in range(3):
            textless.feed(ChunkParts(tokens=parse_chat_chunk(chunk("x")).tokens))
        assert textless.monitor.reasoning_tokens == 0


@pytest.mark.parametrize("fmt", ["auto", "think", "think_open", "mistral", "harmony", "field"])
def test_a_separate_reasoning_field_is_read_by_every_format_and_closes_a_template_tag(fmt: str) -> None:
    """A server with a reasoning parser: reasoning in the field, the answer in the content."""
    session = ExitSession(ExitPolicy(threshold=0.0), reasoning_format=fmt, starts_in_reasoning=True)
    for c in [chunk(reasoning="7+5"), chunk(reasoning="=12"), chunk("12")]:
        session.feed(parse_chat_chunk(c))
    session.close_text()
    assert (session.reasoning, session.text) == ("7+5=12", "12")
    assert [t.phase for t in session.tokens] == [R, R, A] and session.detected_format == "field"


STOP_STREAMS = {
    "auto": ["<think>", "a", "b", "c", "d", "</think>", "x"],
    "think": ["<think>", "a", "b", "c", "d", "</think>", "x"],
    "think_open": ["a", "b", "c", "d", "</think>", "x"],
    "mistral": ["[THINK]", "a", "b", "c", "d", "[/THINK]", "x"],
    "harmony": ["<|channel|>", "analysis", "<|message|>", "a", "b", "c", "d", "<|end|>"],
    "field": None,
}


@pytest.mark.parametrize("fmt", sorted(STOP_STREAMS))
def test_an_exit_in_the_reasoning_is_a_stop_in_reasoning_in_every_format(fmt: str) -> None:
    """The engine forces the answer when ``stop_in_reasoning``: every format must say so."""
    session = ExitSession(ExitPolicy(threshold=0.5, min_tokens=4), reasoning_format=fmt)
    stream = STOP_STREAMS[fmt]
    chunks = [chunk(reasoning=p) for p in "abcd"] if stream is None else [chunk(p) for p in stream]
    for c in chunks:
        session.feed(parse_chat_chunk(c))
        if session.should_stop:
            break
    assert session.should_stop and session.stop_in_reasoning
    assert session.text == "" and session.reasoning.startswith("a")


def test_auto_cannot_know_a_template_opened_reasoning_before_its_close() -> None:
    """Why ``think_open`` exists: under ``auto`` an exit before the bare close reads as an
    answer stop; named, the same stream stops in the reasoning."""
    policy = ExitPolicy(threshold=0.5, min_tokens=3)
    for fmt, in_reasoning in (("auto", False), ("think_open", True)):
        session = ExitSession(policy, reasoning_format=fmt)
        for p in ["a", "b", "c"]:
            session.feed(parse_chat_chunk(chunk(p)))
        assert session.should_stop and session.stop_in_reasoning is in_reasoning


def test_the_no_tag_fast_path_skips_the_splitter(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    feed = ReasoningSplitter.feed
    monkeypatch.setattr(ReasoningSplitter, "feed", lambda self, text: calls.append(text) or feed(self, text))
    session = run("auto", ["The", " answer", " is", " 12", " (a<b)", " ok"])
    assert session.text == "The answer is 12 (a<b) ok"
    assert calls == ["The", " (a<b)"]  # the start is decided once, then only text with a "<"
    calls.clear()
    run("think_open", ["x", "y", "</think>", "z", "w"])
    assert calls == ["x", "</think>"]


def test_reasoning_format_is_checked() -> None:
    assert set(REASONING_FORMATS) == {"auto", "think", "think_open", "mistral", "harmony", "field", "none"}
    assert check_reasoning_format("harmony") == "harmony"
    with pytest.raises(ValueError, match="think_open"):
        ExitSession(ExitPolicy(threshold=0.0), reasoning_format="deepseek")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        ThinkTagSplitter("sometimes")
    legacy = ThinkTagSplitter("off")
    assert legacy.feed("<think>x") + legacy.flush() == [(A, "<think>x")]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "think_open"),
        ("deepseek-r1:14b", "think_open"),
        ("DeepSeek-R1-0528", "think_open"),
        ("Qwen/QwQ-32B", "think_open"),
        ("Qwen/QwQ-32B-Preview", None),
        ("Qwen/Qwen3-30B-A3B-Thinking-2507", "think_open"),
        ("Qwen/Qwen3-4B-Instruct-2507", None),
        ("Qwen/Qwen3-8B", "think"),
        ("mistralai/Magistral-Small-2509", "mistral"),
        ("mistralai/Magistral-Small-2506", "think"),
        ("openai/gpt-oss-120b", "harmony"),
        ("gpt-oss:20b", "harmony"),
        ("meta-llama/Llama-3.3-70B-Instruct", None),
        ("", None),
        (None, None),
    ],
)
def test_format_for_model(name: str | None, fmt: str | None) -> None:
    assert format_for_model(name) == fmt


QWEN3_HYBRID = (
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}"
)
R1 = "{% if add_generation_prompt %}{{'<\uff5cAssistant\uff5c><think>\\n'}}{% endif %}"
GPT_OSS = (
    "{{- '<|start|>assistant<|channel|>final<|message|>' }}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)


def test_format_from_props() -> None:
    templates = Path(__file__).parents[3] / "entropy_exit_integrations/lab/local/templates"
    thinking = templates / "chatml_thinking.jinja"
    assert format_from_props({"chat_template": thinking.read_text()}) == "think_open"
    assert format_from_props({"chat_template": R1}) == "think_open"
    assert format_from_props({"chat_template": QWEN3_HYBRID}) == "think"  # closed at once when off
    assert format_from_props({"chat_template": GPT_OSS}) == "harmony"
    assert format_from_props({"chat_template": "[SYSTEM_PROMPT]...[THINK]"}) == "mistral"
    plain = "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    assert format_from_props({"chat_template": plain}) is None
    assert format_from_props({"chat_template": plain, "model_alias": "gpt-oss-20b"}) == "harmony"
    assert format_from_props({"model_path": "/models/QwQ-32B-Q4_K_M.gguf"}) == "think_open"
    assert format_from_props({}) is None
    # resolve_format: an explicit format wins; "auto" asks the server's props, then the name.
    assert resolve_format("think", model="gpt-oss-20b") == "think"
    assert resolve_format("auto", model="gpt-oss-20b") == "harmony"
    assert resolve_format("auto", model="gpt-oss-20b", props={"chat_template": R1}) == "think_open"
    assert resolve_format(model="llama-3") == "auto"


PIECES = [
    "<think>", "</think>", "[THINK]", "[/THINK]", "<|channel|>", "<|start|>", "<|message|>", "<|end|>",
    "<|return|>", "analysis", "final", "assistant", "<", "|", "/", "[", "think>", "<th", "a", " ", "\n",
]  # fmt: skip


@settings(max_examples=300)
@given(
    fmt=st.sampled_from(REASONING_FORMATS),
    opened=st.booleans(),
    parts=st.lists(st.sampled_from(PIECES), max_size=25),
    cuts=st.lists(st.integers(0, 200), max_size=12),
)
def test_any_split_reads_like_the_text_unsplit(
    fmt: str, opened: bool, parts: list[str], cuts: list[int]
) -> None:
    """Property: wherever chunk boundaries fall (inside tags and markers too), the reasoning and
    the answer are those of the whole text in one chunk."""
    text = "".join(parts)
    points = sorted({c for c in cuts if 0 < c < len(text)})
    pieces = [text[i:j] for i, j in zip([0, *points], [*points, len(text)])]
    whole = run(fmt, [text], starts_in_reasoning=opened)
    split = run(fmt, pieces, starts_in_reasoning=opened)
    assert (split.reasoning, split.text) == (whole.reasoning, whole.text)
    assert split.relabelled == whole.relabelled and split.detected_format == whole.detected_format
    assert len(split.tokens) == len(pieces)  # every token reaches the monitor
