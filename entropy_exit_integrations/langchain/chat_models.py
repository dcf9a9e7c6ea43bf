"""ChatEntropyExit: any LangChain chat model, stopped early once its tokens say it is sure."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableConfig,
    RunnableMap,
    RunnablePassthrough,
    RunnableSequence,
)
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, InstanceOf, model_validator

from ..driver import adrive, drive
from ..options import OPTION_NAMES, ExitOptions
from ._translate import AsyncTransport, Chunks, Transport, monitored_call


class ChatEntropyExit(BaseChatModel):
    """Wraps a chat model; stops its stream once the model is confident, and reports the savings.

    Every call streams the inner model through its public ``stream``/``astream`` (so its rate
    limiter, cache and callbacks run as for any call) with logprobs requested (``logprobs=True,
    top_logprobs=policy.top_k`` unless ``logprobs_kwargs`` says otherwise); the engine reads
    each chunk and, when the policy says "confident", the inner stream is closed (the HTTP
    response, so the server stops generating). When the exit cut the reasoning (or always, with
    ``force_answer=True``) a short second request asks for the final answer: for OpenAI-compatible
    inner models the cut text goes back as a trailing assistant message the server continues
    (llama.cpp, vLLM); elsewhere as a follow-up user turn. The last chunk carries
    ``usage_metadata`` (counted from the logprob entries when the stream was cut) and
    ``response_metadata["entropy_exit"]``: the ``SavingsReport`` as plain data.

    Tool calls are never cut in the middle, nor a required tool call or a structured answer at
    all; ``bind_tools``, ``with_structured_output``, ``stop``, callbacks, tags and metadata pass
    through. Reasoning goes to ``additional_kwargs["reasoning_content"]`` and the content is the
    answer: reasoning inside ``<think>`` (or ``[THINK]``, harmony) markers, and reasoning fields
    the inner model keeps. ChatOpenAI drops vLLM's and DeepSeek's ``reasoning_content`` /
    ``reasoning`` deltas; the partner class ``ChatDeepSeek`` (``pip install langchain-deepseek``;
    ``ChatDeepSeek(api_base=url, api_key=..., model=...)`` talks to any OpenAI-compatible
    server) keeps them. Without either, text-less tokens are still monitored as reasoning.

    Setup:
        ``pip install "entropy-exit-integrations[langchain]"``; any chat model whose provider
        streams logprobs (ChatOpenAI against OpenAI, vLLM, llama.cpp, SGLang, Together...).

    Key init args:
        model: the inner ``BaseChatModel``, or a ``"provider:model"`` string for
            ``init_chat_model`` (extra keyword arguments such as ``temperature``, ``max_tokens``
            or ``base_url`` then go to it).
        options: ``ExitOptions``; or its fields: ``policy`` (required), ``force_answer``,
            ``forcing``, ``probes``, ``ledger``, ``audit``, ``trace_sink``, ``reasoning_format``...
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
    options: InstanceOf[ExitOptions]
    """Every exit setting (``ExitOptions``); its fields may be passed directly instead:
    ``policy`` (required), ``force_answer``, ``forcing``, ``probes``, ``ledger``, ``on_token``."""
    logprobs_kwargs: dict[str, Any] | None = None
    """Call kwargs that ask the inner model for logprobs (default: ``logprobs=True,
    top_logprobs=policy.top_k``, the OpenAI fields)."""
    stop: list[str] | None = None
    """Default stop sequences for the inner model (a call's own ``stop`` wins)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _build(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        given = {name: values.pop(name) for name in OPTION_NAMES if name in values}
        values["options"] = ExitOptions.build(values.get("options"), "ChatEntropyExit", **given)
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

    @property
    def policy(self) -> Any:
        """The options' ``ExitPolicy``."""
        return self.options.policy

    @property
    def _llm_type(self) -> str:
        return "entropy-exit"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "inner_llm_type": self.model._llm_type,
            **self.model._identifying_params,
            **self.options.to_dict(),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        return self.model._get_ls_params(stop=stop, **kwargs)

    def _run(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> tuple[Chunks, RunnableConfig | None]:
        stop = stop if stop is not None else self.stop
        fields = {**kwargs, "stop": stop} if stop is not None else dict(kwargs)
        call = monitored_call(self.model, self.options, messages, fields, self.logprobs_kwargs)
        return Chunks(call), _child_config(run_manager)

    def _chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> Iterator[ChatGenerationChunk]:
        chunks, config = self._run(messages, stop, run_manager, kwargs)
        for step in drive(chunks.call, Transport(self.model, messages, config)):
            yield from chunks.out(step)

    async def _achunks(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> AsyncIterator[ChatGenerationChunk]:
        chunks, config = self._run(messages, stop, run_manager, kwargs)
        async for step in adrive(chunks.call, AsyncTransport(self.model, messages, config)):
            for chunk in chunks.out(step):
                yield chunk

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        return self._chunks(messages, stop, run_manager, kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in self._achunks(messages, stop, run_manager, kwargs):
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = []
        for chunk in self._chunks(messages, stop, run_manager, kwargs):
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
        async for chunk in self._achunks(messages, stop, run_manager, kwargs):
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            chunks.append(chunk)
        return await agenerate_from_stream(_aiter(chunks))

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

    def with_structured_output(
        self, schema: Any = None, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable:
        """The inner model's structured output (its methods: json_schema, function_calling...).

        The inner model prepares the request (its ``bind`` arguments) and the parser; the
        model step is this wrapper, bound to those arguments. A structured request is never
        cut (``engine.requires_structure``): it is monitored and reported only.
        """
        built = self.model.with_structured_output(schema, include_raw=False, **kwargs)
        steps = built.steps if isinstance(built, RunnableSequence) else [built]
        first = steps[0]
        if not (isinstance(first, RunnableBinding) and first.bound is self.model):
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        llm = self.bind(**first.kwargs)
        if len(steps) == 1:
            return llm
        parser: Runnable[Any, Any] = steps[1] if len(steps) == 2 else RunnableSequence(*steps[1:])
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([unparsed], exception_key="parsing_error")


def _child_config(run_manager: Any) -> RunnableConfig:
    """Config that makes the inner model's run a child of this run (a tracer enabled by the
    environment, LangSmith's, nests it), without passing this run's handlers down: they saw this
    call once, as LangChain's standard tests require. The inner model's own callbacks, rate
    limiter and cache run as for any call."""
    if run_manager is None:  # (BaseChatModel.stream passes none): at least keep handlers apart
        return {"callbacks": []}
    manager_class = (
        AsyncCallbackManager if isinstance(run_manager, AsyncCallbackManagerForLLMRun) else CallbackManager
    )
    manager = manager_class(handlers=[], parent_run_id=run_manager.run_id)
    return {"callbacks": manager, "metadata": dict(run_manager.inheritable_metadata)}


async def _aiter(chunks: list[ChatGenerationChunk]) -> AsyncIterator[ChatGenerationChunk]:
    for chunk in chunks:
        yield chunk
