"""The embedded llama.cpp server, exercised for real through the openai SDK (no mocks)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import openai
import pytest

from entropy_exit_integrations.errors import ServerError
from entropy_exit_integrations.lab.local import LocalServer

LONG_PROMPT = "Write a very long, detailed story about a lighthouse keeper and a storm. Use many paragraphs."


def _client(server: LocalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-no-key", max_retries=0)


def _tokens(server: LocalServer, prompt: str, **kwargs: object) -> list[str]:
    """Stream one chat completion at temperature 0 and return its token texts (from logprobs)."""
    stream = _client(server).chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        temperature=0,
        seed=1234,
        logprobs=True,
        top_logprobs=1,
        **kwargs,  # type: ignore[arg-type]
    )
    with stream:
        return [
            t.token
            for c in stream
            if c.choices and c.choices[0].logprobs
            for t in c.choices[0].logprobs.content
        ]


def test_model_id_and_urls(llama_server: LocalServer) -> None:
    assert llama_server.model == "smollm2-135m-instruct"
    assert llama_server.base_url == llama_server.root_url + "/v1"
    assert [m.id for m in _client(llama_server).models.list()] == [llama_server.model]


def test_stream_returns_20_top_logprobs_per_token(llama_server: LocalServer) -> None:
    stream = _client(llama_server).chat.completions.create(
        model=llama_server.model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        stream=True,
        max_tokens=16,
        temperature=0,
        logprobs=True,
        top_logprobs=20,
    )
    with stream:
        chunks = list(stream)
    content = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content
    ]
    assert len(content) >= 5
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].logprobs:
            for item in chunk.choices[0].logprobs.content:
                assert len(item.top_logprobs) == 20
                assert all(alt.logprob <= 0 for alt in item.top_logprobs)
                assert item.token in [alt.token for alt in item.top_logprobs]  # temperature 0: greedy


def test_closing_stream_stops_generation(llama_server: LocalServer) -> None:
    llama_server.wait_until_idle(timeout=10)
    before = llama_server.metrics()["llamacpp:tokens_predicted_total"]
    stream = _client(llama_server).chat.completions.create(
        model=llama_server.model,
        messages=[{"role": "user", "content": LONG_PROMPT}],
        stream=True,
        max_tokens=400,
        temperature=0,
        logprobs=True,
        top_logprobs=20,
        extra_body={"ignore_eos": True},
    )
    read = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].logprobs:
            read += len(chunk.choices[0].logprobs.content)
        if read >= 20:
            break
    assert llama_server.metrics()["llamacpp:requests_processing"] >= 1  # still generating
    stream.close()
    idle_after = llama_server.wait_until_idle(timeout=5)
    predicted = llama_server.metrics()["llamacpp:tokens_predicted_total"] - before
    print(
        f"\nclosed after {read} tokens: idle after {idle_after:.3f} s, tokens_predicted={predicted:g} of 400"
    )
    assert idle_after < 1.0
    assert read <= predicted < 100  # far less than max_tokens=400
    assert "cancel task" in llama_server.log_tail(400)


def test_two_parallel_streams_are_separate_and_deterministic(llama_server: LocalServer) -> None:
    prompts = ["Name three fruits and describe each.", "Count from one to twenty in words."]
    alone = [_tokens(llama_server, p, max_tokens=48) for p in prompts]
    results: dict[int, list[str]] = {}
    spans: dict[int, tuple[float, float]] = {}
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        barrier.wait()
        start = time.perf_counter()
        results[i] = _tokens(llama_server, prompts[i], max_tokens=48)
        spans[i] = (start, time.perf_counter())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {0: alone[0], 1: alone[1]}
    assert alone[0] != alone[1] and len(alone[0]) == len(alone[1]) == 48
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())  # they overlapped


async def test_async_context_manager_and_external_mode(llama_server: LocalServer) -> None:
    external = LocalServer(base_url=llama_server.base_url)
    async with external as same:
        assert same.model == llama_server.model and same.process is None
        assert same.metrics()["llamacpp:requests_processing"] in (0, 1, 2, 3, 4)  # 4 slots
    async with LocalServer(parallel=1) as server:
        process = server.process
        assert process is not None and server.is_running
        reply = await openai.AsyncOpenAI(
            base_url=server.base_url, api_key="sk-no-key"
        ).chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert 0 < reply.usage.completion_tokens <= 4  # it answered, within max_tokens
    assert process.poll() is not None and not server.is_running


def test_stops_even_when_the_body_raises() -> None:
    server = LocalServer(parallel=1)
    with pytest.raises(RuntimeError, match="boom"), server:
        process = server.process
        raise RuntimeError("boom")
    assert process is not None and process.poll() is not None
    with pytest.raises(ServerError):  # nothing listens any more
        server.metrics(timeout=1)


def test_port_in_use_is_a_clear_error(llama_server: LocalServer) -> None:
    with pytest.raises(ServerError, match=f"port {llama_server.port} .* already in use"):
        LocalServer(port=llama_server.port).start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(ServerError, match="already in use"):
            LocalServer(port=sock.getsockname()[1]).start()


def test_crash_on_start_invalid_argument_has_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = LocalServer(parallel=1, extra_args=["--definitely-not-a-flag"], log_path=log)
    with pytest.raises(ServerError, match="exited with code") as info:
        server.start()
    assert "--definitely-not-a-flag" in str(info.value).split("last log lines:")[1]
    assert server.process is not None and server.process.poll() is not None
    assert str(log) in str(info.value) and "--definitely-not-a-flag" in log.read_text()  # log kept


def test_crash_on_start_non_gguf_model_has_log_tail(tmp_path: Path) -> None:
    fake = tmp_path / "not-a-model.gguf"
    fake.write_bytes(b"this is not a gguf file\n" * 100)
    with pytest.raises(ServerError, match="exited with code") as info:
        LocalServer(parallel=1, model_path=fake, log_path=tmp_path / "server.log").start()
    tail = str(info.value).split("last log lines:")[1]
    assert "failed to load model" in tail or "invalid magic" in tail
