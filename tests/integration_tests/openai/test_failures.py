"""A server that dies mid-stream: the partial result travels on the exception."""

from __future__ import annotations

import httpx
import openai
import pytest

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.errors import StreamInterrupted
from entropy_exit_integrations.lab.local import LocalServer
from entropy_exit_integrations.openai import stream_chat


def test_server_death_mid_stream_keeps_every_token() -> None:
    server = LocalServer(parallel=1)
    server.start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-no-key", max_retries=0)
        seen: list[str] = []

        def kill_after_ten(token, decision) -> None:
            seen.append(token.token)
            if len(seen) == 10:
                server.process.kill()  # a crash, not a clean stop

        with pytest.raises(StreamInterrupted) as error:
            stream_chat(
                client,
                policy=ExitPolicy(threshold=0.0),
                on_token=kill_after_ten,
                model=server.model,
                max_tokens=400,
                temperature=0,
                messages=[{"role": "user", "content": "Write a long story about the sea."}],
            )
    finally:
        server.stop()
    partial = error.value.partial
    assert partial.finish_reason == "interrupted"
    assert partial.report.exit_reason == "interrupted"
    assert len(partial.tokens) >= 10 and "".join(seen[:10]) in partial.text
    assert partial.report.tokens_generated == len(partial.tokens)
    # A killed server ends the chunked body early (or resets the connection): httpx says which.
    assert isinstance(error.value.__cause__, (httpx.RemoteProtocolError, httpx.ReadError))
