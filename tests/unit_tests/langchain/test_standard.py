"""LangChain's standard unit tests for ChatEntropyExit (an inner ChatOpenAI built from a string)."""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.langchain import ChatEntropyExit


class TestChatEntropyExitUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatEntropyExit]:
        return ChatEntropyExit

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": "openai:smollm2-135m-instruct",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key": "none",
            "policy": ExitPolicy(threshold=1.0, min_tokens=8),
        }

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "another-model"
