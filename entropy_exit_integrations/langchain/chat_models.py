"""ChatEntropyExit: any LangChain chat model, stopped early once its tokens say it is sure."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any, cast

from langchain_core.callbacks import CallbackManager
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_messages
from langchain_core.messages.ai import UsageMetadata
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
from pydantic import InstanceOf, model_validator

from ..core.tokens import Phase
from ..driver import Output, adrive, drive
from ..engine import ENTROPY_EXIT, REPORT_KEY, ExitResult, MonitoredCall, RequestSpec
from ..options import OPTION_NAMES, ExitOptions
from ..providers.frameworks import parse_langchain_chunk
from .callbacks import openai_dicts

WRAPPER_HINT = (
    "ChatEntropyExit asked the inner model for them with its logprobs_kwargs "
    "(default logprobs=True, top_logprobs=policy.top_k) and it ignored them: use a model class "
    "that supports logprobs (ChatOpenAI against a server that returns them), or pass the "
    "arguments your model needs as logprobs_kwargs"
)


class ChatEntropyExit(BaseChatModel):
    """Wraps a chat model; stops its stream once the model is confident, and reports the savings.

    Each call streams the inner model through its public ``stream``/``astream`` with logprobs
    requested, and closes that stream (so the server stops) once the policy says "confident"; a
    short second request forces the final answer when the exit cut the reasoning (or always, with
    ``force_answer=True``). The last chunk carries ``usage_metadata``, every chunk's logprobs and
    the report in ``response_metadata["entropy_exit"]``. Tool calls and structured answers are
    never cut; reasoning goes to ``additional_kwargs["reasoning_content"]`` (README "Use it").

    Key init args:
        model: the inner ``BaseChatModel``, or a ``"provider:model"`` string for
            ``init_chat_model`` (extra keyword arguments such as ``max_tokens`` then go to it).
        options: ``ExitOptions``; or its fields: ``policy`` (required), ``force_answer``,
            ``forcing``, ``probes``, ``ledger``, ``audit``, ``trace_sink``, ``reasoning_format``...
        logprobs_kwargs: call kwargs that ask the inner model for logprobs (default: the OpenAI
            fields, ``logprobs=True, top_logprobs=policy.top_k``).
        stop: default stop sequences for the inner model (a call's own ``stop`` wins).

    Example (``entropy-exit serve`` prints the URL of the embedded server)::

        inner = ChatOpenAI(base_url=url, api_key="none", model="smollm2-135m-instruct", max_tokens=200)
        llm = ChatEntropyExit(model=inner, policy=ExitPolicy(threshold=1.0, min_tokens=8))
        msg = llm.invoke("What is 7 + 5? Explain.")
        print(msg.content, msg.response_metadata["entropy_exit"]["tokens_saved_vs_budget"])
    """

    model: BaseChatModel
    options: InstanceOf[ExitOptions]
    logprobs_kwargs: dict[str, Any] | None = None
    stop: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _build(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        given = {name: values.pop(name) for name in OPTION_NAMES if name in values}
        values["options"] = ExitOptions.build(values.get("options"), "ChatEntropyExit", **given)
        own = set(cls.model_fields)  # with BaseChatModel's: callbacks, tags, rate_limiter...
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
        inner = self.model.asdict()  # (public: the inner model's identifying params and "_type")
        return {"inner_llm_type": inner.pop("_type"), **inner, **self.options.to_dict()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        # LangChain's tracing hook, answered by the inner model's own (no public twin; a unit test
        # checks the model name and max_tokens it gives)
        return self.model._get_ls_params(stop=stop, **kwargs)

    def _call(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kw: dict[str, Any]
    ) -> tuple[MonitoredCall, _Chunks, RunnableConfig]:
        """The engine for one call of the inner model with these call kwargs."""
        inner, options = self.model, self.options
        try:
            from langchain_openai.chat_models.base import BaseChatOpenAI

            openai_like = isinstance(inner, BaseChatOpenAI)  # ChatOpenAI and partner subclasses
        except ImportError:  # pragma: no cover - langchain-openai not installed
            openai_like = False
        stop = stop if stop is not None else self.stop
        fields = dict(kw) if stop is None else {**kw, "stop": stop}
        n = getattr(inner, "n", None)
        if isinstance(n, int) and n > 1:
            fields.setdefault("n", n)  # refused by the engine: one choice per monitored call
        logprobs_kwargs = self.logprobs_kwargs
        if logprobs_kwargs is None:
            logprobs_kwargs = {"logprobs": True}
            if getattr(inner, "top_logprobs", None) is None:
                logprobs_kwargs["top_logprobs"] = options.policy.top_k
        default = getattr(inner, "max_tokens", None)
        budget = fields.get("max_tokens", fields.get("max_completion_tokens", default))
        name = fields.get("model") or getattr(inner, "model_name", None) or getattr(inner, "model", None)
        if not openai_like and options.forcing.style != "followup":  # no prefill elsewhere
            options = replace(options, forcing=replace(options.forcing, style="followup"))
        call = MonitoredCall(
            options,
            fields=fields,
            messages=openai_dicts(messages),
            model=str(name) if name else None,
            max_tokens=budget if isinstance(budget, int) else None,
            base_url=str(getattr(inner, "openai_api_base", "") or "") if openai_like else "",
            terminal_required=openai_like,
            reasoning_field=False,  # ChatOpenAI does not send reasoning_content back
            logprobs_hint=WRAPPER_HINT,
            logprob_fields=logprobs_kwargs,
            usage_fields={"stream_usage": True} if openai_like else None,
        )
        return call, _Chunks(call), _child_config(run_manager)

    def _chunks(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kw: Any
    ) -> Iterator[ChatGenerationChunk]:
        call, chunks, config = self._call(messages, stop, run_manager, kw)
        for step in drive(call, _Transport(self.model, messages, config, False)):
            yield from chunks.out(step)

    async def _achunks(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kw: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        call, chunks, config = self._call(messages, stop, run_manager, kw)
        async for step in adrive(call, _Transport(self.model, messages, config, True)):
            for chunk in chunks.out(step):
                yield chunk

    _stream, _astream = _chunks, _achunks  # the names BaseChatModel calls (ours calls its own)

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        chunks = []
        for chunk in self._chunks(messages, stop, run_manager, **kw):
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            chunks.append(chunk)
        return generate_from_stream(iter(chunks))

    async def _agenerate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        chunks = []
        async for chunk in self._achunks(messages, stop, run_manager, **kw):
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            chunks.append(chunk)
        return generate_from_stream(iter(chunks))  # a linear merge (see ``passed_on``)

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

    def with_structured_output(self, schema: Any = None, *, include_raw: bool = False, **kw: Any) -> Runnable:
        """The inner model's structured output (its methods: json_schema, function_calling...): its
        request arguments and parser, with this wrapper as the model step (monitored, never cut)."""
        built = self.model.with_structured_output(schema, include_raw=False, **kw)
        steps = built.steps if isinstance(built, RunnableSequence) else [built]
        first = steps[0]
        if not (isinstance(first, RunnableBinding) and first.bound is self.model):
            return super().with_structured_output(schema, include_raw=include_raw, **kw)
        llm = self.bind(**first.kwargs)
        if len(steps) == 1:
            return llm
        parser: Runnable[Any, Any] = steps[1] if len(steps) == 2 else RunnableSequence(*steps[1:])
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([unparsed], exception_key="parsing_error")


@dataclass
class _Transport:
    """The inner model's public ``stream`` (``is_async``: ``astream``, for ``adrive``) as the
    driver's transport; closing a stream closes its HTTP response, so the server stops."""

    inner: BaseChatModel
    messages: list[BaseMessage]
    config: RunnableConfig
    is_async: bool
    parts = staticmethod(parse_langchain_chunk)

    def open(self, spec: RequestSpec) -> Any:
        """The caller's messages and the request's own (forcing, probes: OpenAI dicts)."""
        messages = [*self.messages, *convert_to_messages(list(spec.messages))]
        if self.is_async:
            return _ready(self.inner.astream(messages, self.config, **spec.fields))
        return self.inner.stream(messages, self.config, **spec.fields)

    def close(self, stream: Any) -> Any:
        return stream.aclose() if self.is_async else stream.close()


async def _ready(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    return stream


class _Chunks:
    """What one call streams out: the inner chunks with the engine's text, then the last chunk."""

    def __init__(self, call: MonitoredCall) -> None:
        self.call = call
        self.saw_model_name = False
        self.logprobs: dict[str, Any] | None = None  # every chunk's, for the last chunk

    def out(self, step: Output) -> list[ChatGenerationChunk]:
        if step.result is not None:
            return [self.last_chunk(step.result)]
        if step.chunk is not None:
            return [self.passed_on(step.chunk, step.deltas)]
        return [
            ChatGenerationChunk(
                message=AIMessageChunk(content="", additional_kwargs={"reasoning_content": d.text})
                if d.phase is Phase.REASONING
                else AIMessageChunk(content=d.text)
            )
            for d in step.deltas  # text the engine released (held back, the forced answer)
        ]

    def passed_on(self, message: Any, deltas: list[Any]) -> ChatGenerationChunk:
        """An inner chunk with the engine's text (copied only when it changes): the content is the
        answer, reasoning goes to ``additional_kwargs["reasoning_content"]``; its usage and its
        logprobs go on the last chunk (so LangChain's merge of the chunks stays linear: README).
        """
        if not isinstance(message, AIMessageChunk):  # a model that cannot stream: its whole answer
            message = AIMessageChunk(**{**message.__dict__, "type": "AIMessageChunk"})  # (tool calls too)
        data = message.__dict__
        metadata = data["response_metadata"]
        self.saw_model_name = self.saw_model_name or bool(metadata.get("model_name"))
        if len(deltas) == 1 and deltas[0].phase is Phase.ANSWER:
            answer, reasoning = deltas[0].text, ""
        else:
            answer = "".join(d.text for d in deltas if d.phase is Phase.ANSWER)
            reasoning = "".join(d.text for d in deltas if d.phase is Phase.REASONING)
        update: dict[str, Any] = {}
        logprobs = metadata.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            if self.logprobs is None:
                self.logprobs = {**logprobs, "content": []}
            self.logprobs["content"] += logprobs["content"]
            update["response_metadata"] = {k: v for k, v in metadata.items() if k != "logprobs"}
        content = data["content"]
        if content.__class__ is str and content != answer:
            update["content"] = answer
        extra = data["additional_kwargs"]
        if reasoning or "reasoning_content" in extra or "reasoning" in extra:
            kept = {k: v for k, v in extra.items() if k not in ("reasoning_content", "reasoning")}
            update["additional_kwargs"] = {**kept, "reasoning_content": reasoning} if reasoning else kept
        if data.get("usage_metadata"):
            update["usage_metadata"] = None
        if data.get("chunk_position") == "last":
            update["chunk_position"] = None  # the last chunk is ours
        return ChatGenerationChunk(message=message.model_copy(update=update) if update else message)

    def last_chunk(self, result: ExitResult) -> ChatGenerationChunk:
        """The last chunk: usage, the report (plain data, once), the exit's finish reason."""
        metadata: dict[str, Any] = {REPORT_KEY: result.report.to_dict()}
        usage = result.usage
        if usage.get("estimated"):  # usage_metadata has no such flag: say it beside it
            metadata["prompt_tokens_estimated"] = True
        if result.finish_reason == ENTROPY_EXIT:
            metadata["finish_reason"] = ENTROPY_EXIT  # a cut stream sent none of its own
        if not self.saw_model_name and self.call.model:
            metadata["model_name"] = self.call.model
        if self.logprobs is not None:
            metadata["logprobs"] = self.logprobs
        counts = {"input_tokens": "prompt_tokens", "output_tokens": "completion_tokens"}
        counts["total_tokens"] = "total_tokens"
        usage_metadata = cast(UsageMetadata, {ours: int(usage[theirs]) for ours, theirs in counts.items()})
        message = AIMessageChunk(
            content="", response_metadata=metadata, usage_metadata=usage_metadata, chunk_position="last"
        )
        return ChatGenerationChunk(message=message)


def _child_config(run_manager: Any) -> RunnableConfig:
    """Config that nests the inner model's run under this run (for tracers) without passing this
    run's handlers down: they see this call once, as LangChain's standard tests require."""
    if run_manager is None:  # (BaseChatModel.stream passes none): at least keep handlers apart
        return {"callbacks": []}
    manager = CallbackManager(handlers=[], parent_run_id=run_manager.run_id)  # (async runs too)
    return {"callbacks": manager, "metadata": dict(run_manager.inheritable_metadata)}
