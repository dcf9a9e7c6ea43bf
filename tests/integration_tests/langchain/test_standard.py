"""LangChain's standard integration tests for ChatEntropyExit against the embedded llama.cpp server.

The inner model is ChatOpenAI(base_url=<embedded server>) running SmolLM2-135M-Instruct; the
policy really exits (so every test also exercises cut streams), except where a stream must not
be cut: tool calls and schema-constrained (structured) output are never cut. llama-server
refuses logprobs on a streamed request that carries ``tools`` (HTTP 400 "logprobs is not
supported with tools + stream"), so ``on_missing="pass_through"`` runs the tool-calling tests
unmonitored (with an ``EntropyExitWarning``) instead of failing them.
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
    def _server(self, llama_server: Any) -> None:
        type(self).base_url = llama_server.base_url
        type(self).model_id = llama_server.model

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
            "policy": ExitPolicy(threshold=1.0, min_tokens=8, on_missing="pass_through"),
        }

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        # llama-server serves one model and names it in every response whatever the request says,
        # so response_metadata["model_name"] cannot follow a per-call `model=` override.
        return False
