import copy
import math
import warnings

import pytest
from openai.types.chat import ChatCompletionChunk

from entropy_exit_integrations import EntropyMonitor, ExitPolicy, Phase
from entropy_exit_integrations.errors import EntropyExitWarning
from entropy_exit_integrations.providers import (
    ChunkParts,
    parse_chat_chunk,
    parse_completion_chunk,
    parse_llama_index_response,
    tokens_from_langchain_chunk,
)
from tests.unit_tests.recordings import load_chunks

TOP20 = load_chunks("llamacpp_chat_top20.jsonl")


def content_chunks(chunks):
    return [c for c in chunks if c["choices"] and c["choices"][0].get("logprobs")]


def test_recorded_llamacpp_chat_stream_gives_one_token_per_content_chunk() -> None:
    role, *_ = TOP20
    assert parse_chat_chunk(role).tokens == ()
    tokens = [t for c in TOP20 for t in parse_chat_chunk(c).tokens]
    text = "".join(parse_chat_chunk(c).content for c in TOP20)
    assert tokens and "".join(t.token for t in tokens) == text
    assert all(t.k >= 20 for t in tokens)  # the sampled token is in its own top-20 at temperature 0
    assert all(t.phase is Phase.ANSWER for t in tokens)


def test_usage_and_finish_chunks_carry_no_tokens() -> None:
    usage = parse_chat_chunk(TOP20[-1])
    assert usage.tokens == () and usage.usage["completion_tokens"] > 0
    finish = parse_chat_chunk(TOP20[-2])
    assert finish.tokens == () and finish.finish_reason in ("stop", "length")


def test_sdk_objects_parse_like_dicts() -> None:
    for chunk in TOP20:
        sdk = ChatCompletionChunk.model_validate(chunk)
        assert parse_chat_chunk(sdk).tokens == parse_chat_chunk(chunk).tokens
        assert parse_chat_chunk(sdk).content == parse_chat_chunk(chunk).content


def test_recorded_reasoning_content_stream_is_tagged_reasoning() -> None:
    chunks = load_chunks("llamacpp_reasoning_content_top20.jsonl")
    parts = [parse_chat_chunk(c) for c in chunks]
    reasoning_tokens = [t for p in parts if p.reasoning for t in p.tokens]
    assert reasoning_tokens and all(t.phase is Phase.REASONING for t in reasoning_tokens)
    assert "".join(p.reasoning for p in parts).strip()
    # llama.cpp sends the first token's logprobs in the role chunk, which has no text.
    assert parts[0].tokens and not parts[0].generated_text


def test_recorded_completions_stream_uses_the_chat_shape_on_llamacpp() -> None:
    chunks = load_chunks("llamacpp_completions_logprobs5.jsonl")
    parts = [parse_completion_chunk(c) for c in chunks]
    tokens = [t for p in parts for t in p.tokens]
    assert tokens and all(t.k >= 5 for t in tokens)
    assert "".join(t.token for t in tokens) == "".join(p.content for p in parts)


def test_no_logprobs_stream_is_flagged() -> None:
    parts = [parse_chat_chunk(c) for c in load_chunks("llamacpp_chat_nologprobs.jsonl")]
    assert any(p.generated_text for p in parts)
    assert not any(p.has_logprobs or p.tokens for p in parts)


# The legacy shape as OpenAI documents it for /v1/completions (Together and llama-cpp-python send
# it too); written by hand because no server on this machine emits it.
LEGACY = {
    "object": "text_completion",
    "choices": [
        {
            "index": 0,
            "text": " Paris.",
            "finish_reason": None,
            "logprobs": {
                "tokens": [" Paris", "."],
                "token_logprobs": [-0.01, -0.5],
                "top_logprobs": [{" Paris": -0.01, " Lyon": -5.0}, {".": -0.5, ",": -1.2}],
                "text_offset": [0, 6],
            },
        }
    ],
}


