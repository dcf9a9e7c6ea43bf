import os
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import openai
import pytest

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.engine import MonitoredCall
from entropy_exit_integrations.errors import EntropyExitWarning, LogprobsUnavailableError, is_logprobs_refusal
from entropy_exit_integrations.forcing import AnswerForcing, EchoStripper
from entropy_exit_integrations.providers import ChunkParts
from entropy_exit_integrations.tokencount import count_message_tokens, count_tokens


def _llama_index_tiktoken_cache() -> str:
    """An offline tiktoken cache that ships in a package (llama-index-core's), for these tests."""
    import llama_index.core

    path = Path(llama_index.core.__file__).parent / "_static" / "tiktoken_cache"
    assert path.is_dir()
    return str(path)


def _count_in_fresh_process(env_cache: str | None) -> str:
    code = (
        "import os; from entropy_exit_integrations.tokencount import count_tokens;"
        "print(count_tokens('hello world, how are you?', 'gpt-4o'), os.environ.get('TIKTOKEN_CACHE_DIR'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env.update(HOME="/nonexistent", HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    if env_cache is not None:
        env["TIKTOKEN_CACHE_DIR"] = env_cache
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_tiktoken_reads_the_users_cache_and_never_touches_the_environment() -> None:
    cache = _llama_index_tiktoken_cache()
    exact = _count_in_fresh_process(cache)
    assert "estimated=False" in exact and "o200k_base" in exact and exact.rstrip().endswith(cache)
    offline = _count_in_fresh_process(None)  # no cache, no network: an estimate, said so
    assert "estimated=True" in offline and offline.rstrip().endswith("None")


def test_unknown_models_fall_back_and_say_estimated(monkeypatch: pytest.MonkeyPatch) -> None:
    from entropy_exit_integrations import tokencount

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", _llama_index_tiktoken_cache())
    tokencount._encoding.cache_clear()
    try:
        exact = count_tokens("The quick brown fox", "gpt-4o")
        guess = count_tokens("The quick brown fox", "smollm2-135m-instruct")
        prompt = count_message_tokens([{"role": "user", "content": "The quick brown fox"}], "gpt-4o")
    finally:
        tokencount._encoding.cache_clear()
    assert not exact.estimated and exact.encoding == "o200k_base" and exact.tokens == 4
    assert guess.estimated and guess.encoding == "chars/4" and guess.tokens == len("The quick brown fox") // 4
    assert prompt.estimated and prompt.tokens > exact.tokens


def test_echo_stripper_drops_an_echoed_prefix_split_across_chunks() -> None:
    stripper = EchoStripper("abc Final answer:")
    assert stripper.feed("abc Fin") == ""
    assert stripper.feed("al answer: 12") == " 12"
    assert stripper.feed(" more") == " more"
    other = EchoStripper("abc")
    assert other.feed("ab") == "" and other.feed("x 12") == "abx 12"  # no echo: nothing lost


def test_forcing_request_shapes() -> None:
    forcing = AnswerForcing()
    messages = [{"role": "user", "content": "q"}]
    history, extra, prefix = forcing.chat_request(
        messages, reasoning="r", text="", inline_think=False, base_url="http://127.0.0.1:8080/v1"
    )
    assert history[-1] == {"role": "assistant", "content": "Final answer:", "reasoning_content": "r"}
    assert extra == {"continue_final_message": True, "add_generation_prompt": False}
    assert prefix == "Final answer:"
    history, _, prefix = forcing.chat_request(
        messages, reasoning="r", text="a", inline_think=True, base_url=None
    )
    assert prefix == "<think>\nr\n</think>\n\na\n\nFinal answer:"
    history, extra, prefix = forcing.chat_request(
        messages, reasoning="", text="partial", inline_think=False, base_url="https://api.openai.com/v1"
    )
    assert [m["role"] for m in history] == ["user", "assistant", "user"] and extra == {} and prefix == ""


def test_provider_refusal_raises_or_passes_through() -> None:
    request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")
    body = {"error": {"message": "This model does not support logprobs.", "type": "invalid_request_error"}}
    response = httpx.Response(400, json=body, request=request)
    error = openai.BadRequestError("This model does not support logprobs.", response=response, body=body)
    other = openai.BadRequestError(
        "bad temperature", response=httpx.Response(400, request=request), body=None
    )
    assert is_logprobs_refusal(error) and not is_logprobs_refusal(other)
    with pytest.raises(LogprobsUnavailableError, match="does not support logprobs") as raised:
        MonitoredCall(ExitPolicy(threshold=1.0)).refused(error)
    assert raised.value.provider_message == "This model does not support logprobs."
    assert MonitoredCall(ExitPolicy(threshold=1.0)).refused(other) is None  # not a refusal
    lenient = MonitoredCall(ExitPolicy(threshold=1.0, on_missing="pass_through"))
    with pytest.warns(EntropyExitWarning, match="runs unmonitored"):
        retry = lenient.refused(error)
    assert retry is not None and "logprobs" not in retry and "top_logprobs" not in retry
    assert "extra_body" not in retry
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the refusal was the one warning: no second one per text
        lenient.feed(ChunkParts(content="hello"))
    assert lenient.session.monitor.unknown_tokens == 1 and not lenient.should_stop


def test_llama_cpp_tools_refusal_is_retried_with_n_probs_once() -> None:
    request = httpx.Request("POST", "http://127.0.0.1:8080/v1/chat/completions")
    body = {"error": {"code": 400, "message": "logprobs is not supported with tools + stream"}}
    error = openai.BadRequestError(
        "logprobs is not supported with tools + stream",
        response=httpx.Response(400, request=request),
        body=body,
    )
    call = MonitoredCall(ExitPolicy(threshold=1.0, top_k=7))
    retry = call.refused(error)
    assert retry is not None and retry["extra_body"] == {"n_probs": 7} and "logprobs" not in retry
    with pytest.raises(LogprobsUnavailableError, match="tools"):  # the same refusal again: a refusal
        call.refused(error)
    old_build = openai.InternalServerError(  # some builds answer 500
        "logprobs is not supported with tools + stream",
        response=httpx.Response(500, request=request),
        body=None,
    )
    assert is_logprobs_refusal(old_build)


def test_a_refusal_in_an_error_event_of_a_200_stream_is_a_refusal() -> None:
    request = httpx.Request("POST", "http://127.0.0.1:8000/v1/chat/completions")
    event = openai.APIError("Requested top logprobs 20 > max logprobs 5", request, body=None)
    assert is_logprobs_refusal(event)
    assert not is_logprobs_refusal(openai.APIError("server overloaded", request, body=None))
