"""EntropyExitLLM and EntropyExitEventHandler over a scripted LlamaIndex LLM (no server)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    LogProb,
)
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback

from entropy_exit_integrations import (
    ExitPolicy,
    LogprobsUnavailableError,
    SavingsLedger,
    SavingsReport,
    StreamInterrupted,
)
from entropy_exit_integrations.core.tokens import TokenStore
from entropy_exit_integrations.llama_index import (
    REPORT_KEY,
    EntropyExitEventHandler,
    EntropyExitLLM,
    EntropyExitReportEvent,
    ResponseCapture,
    http_clients,
)
from entropy_exit_integrations.llama_index._responses import llama_logprobs, parts_of

SURE = [LogProb(token="a", logprob=math.log(0.99)), LogProb(token="b", logprob=math.log(0.01))]
UNSURE = [LogProb(token=t, logprob=math.log(0.25)) for t in "abcd"]


class ScriptedLLM(CustomLLM):
    """Streams ``n`` one-word chunks with LlamaIndex ``.logprobs`` (or none) and no ``raw``."""

    n: int = 40
    sure: bool = True
    with_logprobs: bool = True
    pulled: int = 0

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        *_, last = self.stream_complete(prompt, formatted=formatted, **kwargs)
        return last

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        def gen() -> CompletionResponseGen:
            text = ""
            for _ in range(self.n):
                self.pulled += 1
                text += " w"
                logprobs = [SURE if self.sure else UNSURE] if self.with_logprobs else None
                yield CompletionResponse(text=text, delta=" w", logprobs=logprobs)

        return gen()

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        # CustomLLM's own stream_chat drops .logprobs when it converts completions to chat
        def gen() -> ChatResponseGen:
            for response in self.stream_complete("", formatted=True):
                yield ChatResponse(
                    message=ChatMessage(role="assistant", content=response.text),
                    delta=response.delta,
                    logprobs=response.logprobs,
                )

        return gen()


def test_parts_of_reads_raw_chunks_then_llama_index_fields() -> None:
    raw = {
        "object": "chat.completion.chunk",
        "choices": [
            {
                "index": 0,
                "delta": {"reasoning_content": "hmm"},
                "logprobs": {
                    "content": [
                        {
                            "token": "hmm",
                            "logprob": -0.1,
                            "top_logprobs": [
                                {"token": "hmm", "logprob": -0.1},
                                {"token": "uh", "logprob": -2.4},
                            ],
                        }
                    ]
                },
            }
        ],
    }
    parts = parts_of(ChatResponse(message=ChatMessage(content=""), raw=raw))
    assert parts.reasoning == "hmm" and parts.tokens[0].phase.value == "reasoning"
    fallback = parts_of(
        ChatResponse(
            message=ChatMessage(content=""),
            delta="",
            logprobs=[SURE],
            additional_kwargs={"thinking_delta": "think"},
        )
    )
    assert fallback.reasoning == "think" and fallback.tokens[0].token == "a"
    assert fallback.tokens[0].phase.value == "reasoning"


def test_logprobs_round_trip_in_llama_index_type() -> None:
    parts = parts_of(CompletionResponse(text="x", delta="x", logprobs=[UNSURE]))
    back = llama_logprobs(TokenStore(parts.tokens))
    assert len(back) == 1 and [p.token for p in back[0]] == list("abcd")
    assert all(isinstance(p, LogProb) for p in back[0])
    response = CompletionResponse(text="x")
    response.logprobs = list(back)  # what a final response carries: a list, dumped with no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert response.model_dump()["logprobs"] == [[p.model_dump() for p in back[0]]]
    assert back == [back[0]] and list(back[-1:]) == [back[0]]


def test_exits_early_and_stops_pulling() -> None:
    inner = ScriptedLLM()
    ledger = SavingsLedger()
    llm = EntropyExitLLM(llm=inner, policy=ExitPolicy(threshold=0.5, min_tokens=5), ledger=ledger)
    response = llm.complete("go")
    report = SavingsReport.from_dict(response.additional_kwargs[REPORT_KEY])
    assert report.exited and report.tokens_generated == 5
    assert inner.pulled == 5
    assert response.text == " w" * 5
    assert len(response.logprobs) == 5
    lean = EntropyExitLLM(
        llm=ScriptedLLM(), policy=ExitPolicy(threshold=0.5, min_tokens=5), keep_tokens=False
    )
    assert lean.complete("go").logprobs is None  # keep_tokens=False: memory stays flat
    assert llm.last_report == ledger.reports[-1]


def test_threshold_zero_passes_everything_through() -> None:
    llm = EntropyExitLLM(llm=ScriptedLLM(n=12), policy=ExitPolicy(threshold=0))
    chunks = list(llm.stream_chat([ChatMessage(role="user", content="go")]))
    assert chunks[-1].message.content == " w" * 12
    assert chunks[-1].delta == ""
    assert not chunks[-1].additional_kwargs[REPORT_KEY]["exited"]


def test_uncertain_stream_never_exits() -> None:
    llm = EntropyExitLLM(llm=ScriptedLLM(n=20, sure=False), policy=ExitPolicy(threshold=1.0, min_tokens=2))
    assert not llm.complete("go").additional_kwargs[REPORT_KEY]["exited"]


def test_no_logprobs_raises_a_clear_error() -> None:
    llm = EntropyExitLLM(llm=ScriptedLLM(with_logprobs=False), policy=ExitPolicy(threshold=1.0))
    with pytest.raises(LogprobsUnavailableError, match="logprobs"):
        llm.complete("go")


async def test_async_styles_exit() -> None:
    llm = EntropyExitLLM(llm=ScriptedLLM(), policy=ExitPolicy(threshold=0.5, min_tokens=4))
    response = await llm.achat([ChatMessage(role="user", content="go")])
    assert response.additional_kwargs[REPORT_KEY]["tokens_generated"] == 4
    stream = await llm.astream_complete("go")
    last = None
    async for last in stream:  # noqa: B007
        pass
    assert last is not None and last.additional_kwargs[REPORT_KEY]["exited"]


def test_tool_methods_need_a_function_calling_inner_llm() -> None:
    llm = EntropyExitLLM(llm=ScriptedLLM(), policy=ExitPolicy(threshold=1.0))
    with pytest.raises(TypeError, match="FunctionCallingLLM"):
        llm.get_tool_calls_from_response(ChatResponse(message=ChatMessage(content="")))
    with pytest.raises(TypeError, match="ExitPolicy"):
        EntropyExitLLM(llm=ScriptedLLM(), policy=1.0)


def test_capture_closes_only_its_own_responses() -> None:
    hooked, _ = http_clients()

    class Endless(httpx.SyncByteStream):
        def __iter__(self):  # an unfinished SSE body
            yield b"data: x\n\n"

    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Endless()))
    client = httpx.Client(transport=transport, event_hooks=hooked.event_hooks)
    outside = client.send(client.build_request("GET", "http://t/"), stream=True)
    capture = ResponseCapture()
    with capture.active():
        inside = client.send(client.build_request("GET", "http://t/"), stream=True)
    assert capture.responses == [inside]
    capture.close()
    assert inside.is_closed and not outside.is_closed
    outside.close()


def test_event_handler_records_plain_and_wrapped_calls_once() -> None:
    dispatcher = get_dispatcher()
    handler = EntropyExitEventHandler(policy=ExitPolicy(threshold=0.5, min_tokens=5))
    dispatcher.add_event_handler(handler)
    try:
        ScriptedLLM(n=10).stream_complete("plain")
        list(ScriptedLLM(n=10).stream_complete("plain"))
        EntropyExitLLM(llm=ScriptedLLM(), policy=ExitPolicy(threshold=0.5, min_tokens=5)).complete("wrapped")
    finally:
        dispatcher.event_handlers.remove(handler)
    sources = [r.source for r in handler.records]
    assert sources == ["monitor", "wrapper"]
    monitor, wrapper = handler.records
    assert monitor.would_exit_at == 4 and monitor.tokens_after_exit == 5
    assert not monitor.report.exited and monitor.report.tokens_generated == 10
    assert wrapper.report.exited and wrapper.report.tokens_generated == 5
    assert handler.summary()["would_save_tokens"] == 5


class _Collect(BaseEventHandler):
    events: list[Any] = []
    llm: Any = None
    seen: list[Any] = []  # llm.last_report as a handler of the report event reads it


    @classmethod
    def class_name(cls) -> str:
        return "Collect"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)
        if self.llm is not None and isinstance(event, EntropyExitReportEvent):
            self.seen.append(self.llm.last_report)

    def of(self, name: str) -> list[Any]:
        return [e for e in self.events if type(e).__name__ == name]


class _BreakingLLM(ScriptedLLM):
    """Streams like ScriptedLLM, then the connection breaks after ``n`` chunks."""

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        inner = ScriptedLLM.stream_complete(self, prompt, formatted=formatted, **kwargs)

        def gen() -> CompletionResponseGen:
            yield from inner
            raise httpx.ReadError("connection reset")

        return gen()


@pytest.mark.parametrize("style", ["complete", "stream_chat", "acomplete", "astream_chat"])
async def test_each_call_dispatches_its_report_on_its_span(style: str) -> None:
    llm = EntropyExitLLM(llm=ScriptedLLM(), policy=ExitPolicy(threshold=0.5, min_tokens=5))
    collect = _Collect(events=[], llm=llm, seen=[])
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(collect)
    try:
        if style == "complete":
            last = llm.complete("q")
        elif style == "acomplete":
            last = await llm.acomplete("q")
        elif style == "stream_chat":
            *_, last = llm.stream_chat([ChatMessage(role="user", content="q")])
        else:
            last = [r async for r in await llm.astream_chat([ChatMessage(role="user", content="q")])][-1]
    finally:
        dispatcher.event_handlers.remove(collect)
    (event,) = collect.of("EntropyExitReportEvent")
    assert isinstance(event, EntropyExitReportEvent)
    assert event.report == last.additional_kwargs[REPORT_KEY] == llm.last_report.to_dict()
    assert collect.seen == [llm.last_report]  # set before the event is sent
    assert event.report["exited"] and event.report["tokens_generated"] == 5
    (end,) = collect.of("LLMCompletionEndEvent" if "complete" in style else "LLMChatEndEvent")
    assert event.span_id == end.span_id is not None


def test_a_broken_stream_dispatches_its_partial_report() -> None:
    collect = _Collect(events=[])
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(collect)
    llm = EntropyExitLLM(llm=_BreakingLLM(n=3), policy=ExitPolicy(threshold=0.0))
    try:
        with pytest.raises(StreamInterrupted) as raised:
            list(llm.stream_complete("q"))
    finally:
        dispatcher.event_handlers.remove(collect)
    (event,) = collect.of("EntropyExitReportEvent")
    assert event.report == raised.value.partial.report.to_dict()
    assert event.report["ended"] == "broken" and event.report["tokens_generated"] == 3
