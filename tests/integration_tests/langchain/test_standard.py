"""LangChain's standard integration tests for ChatEntropyExit against the embedded llama.cpp server.

The inner model is ChatOpenAI(base_url=<embedded server>) running SmolLM2-135M-Instruct; the
policy really exits (so every test also exercises cut streams), except where a stream must not
be cut: schema-constrained (structured) output is never cut.

Marked unsupported because the embedded server lacks them (not the wrapper):
* tool calling: SmolLM2's chat template has no tools, and llama-server (this build) then answers
  in plain text even with ``tool_choice="required"``; it also refuses logprobs on a streamed
  request that carries ``tools`` (HTTP 400 "logprobs is not supported with tools + stream").
* model override: llama-server serves one model and names it in every response.
* image/audio/PDF inputs: a text-only model (the suite's defaults already say so).
* ``test_structured_output_pydantic_2_v1``: ChatOpenAI sends pydantic.v1 schemas as a tool, i.e.
  tool calling (xfail).
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
        return {
            "model": f"openai:{self.model_id}",
            "base_url": self.base_url,
            "api_key": "sk-no-key",
            "temperature": 0,
            "max_tokens": 64,  # the integration suite sets no budget: SmolLM2 would ramble on
            "max_retries": 0,
            "policy": ExitPolicy(threshold=1.0, min_tokens=8),
        }

    @pytest.mark.xfail(reason="ChatOpenAI turns pydantic.v1 schemas into a tool: no tool calling here")
    def test_structured_output_pydantic_2_v1(self, model: Any) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason="SmolLM2-135M does not close the JSON within the budget")
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(reason="SmolLM2-135M does not close the JSON within the budget")
    def test_structured_output_optional_param(self, model: Any) -> None:
        super().test_structured_output_optional_param(model)

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False
