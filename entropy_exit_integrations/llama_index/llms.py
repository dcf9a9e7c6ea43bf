"""``EntropyExitLLM``: any LlamaIndex LLM, stopped early once its token entropy says it is sure."""

from __future__ import annotations

from collections import deque
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
from ._stream import Call


class EntropyExitLLM(FunctionCallingLLM):
    """Wraps a LlamaIndex LLM; stops its generations early once the entropy policy says so.

    Every call streams from the inner LLM, even ``chat``/``complete``. Streaming calls yield the
    inner responses, then a last one (``delta=""``) with the whole text, each token's candidates
    in ``.logprobs`` and the report in ``additional_kwargs["entropy_exit"]``, also sent to
    LlamaIndex instrumentation as an ``EntropyExitReportEvent``.

    Example (``entropy-exit serve`` prints the URL)::

        from llama_index.llms.openai_like import OpenAILike
        from entropy_exit_integrations import ExitPolicy
        from entropy_exit_integrations.llama_index import EntropyExitLLM, http_clients

        sync_client, async_client = http_clients()
        inner = OpenAILike(api_base="http://127.0.0.1:8080/v1", api_key="none", model="smollm2",
                           is_chat_model=True, http_client=sync_client, async_http_client=async_client)
        llm = EntropyExitLLM(llm=inner, policy=ExitPolicy(threshold=1.0), force_answer=True)
        print(llm.complete("What is 7 + 5?").additional_kwargs["entropy_exit"])

    Args:
        llm: the inner LLM. An openai-SDK based one (``OpenAI``, ``OpenAILike``) gets logprobs
            asked for and, built with the clients of ``http_clients()`` as above, really stops
            (else a warning says the HTTP response stays open). Any other LLM works as a monitor
            when its streamed responses carry logprobs, else ``LogprobsUnavailableError``.
        options: every exit setting (``ExitOptions``); or pass its fields instead (``policy=``).
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

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return _last(Call(self, "chat", messages, kwargs).responses())

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return Call(self, "chat", messages, kwargs).responses()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await _alast(Call(self, "chat", messages, kwargs).aresponses())

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return Call(self, "chat", messages, kwargs).aresponses()

    # -- completion -------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return _last(Call(self, "completion", prompt, kwargs, formatted).responses())

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return Call(self, "completion", prompt, kwargs, formatted).responses()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await _alast(Call(self, "completion", prompt, kwargs, formatted).aresponses())

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return Call(self, "completion", prompt, kwargs, formatted).aresponses()

    # -- tools: prepared and read by the inner LLM ------------------------------------------

    def _tool_llm(self) -> FunctionCallingLLM:
        if not isinstance(self.llm, FunctionCallingLLM):
            raise TypeError(
                f"{type(self.llm).__name__} is not a FunctionCallingLLM: tool calling needs an inner LLM "
                "that supports it (e.g. OpenAILike(..., is_function_calling_model=True))"
            )
        return self.llm

    def _prepare_chat_with_tools(self, *args: Any, tool_required: bool = False, **kwargs: Any) -> Any:
        kwargs["tool_required"] = tool_required  # (LlamaIndex passes it only to a signature naming it)
        return self._tool_llm()._prepare_chat_with_tools_compat(*args, **kwargs)

    def _validate_chat_with_tools_response(self, *args: Any, **kwargs: Any) -> ChatResponse:
        return self._tool_llm()._validate_chat_with_tools_response(*args, **kwargs)

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        return self._tool_llm().get_tool_calls_from_response(response, error_on_no_tool_call, **kwargs)


def _last(responses: Any) -> Any:
    return deque(responses, maxlen=1).pop()  # the last response is the result


async def _alast(responses: Any) -> Any:
    last = None
    async for last in responses:  # noqa: B007
        pass
    return last