def test_legacy_completion_logprobs() -> None:
    parts = parse_completion_chunk(LEGACY)
    assert [t.token for t in parts.tokens] == [" Paris", "."]
    assert parts.tokens[1].top_tokens == (".", ",") and parts.tokens[1].top_logprobs == (-0.5, -1.2)


def test_legacy_length_mismatch_is_a_format_error() -> None:
    bad = copy.deepcopy(LEGACY)
    bad["choices"][0]["logprobs"]["token_logprobs"] = [-0.01]
    assert parse_completion_chunk(bad).tokens == ()  # lists that do not line up: no tokens


def mutated(path: list, value):
    chunk = copy.deepcopy(content_chunks(TOP20)[0])
    target = chunk
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return chunk


@pytest.mark.parametrize(
    ("path", "value", "unknown"),
    [
        (["choices", 0, "logprobs", "content", 0, "top_logprobs", 3, "logprob"], math.nan, 1),
        (["choices", 0, "logprobs", "content", 0, "top_logprobs", 2, "logprob"], "x", 1),
        (["choices", 0, "logprobs", "content", 0, "top_logprobs", 2, "logprob"], 0.5, 1),
        (["choices", 0, "logprobs", "content", 0, "token"], None, 0),  # the candidates are fine
        (["choices", 0, "logprobs", "content", 0, "logprob"], math.nan, 1),  # even in its own top list
        (["choices", 0, "logprobs", "content", 0, "logprob"], "x", 1),
        (["choices", 0, "logprobs", "content", 0, "top_logprobs"], 5, 1),
    ],
)
def test_malformed_entries_are_unknown_tokens_never_errors(path, value, unknown) -> None:
    parts = parse_chat_chunk(mutated(path, value))  # never raises
    monitor = EntropyMonitor(ExitPolicy(threshold=5.0, min_tokens=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for token in parts.tokens:
            monitor.observe(token)
    assert len(parts.tokens) == 1 and monitor.unknown_tokens == unknown
    assert monitor.decision.should_exit is (unknown == 0)  # an unknown token never exits
    warned = [w for w in caught if issubclass(w.category, EntropyExitWarning)]
    assert len(warned) == monitor.malformed_tokens


def test_content_that_is_not_a_list_gives_no_tokens() -> None:
    parts = parse_chat_chunk(mutated(["choices", 0, "logprobs", "content"], {"a": 1}))
    assert parts.tokens == () and parts.has_logprobs


def test_sentinel_and_empty_top_lists_are_accepted() -> None:
    chunk = mutated(["choices", 0, "logprobs", "content", 0, "top_logprobs"], [])
    (token,) = parse_chat_chunk(chunk).tokens
    assert token.top_logprobs == ()  # unknown, not certain
    chunk = mutated(
        ["choices", 0, "logprobs", "content", 0, "top_logprobs"],
        [{"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -9999.0}],
    )
    (token,) = parse_chat_chunk(chunk).tokens
    assert -9999.0 in token.top_logprobs


def test_framework_shapes() -> None:
    chunk = content_chunks(TOP20)[0]
    expected = parse_chat_chunk(chunk).tokens
    logprobs = chunk["choices"][0]["logprobs"]
    assert tokens_from_langchain_chunk({"generation_info": {"logprobs": logprobs}}) == expected
    message = {"response_metadata": {"logprobs": logprobs}}
    assert tokens_from_langchain_chunk({"generation_info": None, "message": message}) == expected
    assert tokens_from_langchain_chunk({"generation_info": {}}) is None

    class Response:
        raw = ChatCompletionChunk.model_validate(chunk)

    assert parse_llama_index_response(Response()).tokens == expected


def test_a_nan_sampled_logprob_is_unknown_in_every_shape_with_one_warning_per_stream() -> None:
    """Chat, legacy completions and LangChain's chunk: the same unknown token, one warning."""
    from entropy_exit_integrations.session import ExitSession

    chat = mutated(["choices", 0, "logprobs", "content", 0, "logprob"], math.nan)
    legacy = copy.deepcopy(LEGACY)
    legacy["choices"][0]["logprobs"]["token_logprobs"] = [math.nan, None]  # "." stays known
    langchain = {"generation_info": {"logprobs": chat["choices"][0]["logprobs"]}}
    shapes = {
        "chat": lambda: parse_chat_chunk(chat),
        "legacy": lambda: parse_completion_chunk(legacy),
        "langchain": lambda: ChunkParts(content="x", tokens=tokens_from_langchain_chunk(langchain)),
    }
    for name, parts in shapes.items():
        session = ExitSession(ExitPolicy(threshold=5.0, min_tokens=0))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                session.feed(parts())
        warned = [w for w in caught if issubclass(w.category, EntropyExitWarning)]
        assert len(warned) == 1 and "nan" in str(warned[0].message).lower(), name
        assert session.monitor.unknown_tokens == 3, name


def sdk_chunk(chunk: dict) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(
        {"id": "x", "created": 0, "model": "m", "object": "chat.completion.chunk", **chunk}
    )


def two_choice_stream() -> list[dict]:
    """An ``n=2`` chat stream as vLLM and OpenAI send it: one choice per chunk, interleaved,
    then a chunk carrying both choices' finish, then usage."""

    def one(index: int, text: str, logprob: float) -> dict:
        top = [{"token": text, "logprob": logprob}, {"token": "~", "logprob": -12.0}]
        entry = {"token": text, "logprob": logprob, "top_logprobs": top}
        delta = {"content": text}
        return {"index": index, "delta": delta, "logprobs": {"content": [entry]}, "finish_reason": None}

    chunks = []
    for a, b in [("4", "Five"), (" is", " is"), (" right", " wrong")]:
        chunks.append({"choices": [one(0, a, -0.01)]})
        chunks.append({"choices": [one(1, b, -2.0)]})
    chunks.append({"choices": [one(1, ".", -1.0), one(0, "!", -0.02)]})
    chunks.append(
        {
            "choices": [
                {"index": 1, "delta": {}, "logprobs": None, "finish_reason": "length"},
                {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"},
            ]
        }
    )
    chunks.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}})
    return chunks


def test_interleaved_choices_never_mix_only_choice_0_is_read() -> None:
    from entropy_exit_integrations.session import ExitSession

    chunks = two_choice_stream()
    for shape in (
        chunks,
        [sdk_chunk(c) for c in chunks],
    ):
        session = ExitSession(ExitPolicy(threshold=0.0))
        for c in shape:
            session.feed(parse_chat_chunk(c))
        session.close_text()
        assert session.text == "4 is right!"
        assert [t.token for t in session.tokens] == ["4", " is", " right", "!"]
        assert session.finish_reason == "stop" and session.usage["completion_tokens"] == 9
    other = [parse_chat_chunk(c, choice_index=1) for c in chunks]
    assert "".join(p.content for p in other) == "Five is wrong."
    assert [p.finish_reason for p in other if p.finish_reason] == ["length"]


def test_a_completion_chunk_of_another_choice_contributes_nothing() -> None:
    other = copy.deepcopy(LEGACY)
    other["choices"][0]["index"] = 1
    assert parse_completion_chunk(other).tokens == () and parse_completion_chunk(other).content == ""
    assert parse_completion_chunk(other, choice_index=1).content == " Paris."


@pytest.mark.parametrize("name", ["reasoning_content", "reasoning", "thinking"])
def test_every_reasoning_field_name_is_read(name: str) -> None:
    chunk = copy.deepcopy(content_chunks(TOP20)[0])
    delta = chunk["choices"][0]["delta"]
    delta[name], delta["content"] = "hmm", None
    parts = parse_chat_chunk(chunk)
    assert parts.reasoning == "hmm" and parts.content == ""
    assert all(t.phase is Phase.REASONING for t in parts.tokens)
    assert parse_chat_chunk(sdk_chunk(chunk)).reasoning == "hmm"  # an SDK model's extra field
