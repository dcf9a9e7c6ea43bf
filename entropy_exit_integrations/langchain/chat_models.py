"""ChatEntropyExit: any LangChain chat model, stopped early once its tokens say it is sure."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, SkipValidation, model_validator

from ..core.policy import ExitPolicy
from ..core.probes import ProbeRule
from ..core.savings import SavingsLedger
from ..engine import aguarded, check_policy, guarded
from ..forcing import AnswerForcing
from ._inner import (
    ainner_stream,
    aiter_list,
    aopen_stream,
    inner_stream,
    open_stream,
    swap_model,
    with_reasoning_capture,
)
from ._translate import Monitored, delta_chunks, last_chunk, monitored, passed_on, short_call
from .callbacks import parts_from_chunk


class ChatEntropyExit(BaseChatModel):
    """Wraps a chat model; stops its stream once the model is confident, and reports the savings.

    Every call streams the inner model with logprobs requested (``logprobs=True,
    top_logprobs=policy.top_k`` unless ``logprobs_kwargs`` says otherwise), feeds each chunk to
    an ``ExitSession`` and, when the policy says "confident", closes the inner stream (the HTTP
    response, so the server stops generating). When the exit cut the reasoning (or always, with
    ``force_answer=True``) a short second request asks for the final answer: for OpenAI-compatible
    inner models the cut text goes back as a trailing assistant message the server continues
    (llama.cpp, vLLM); elsewhere as a follow-up user turn. The last chunk carries
    ``usage_metadata`` (counted from the logprob entries when the stream was cut) and
    ``response_metadata["entropy_exit"]``: the ``SavingsReport`` as plain data.

    Tool calls are never cut in the middle; ``bind_tools``, ``with_structured_output``, ``stop``,
    callbacks, tags and metadata pass through. Reasoning that vLLM/DeepSeek-style servers send in
    ``delta.reasoning_content`` (dropped by ChatOpenAI) is kept in
    ``additional_kwargs["reasoning_content"]``.

    Setup:
        ``pip install "entropy-exit-integrations[langchain]"``; any chat model whose provider
        streams logprobs (ChatOpenAI against OpenAI, vLLM, llama.cpp, SGLang, Together...).

    Key init args:
        model: the inner ``BaseChatModel``, or a ``"provider:model"`` string for
            ``init_chat_model`` (extra keyword arguments such as ``temperature``, ``max_tokens``
            or ``base_url`` then go to it).
        policy: the ``ExitPolicy``.
        force_answer: None (after an exit in the reasoning), True (after any exit), False.
        forcing: ``AnswerForcing`` (style, budget, cue of the forcing request).
        ledger: a ``SavingsLedger`` that records every call's report.
        logprobs_kwargs: call kwargs that ask the inner model for logprobs.

    Instantiate (the embedded server: ``entropy-exit serve`` prints its URL):
        .. code-block:: python

            from langchain_openai import ChatOpenAI
            from entropy_exit_integrations import ExitPolicy
            from entropy_exit_integrations.langchain import ChatEntropyExit

            inner = ChatOpenAI(base_url="http://127.0.0.1:8080/v1", api_key="none",
                               model="smollm2-135m-instruct", temperature=0, max_tokens=200)
            llm = ChatEntropyExit(model=inner, policy=ExitPolicy(threshold=1.0, min_tokens=8))

    Invoke:
        .. code-block:: python

            msg = llm.invoke("What is 7 + 5? Explain.")
            report = msg.response_metadata["entropy_exit"]
            print(msg.content, report["exited"], report["tokens_saved_vs_budget"])

    Stream:
        .. code-block:: python

            for chunk in llm.stream("Name three colours."):
                print(chunk.content, end="")

    In a chain, with tools:
        .. code-block:: python

            from langchain_core.output_parsers import StrOutputParser
            from langchain_core.prompts import ChatPromptTemplate

            chain = ChatPromptTemplate.from_template("{q}") | llm | StrOutputParser()
            print(chain.batch([{"q": "2+2?"}, {"q": "3+3?"}]))
            llm.bind_tools([my_tool]).invoke("...")

    Usage metadata:
        .. code-block:: python

            msg.usage_metadata  # {'input_tokens': ..., 'output_tokens': ..., 'total_tokens': ...}

    Observability: the report is in the message's ``response_metadata``, so every tracer
    (LangSmith, ``collect_runs``, any ``BaseTracer``) records it with the run's outputs, for
    ``invoke``, ``stream``, ``ainvoke`` and ``astream`` alike; with the ``otel`` extra each call
    also emits an OpenTelemetry span (``entropy_exit_integrations.telemetry``).
    """

    model: BaseChatModel
    policy: SkipValidation[ExitPolicy]
    force_answer: bool | None = None
    forcing: SkipValidation[AnswerForcing] = Field(default_factory=AnswerForcing)
    ledger: SkipValidation[SavingsLedger | None] = None
    logprobs_kwargs: dict[str, Any] | None = None
    capture_reasoning: bool = True
    """Keep ``reasoning_content`` deltas that ChatOpenAI drops (ChatOpenAI-family models only)."""
    stop: list[str] | None = None
    """Default stop sequences for the inner model (a call's own ``stop`` wins)."""
    probes: SkipValidation[ProbeRule | None] = None
    """Answer probes: stop only when consecutive short forced answers agree (``ProbeRule``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _build_model(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        own = set(cls.model_fields) | {
            "callbacks",
            "tags",
            "metadata",
            "verbose",
            "cache",
            "rate_limiter",
            "disable_streaming",
            "output_version",
            "profile",
        }
        extra = {k: v for k, v in values.items() if k not in own}
        if not extra:
            return values
        if not isinstance(values.get("model"), str):
            raise TypeError(
                f"ChatEntropyExit got {sorted(extra)}: set them on the inner model (or pass "
                "model='provider:model-name' to build it with init_chat_model)"
            )
        from langchain.chat_models import init_chat_model

        rest = {k: v for k, v in values.items() if k in own}
        return {**rest, "model": init_chat_model(values["model"], **extra)}

    @model_validator(mode="after")
    def _check_types(self) -> ChatEntropyExit:
        check_policy(self.policy, "ChatEntropyExit")
        if not isinstance(self.forcing, AnswerForcing):
            raise TypeError(
                f"ChatEntropyExit: forcing must be an AnswerForcing, got {type(self.forcing).__name__}"
            )
        if self.ledger is not None and not isinstance(self.ledger, SavingsLedger):
            raise TypeError(
                f"ChatEntropyExit: ledger must be a SavingsLedger, got {type(self.ledger).__name__}"
            )
        return self

    @property
    def _llm_type(self) -> str:
        return "entropy-exit"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "inner_llm_type": self.model._llm_type,
            **self.model._identifying_params,
            "policy": self.policy.to_dict(),
            "force_answer": self.force_answer,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        return self.model._get_ls_params(stop=stop, **kwargs)

    def _inner(self) -> BaseChatModel:
        return with_reasoning_capture(self.model) if self.capture_reasoning else self.model

    def _monitored(
        self, inner: BaseChatModel, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> Monitored:
        return monitored(
            inner,
            self.policy,
            messages,
            kwargs,
            logprobs_kwargs=self.logprobs_kwargs,
            force_answer=self.force_answer,
            forcing=self.forcing,
            ledger=self.ledger,
            probes=self.probes,
        )

    def _probe(self, run: Monitored, inner: BaseChatModel, messages: list[BaseMessage]) -> None:
        """One answer probe, while the server goes on generating the main stream."""
        plan = run.call.probe_plan()
        probe_messages, kwargs = short_call(run, inner, messages, plan)
        stream = inner_stream(inner, probe_messages, plan.stop or None, kwargs)
        try:
            run.call.run_probe(parts_from_chunk(chunk) for chunk in stream)
        finally:
            stream.close()

    async def _aprobe(self, run: Monitored, inner: BaseChatModel, messages: list[BaseMessage]) -> None:
        """Async twin of ``_probe``."""
        plan = run.call.probe_plan()
        probe_messages, kwargs = short_call(run, inner, messages, plan)
        stream = ainner_stream(inner, probe_messages, plan.stop or None, kwargs)
        try:
            await run.call.arun_probe(parts_from_chunk(chunk) async for chunk in stream)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        inner = self._inner()
        run = self._monitored(inner, messages, kwargs)
        call = run.call
        stream, head = open_stream(inner, messages, stop if stop is not None else self.stop, run)
        try:
            for chunk in guarded(itertools.chain(head, stream), call):
                yield passed_on(run, chunk)
                if call.wants_probe:
                    self._probe(run, inner, messages)
                if call.should_stop:
                    break
        finally:
            stream.close()  # closes the HTTP response: the server stops generating
        yield from delta_chunks(call.end_main(cut=call.should_stop))
        if call.wants_forcing():
            plan = call.forcing_plan()
            forced_messages, forced_kwargs = short_call(run, inner, messages, plan)
            stream = inner_stream(inner, forced_messages, plan.stop or None, forced_kwargs)
            try:
                for chunk in guarded(stream, call):
                    yield from delta_chunks(call.feed_forced(parts_from_chunk(chunk)))
            finally:
                stream.close()
            yield from delta_chunks(call.finish_forced())
        yield last_chunk(run, call.finish())

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        inner = self._inner()
        run = self._monitored(inner, messages, kwargs)
        call = run.call
        stream, head = await aopen_stream(inner, messages, stop if stop is not None else self.stop, run)
        try:
            for chunk in head:
                yield passed_on(run, chunk)
            if not call.should_stop:
                async for chunk in aguarded(stream, call):
                    yield passed_on(run, chunk)
                    if call.wants_probe:
                        await self._aprobe(run, inner, messages)
                    if call.should_stop:
                        break
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        for out in delta_chunks(call.end_main(cut=call.should_stop)):
            yield out
        if call.wants_forcing():
            plan = call.forcing_plan()
            forced_messages, forced_kwargs = short_call(run, inner, messages, plan)
            stream = ainner_stream(inner, forced_messages, plan.stop or None, forced_kwargs)
            try:
                async for chunk in aguarded(stream, call):
                    for out in delta_chunks(call.feed_forced(parts_from_chunk(chunk))):
                        yield out
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            for out in delta_chunks(call.finish_forced()):
                yield out
        yield last_chunk(run, await call.afinish())

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = []
        for chunk in self._stream(messages, stop=stop, **kwargs):
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            chunks.append(chunk)
        return generate_from_stream(iter(chunks))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = []
        async for chunk in self._astream(messages, stop=stop, **kwargs):
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            chunks.append(chunk)
        return await agenerate_from_stream(aiter_list(chunks))

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The inner model's ``bind_tools`` (its tool format), bound to this wrapper."""
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        bound = self.model.bind_tools(tools, **kwargs)
        if not isinstance(bound, RunnableBinding):
            raise TypeError(f"{type(self.model).__name__}.bind_tools returned {type(bound).__name__}")
        return self.bind(**bound.kwargs)

    def with_structured_output(self, schema: Any = None, **kwargs: Any) -> Runnable:
        """The inner model's structured output (its methods: json_schema, function_calling...).

        The inner model builds the runnable; its model step is rebound to this wrapper.
        """
        built = self.model.with_structured_output(schema, **kwargs)
        swapped = swap_model(built, self.model, self)
        if swapped is None:
            return super().with_structured_output(schema, **kwargs)
        return swapped
