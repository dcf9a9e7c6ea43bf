"""``EntropyExitLLM``: any LlamaIndex LLM, stopped early once its token entropy says it is sure.

Every call streams from the inner LLM, even ``chat``/``complete``, so that the monitor can act.
On exit the inner generator is closed and, for openai-SDK based LLMs built with
``http_clients()``, the HTTP response too, so the server stops generating. Logprobs are asked for
through the inner LLM's own fields (``logprobs``, ``top_logprobs=policy.top_k``, on a shallow
copy). Streaming calls yield the inner responses as they come, then a final one (``delta=""``)
with the whole text, the per-token candidates in ``.logprobs`` (LlamaIndex's ``LogProb``, built
when read; none with ``keep_tokens=False``) and the report in ``additional_kwargs["entropy_exit"]``
(``SavingsReport.from_dict`` rebuilds it); the report also goes to LlamaIndex instrumentation as
an ``EntropyExitReportEvent`` on the call's span (for a stream that broke, its partial report).
See the README's LlamaIndex section for an example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, SerializeAsAny, model_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection
from pydantic import InstanceOf

from ..core.savings import SavingsReport
from ..options import OPTION_NAMES, ExitOptions
from ._stream import Mode, Responses, Transport


class EntropyExitLLM(FunctionCallingLLM):
    """Wraps a LlamaIndex LLM; stops its generations early once the entropy policy says so.

    Args:
        llm: the inner LLM. For a real stop and automatic logprob requests use an openai-SDK
            based one (``OpenAI``, ``OpenAILike``) built with the hooked HTTP clients:
            ``OpenAILike(..., http_client=sync_client, async_http_client=async_client)`` with
            ``sync_client, async_client = http_clients()``; without them an exit closes the
            generator but not the HTTP response (a warning says so once). Any other LLM works
            as a monitor when its streamed responses carry logprobs (``raw`` chunks in the
            OpenAI shape or ``.logprobs``), else ``LogprobsUnavailableError`` is raised.
        options: every exit setting (``ExitOptions``); or pass its fields instead: ``policy``
            (required), ``force_answer``, ``forcing``, ``probes``, ``ledger``, ``on_token``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: SerializeAsAny[LLM] = Field(description="The inner LLM that does the generating.")
    options: InstanceOf[ExitOptions] = Field(description="ExitOptions: the policy, what to do after an exit.")

    _last_report: SavingsReport | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _build(cls, values: Any) -> Any:
        if isinstance(values, dict):
            values = dict(values)
            given = {name: values.pop(name) for name in OPTION_NAMES if name in values}
            values["options"] = ExitOptions.build(values.get("options"), "EntropyExitLLM", **given)
        return values

    @property
    def policy(self) -> Any:
        """The options' ``ExitPolicy``."""
        return self.options.policy

    @classmethod
    def class_name(cls) -> str:
        return "EntropyExitLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return self.llm.metadata

    @property
    def last_report(self) -> SavingsReport | None:
        """Report of the most recent call (use ``ledger`` when calls run concurrently)."""
        return self._last_report

    # -- chat -------------------------------------------------------------------------------

    def _run(self, mode: Mode, payload: Any, kwargs: dict[str, Any], formatted: bool = False) -> Any:
        return Responses(self, Transport(self, mode, payload, kwargs, formatted, False)).run()

    def _arun(self, mode: Mode, payload: Any, kwargs: dict[str, Any], formatted: bool = False) -> Any:
        return Responses(self, Transport(self, mode, payload, kwargs, formatted, True)).arun()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return _last(self._run("chat", messages, kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._run("chat", messages, kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await _alast(self._arun("chat", messages, kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return self._arun("chat", messages, kwargs)

    # -- completion -------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return _last(self._run("completion", prompt, kwargs, formatted))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._run("completion", prompt, kwargs, formatted)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await _alast(self._arun("completion", prompt, kwargs, formatted))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return self._arun("completion", prompt, kwargs, formatted)

    # -- tools: prepared and read by the inner LLM ------------------------------------------

    def _tool_llm(self) -> FunctionCallingLLM:
        if not isinstance(self.llm, FunctionCallingLLM):
            raise TypeError(
                f"{type(self.llm).__name__} is not a FunctionCallingLLM: tool calling needs an inner LLM "
                "that supports it (e.g. OpenAILike(..., is_function_calling_model=True))"
            )
        return self.llm

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        return self._tool_llm()._prepare_chat_with_tools_compat(
            tools, user_msg, chat_history, verbose, allow_parallel_tool_calls, tool_required, **kwargs
        )

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[Any],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        return self._tool_llm()._validate_chat_with_tools_response(
            response, tools, allow_parallel_tool_calls, **kwargs
        )

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        return self._tool_llm().get_tool_calls_from_response(response, error_on_no_tool_call, **kwargs)


def _last(responses: Any) -> Any:
    last = None
    for last in responses:  # noqa: B007 - the last response is the result
        pass
    return last


async def _alast(responses: Any) -> Any:
    last = None
    async for last in responses:  # noqa: B007
        pass
    return last
