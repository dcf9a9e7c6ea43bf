"""ChatEntropyExit over real recorded llama.cpp streams (ChatOpenAI + mock transport)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessageChunk
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.rate_limiters import BaseRateLimiter
from langchain_core.runnables import RunnableBinding
from langchain_core.tools import tool
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.schemas import Run
from pydantic import BaseModel

from entropy_exit_integrations import EntropyExitWarning, ExitPolicy, LogprobsUnavailableError, SavingsLedger
from entropy_exit_integrations.forcing import AnswerForcing
from entropy_exit_integrations.langchain import ChatEntropyExit

from .conftest import forced_chunks

TOP20 = "llamacpp_chat_top20.jsonl"
REASONING = "llamacpp_reasoning_content_top20.jsonl"
EAGER = ExitPolicy(threshold=3.0, min_tokens=3)
NEVER = ExitPolicy(threshold=0.0)


def test_exit_truncates_reports_and_closes(replay: Any) -> None:
    server = replay(TOP20)
    ledger = SavingsLedger()
    llm = ChatEntropyExit(model=server.chat(), policy=EAGER, ledger=ledger)
    message = llm.invoke("What is 17 + 25? Answer briefly.")
    body = server.requests[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["stream"] is True
    report = message.response_metadata["entropy_exit"]
    assert report["exited"] and report["max_tokens"] == 64
    assert report["tokens_saved_vs_budget"] == 64 - report["tokens_generated"]
    assert message.response_metadata["finish_reason"] == "entropy_exit"
    assert message.usage_metadata["output_tokens"] == report["tokens_generated"]
    assert message.usage_metadata["input_tokens"] > 0  # estimated: an aborted stream has no usage
    assert "17 + 25 = 32.".startswith(message.content) and message.content != "17 + 25 = 32."
    assert server.closed_early(0) and len(server.requests) == 1  # exit in the answer: no forcing
    assert len(ledger) == 1


def test_stream_chunks_and_single_usage(replay: Any) -> None:
    server = replay(TOP20)
    llm = ChatEntropyExit(model=server.chat(), policy=NEVER)
    chunks = list(llm.stream("hi"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert [c for c in chunks if c.usage_metadata] == [chunks[-1]]
    assert chunks[-1].chunk_position == "last"
    assert sum("entropy_exit" in c.response_metadata for c in chunks) == 1
    full = sum(chunks[1:], chunks[0])
    assert full.content == "17 + 25 = 32."
    assert full.usage_metadata["output_tokens"] == 12  # the provider's usage (it counts the end token), once
    assert full.response_metadata["finish_reason"] == "stop"
    assert full.response_metadata["entropy_exit"]["exited"] is False


def test_reasoning_content_kept_and_answer_forced(replay: Any) -> None:
    # First request: the recorded reasoning stream. Second (forcing): hand-written reply.
    server = replay(REASONING, lambda body: forced_chunks(body["messages"][-1]["content"]))
    llm = ChatEntropyExit(model=server.deepseek(max_tokens=128), policy=EAGER)
    message = llm.invoke("What is 7 + 5?")
    assert message.additional_kwargs["reasoning_content"].startswith("\nStep")
    report = message.response_metadata["entropy_exit"]
    assert report["exited"] and report["reasoning_tokens"] > 0 and report["forced_answer_tokens"] > 0
    forcing = server.requests[1]
    assert forcing["messages"][-1]["role"] == "assistant"
    assert forcing["messages"][-1]["content"].startswith("<think>")  # ChatOpenAI drops reasoning_content
    assert forcing["continue_final_message"] is True and forcing["add_generation_prompt"] is False
    budget = forcing.get("max_completion_tokens", forcing.get("max_tokens"))
    assert budget == AnswerForcing().max_tokens and forcing["stop"] == ["\n\n"]
    assert message.content == "12"  # the echo of the prefix is stripped


def test_force_answer_false(replay: Any) -> None:
    server = replay(REASONING)
    message = ChatEntropyExit(model=server.chat(), policy=EAGER, force_answer=False).invoke("q")
    assert len(server.requests) == 1 and message.content == ""
    assert message.response_metadata["entropy_exit"]["exited"]


async def test_async_paths(replay: Any) -> None:
    server = replay(TOP20)
    llm = ChatEntropyExit(model=server.chat(), policy=EAGER)
    message = await llm.ainvoke("q")
    assert message.response_metadata["entropy_exit"]["exited"] and server.closed_early(0)
    chunks = [c async for c in llm.astream("q")]
    assert chunks[-1].response_metadata["entropy_exit"]["exited"] and server.closed_early(1)


def test_no_logprobs_from_inner_model() -> None:
    llm = ChatEntropyExit(model=GenericFakeChatModel(messages=iter(["four"])), policy=EAGER)
    with pytest.raises(LogprobsUnavailableError, match="logprobs_kwargs"):
        llm.invoke("2+2?")


def test_reasoning_policy_without_reasoning_warns_once(replay: Any) -> None:
    server = replay(TOP20)
    policy = ExitPolicy(threshold=3.0, min_tokens=3, phase="reasoning")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = ChatEntropyExit(model=server.chat(), policy=policy).invoke("q")
    assert [w.category for w in caught if issubclass(w.category, EntropyExitWarning)] == [EntropyExitWarning]
    assert message.response_metadata["entropy_exit"]["exited"]  # fell back to the answer


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_bind_tools_passes_through(replay: Any) -> None:
    server = replay(TOP20)
    bound = ChatEntropyExit(model=server.chat(), policy=NEVER).bind_tools([add], tool_choice="auto")
    assert isinstance(bound, RunnableBinding) and isinstance(bound.bound, ChatEntropyExit)
    bound.invoke("q", stop=["\n\n"])
    body = server.requests[0]
    assert body["tools"][0]["function"]["name"] == "add" and body["tool_choice"] == "auto"
    assert body["stop"] == ["\n\n"] and body["logprobs"] is True


class Answer(BaseModel):
    value: int


def test_with_structured_output_uses_the_inner_method_and_the_wrapper(replay: Any) -> None:
    server = replay(TOP20)
    llm = ChatEntropyExit(model=server.chat(), policy=EAGER)
    structured = llm.with_structured_output(Answer, method="json_schema")
    first = structured.first  # type: ignore[attr-defined]
    assert isinstance(first, RunnableBinding) and first.bound is llm
    assert "response_format" in first.kwargs


def test_structured_output_is_never_cut(replay: Any) -> None:
    server = replay(TOP20)
    llm = ChatEntropyExit(model=server.chat(), policy=EAGER)
    message = llm.invoke("q", response_format={"type": "json_object"})
    assert message.content == "17 + 25 = 32." and not server.closed_early(0)
    assert message.response_metadata["entropy_exit"]["exited"] is False


def test_string_model_and_standard_params() -> None:
    llm = ChatEntropyExit(
        model="openai:smollm2",
        policy=EAGER,
        base_url="http://127.0.0.1:9/v1",
        api_key="none",
        temperature=0,
        max_tokens=10,
        stop=["x"],
    )
    params = llm._get_ls_params()
    assert params["ls_max_tokens"] == 10 and params["ls_model_name"] == "smollm2"
    assert llm._llm_type == "entropy-exit" and llm._identifying_params["inner_llm_type"] == "openai-chat"
    with pytest.raises(TypeError, match="inner model"):
        ChatEntropyExit(model=GenericFakeChatModel(messages=iter([])), policy=EAGER, temperature=0)


@pytest.mark.parametrize("use_async", [False, True])
async def test_llama_cpp_tools_refusal_is_retried_with_n_probs(replay: Any, use_async: bool) -> None:
    server = replay(TOP20, TOP20, refuse_tools_logprobs=True)
    bound = ChatEntropyExit(model=server.chat(), policy=NEVER).bind_tools([add])
    message = await bound.ainvoke("q") if use_async else bound.invoke("q")
    first, retry = server.requests
    assert first["logprobs"] is True and first["tools"]
    assert "logprobs" not in retry and "top_logprobs" not in retry and retry["tools"]
    assert retry["n_probs"] == 20  # llama.cpp's own field, sent in extra_body
    report = message.response_metadata["entropy_exit"]
    assert report["k"] == 20 and report["unknown_tokens"] == 0  # the tool step is monitored


def test_a_refusal_of_n_probs_too_raises_by_default(replay: Any) -> None:
    server = replay(TOP20, refuse_tools_logprobs=True, refuse_n_probs=True)
    bound = ChatEntropyExit(model=server.chat(), policy=EAGER).bind_tools([add])
    with pytest.raises(LogprobsUnavailableError, match="tools \\+ stream") as caught:
        bound.invoke("q")
    assert "on_missing='pass_through'" in str(caught.value) and len(server.requests) == 2


@pytest.mark.parametrize("use_async", [False, True])
async def test_logprobs_refused_with_tools_passes_through(replay: Any, use_async: bool) -> None:
    server = replay(
        TOP20, TOP20, "llamacpp_chat_nologprobs.jsonl", refuse_tools_logprobs=True, refuse_n_probs=True
    )
    policy = ExitPolicy(threshold=3.0, min_tokens=3, on_missing="pass_through")
    bound = ChatEntropyExit(model=server.chat(), policy=policy).bind_tools([add])
    with pytest.warns(EntropyExitWarning, match="refused logprobs"):
        message = await bound.ainvoke("q") if use_async else bound.invoke("q")
    assert [(r.get("logprobs"), r.get("n_probs")) for r in server.requests] == [
        (True, None),
        (None, 20),
        (None, None),
    ]
    assert server.requests[2]["tools"] and message.content == "17 + 25 = 32."
    assert message.response_metadata["entropy_exit"]["exited"] is False


class _Tracer(BaseTracer):
    def __init__(self) -> None:
        super().__init__()
        self.finished: list[Run] = []

    def _persist_run(self, run: Run) -> None:
        pass

    def _on_llm_end(self, run: Run) -> None:
        self.finished.append(run)


@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke", "astream"])
@pytest.mark.parametrize("policy", [EAGER, NEVER], ids=["exit", "no-exit"])
async def test_report_reaches_the_traced_run_outputs(replay: Any, mode: str, policy: ExitPolicy) -> None:
    """Through the tracer API alone (``on_llm_end`` outputs), streaming or not, sync or async."""
    server = replay(TOP20)
    tracer = _Tracer()
    llm = ChatEntropyExit(model=server.chat(), policy=policy)
    config: Any = {"callbacks": [tracer]}
    if mode == "invoke":
        message = llm.invoke("q", config=config)
    elif mode == "ainvoke":
        message = await llm.ainvoke("q", config=config)
    else:
        chunks = list(llm.stream("q", config=config)) if mode == "stream" else []
        if mode == "astream":
            chunks = [chunk async for chunk in llm.astream("q", config=config)]
        message = sum(chunks[1:], chunks[0])
    report = message.response_metadata["entropy_exit"]
    assert report["exited"] is (policy is EAGER)
    (run,) = [r for r in tracer.finished if r.parent_run_id is None]  # the inner run is its child
    generation = run.outputs["generations"][0][0]
    assert generation["message"]["kwargs"]["response_metadata"]["entropy_exit"] == report
    assert "entropy_exit" not in run.extra.get("metadata", {})  # no reaching into tracer internals


class _ToolCallStream(BaseChatModel):
    """Streams recorded llama.cpp logprobs while a tool call streams (the shape vLLM sends)."""

    @property
    def _llm_type(self) -> str:
        return "tool-call-stream"

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        from tests.unit_tests.recordings import load_chunks

        rows = [r for r in load_chunks(TOP20) if r.get("choices") and r["choices"][0].get("logprobs")]
        for i, row in enumerate(rows):
            args = row["choices"][0]["delta"].get("content") or ""
            call = tool_call_chunk(
                name="add" if i == 0 else None, args=args, id="c1" if i == 0 else None, index=0
            )
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", tool_call_chunks=[call]),
                generation_info={"logprobs": row["choices"][0]["logprobs"]},
            )


def test_tool_call_is_never_cut_and_the_report_says_so() -> None:
    message = ChatEntropyExit(model=_ToolCallStream(), policy=EAGER).invoke("q")
    report = message.response_metadata["entropy_exit"]
    assert report["tokens_generated"] == 11 and report["exited"] is False
    assert report["tokens_saved_vs_budget"] is None and "finish_reason" not in message.response_metadata
    (call,) = message.invalid_tool_calls  # the recorded text is not JSON: all of it arrived
    assert call["name"] == "add" and call["args"] == "17 + 25 = 32."


class _CountingLimiter(BaseRateLimiter):
    """A LangChain rate limiter that counts acquisitions."""

    def __init__(self) -> None:
        self.acquired = 0

    def acquire(self, *, blocking: bool = True) -> bool:
        self.acquired += 1
        return True

    async def aacquire(self, *, blocking: bool = True) -> bool:
        self.acquired += 1
        return True


class _Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts = 0
        self.tokens = 0

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1

    def on_llm_new_token(self, *args: Any, **kwargs: Any) -> None:
        self.tokens += 1


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream"])
async def test_the_inner_models_rate_limiter_and_callbacks_run(replay: Any, mode: str) -> None:
    """The inner model is driven through its public stream: its rate limiter is acquired and
    its own callbacks see the call, once per request (a forcing request is a second one)."""
    limiter = _CountingLimiter()
    events = _Events()
    server = replay(TOP20, lambda body: forced_chunks(body["messages"][-1]["content"]))
    inner = server.chat(rate_limiter=limiter, callbacks=[events])
    llm = ChatEntropyExit(model=inner, policy=EAGER, force_answer=True)
    if mode == "invoke":
        llm.invoke("q")
    elif mode == "ainvoke":
        await llm.ainvoke("q")
    else:
        list(llm.stream("q"))
    assert len(server.requests) == 2  # the main stream and the forcing request
    assert limiter.acquired == 2 and events.starts == 2 and events.tokens > 0
