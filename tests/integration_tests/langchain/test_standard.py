"""LangChain's standard integration tests for ChatEntropyExit against the embedded llama.cpp server.

The inner model is ChatOpenAI(base_url=<embedded server>) running SmolLM2-135M-Instruct; the
policy really exits (so every test also exercises cut streams), except where a stream must not
be cut: schema-constrained (structured) output is never cut.

Tool calling runs through ``ChatSchemaToolCalls`` (SmolLM2's chat template has no tools: a
required call is generated as schema-constrained JSON, streamed with its logprobs); calls with
tools bound but not required go to llama-server with ``tools`` and are monitored through its
``n_probs``. Tool-calling tests whose *model* answers are wrong are xfail, each with its reason
(``test_tool_calling``, ``_async``, ``test_agent_loop``, ``test_unicode_tool_call_integration``).

Marked unsupported because the embedded server lacks them (not the wrapper):
* model override: llama-server serves one model and names it in every response.
* image/audio/PDF inputs and image/PDF tool messages: a text-only model.
* ``test_json_mode`` and ``test_structured_output_optional_param`` (xfail): the 135M model does
  not close the JSON document; it fills strings until the budget (also at 128 tokens), and the
  openai SDK then raises ``LengthFinishReasonError``. Structured output with a required schema
  passes (``test_structured_output*``).
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.lab.local.langchain_tools import ChatSchemaToolCalls
from entropy_exit_integrations.langchain import ChatEntropyExit


class TestChatEntropyExitIntegration(ChatModelIntegrationTests):
    base_url = ""
    model_id = ""

    @pytest.fixture(autouse=True)
    def _server(self, fresh_llama_server: Any) -> None:
        type(self).base_url = fresh_llama_server.base_url
        type(self).model_id = fresh_llama_server.model

    @property
    def chat_model_class(self) -> type[ChatEntropyExit]:
        return ChatEntropyExit

    @property
    def chat_model_params(self) -> dict[str, Any]:
        inner = ChatSchemaToolCalls(
            model=self.model_id,
            base_url=self.base_url,
            api_key="sk-no-key",
            temperature=0,
            max_tokens=64,  # the integration suite sets no budget: SmolLM2 would ramble on
            max_retries=0,
        )
        return {"model": inner, "policy": ExitPolicy(threshold=1.0, min_tokens=8)}

    # The model, not the wrapper: the calls are made and monitored (ChatSchemaToolCalls), but a
    # 135M model fills them wrongly.
    @pytest.mark.xfail(reason="SmolLM2-135M calls magic_function with input=100, not 3")
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason="SmolLM2-135M calls magic_function with input=100, not 3")
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason="SmolLM2-135M's final answer does not use the tool's result")
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason="SmolLM2-135M does not copy the Japanese name into the call")
    def test_unicode_tool_call_integration(self, model: Any) -> None:
        super().test_unicode_tool_call_integration(model)

    @pytest.mark.xfail(reason="SmolLM2-135M does not close the JSON within the budget")
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(reason="SmolLM2-135M does not close the JSON within the budget")
    def test_structured_output_optional_param(self, model: Any) -> None:
        super().test_structured_output_optional_param(model)

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False
