"""``EntropyExitLLM``: any LlamaIndex LLM, stopped early once its token entropy says it is sure.

Example (against the embedded server, ``entropy-exit serve``)::

    from llama_index.llms.openai_like import OpenAILike
    from entropy_exit_integrations import ExitPolicy
    from entropy_exit_integrations.llama_index import EntropyExitLLM

    inner = OpenAILike(model="smollm2", api_base="http://127.0.0.1:8080/v1", api_key="none",
                       is_chat_model=True, max_tokens=200, temperature=0)
    llm = EntropyExitLLM(llm=inner, policy=ExitPolicy(threshold=1.0, min_tokens=8))
    response = llm.complete("What is 7 + 5?")
    print(response.text, response.additional_kwargs["entropy_exit"])

Every call streams from the inner LLM, even ``chat``/``complete``, so that the monitor can act.
On exit the inner generator is closed and, for openai-SDK based LLMs (``OpenAI``, ``OpenAILike``
and their relatives), the HTTP response too, so the server stops generating. Logprobs are
requested through the inner LLM's own fields (``logprobs=True``, ``top_logprobs=policy.top_k``,
on a shallow copy: the original is not changed). The final response carries the per-token
logprobs in ``.logprobs`` (LlamaIndex's type; ``keep_tokens=False`` leaves them out and keeps
memory flat on long streams) and the report in
``additional_kwargs["entropy_exit"]`` (a dict; ``SavingsReport.from_dict`` rebuilds it), and
the same report goes to LlamaIndex instrumentation as an ``EntropyExitReportEvent`` on the call's
span (also for a stream that broke: its partial report).
Streaming calls yield the inner responses as they come, then that final response (``delta=""``).
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
