"""EntropyGate as a LangChain Runnable: a first pass, and the extended step only when unsure."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, convert_to_openai_messages
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig

from ..gate import EntropyGate


class EntropyGateRunnable(Runnable[LanguageModelInput, AIMessage]):
    """Runs ``gate`` on a string, messages or a prompt value; returns the answer as an AIMessage.

    The gate streams through the openai helpers, as ``EntropyGate.run`` does; the answer's
    ``response_metadata["entropy_gate"]`` is the ``GateResult`` as plain data.

    Args:
        gate: the ``EntropyGate`` (tau or calibration, extended step).
        client: an ``openai.OpenAI`` client for an endpoint that streams logprobs.
        model: model id. **create_kwargs: more request settings (max_tokens, temperature, seed).

    Example::

        llm = ChatOpenAI(base_url=url, api_key="x", model=model, max_tokens=256)
        gated = EntropyGateRunnable.from_chat_openai(llm, EntropyGate(calibration, Refine()))
        (prompt | gated).invoke({"question": "..."}).response_metadata["entropy_gate"]
    """

    def __init__(self, gate: EntropyGate, *, client: Any, model: str, **create_kwargs: Any) -> None:
        self.gate = gate
        self.client = client
        self.model = model
        self.create_kwargs = create_kwargs

    @classmethod
    def from_chat_openai(cls, llm: Any, gate: EntropyGate, **create_kwargs: Any) -> EntropyGateRunnable:
        """Reuse a ``ChatOpenAI``'s client, model, max_tokens and temperature."""
        names = ("max_tokens", "temperature")
        settings = {name: getattr(llm, name) for name in names if getattr(llm, name, None) is not None}
        return cls(gate, client=llm.root_client, model=llm.model_name, **{**settings, **create_kwargs})

    def _gate(self, value: LanguageModelInput) -> AIMessage:
        given = value.to_messages() if isinstance(value, PromptValue) else value
        converted = convert_to_openai_messages(given)
        messages = [converted] if isinstance(converted, dict) else list(converted)
        result = self.gate.run(self.client, model=self.model, messages=messages, **self.create_kwargs)
        usage = result.first.usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        return AIMessage(
            content=result.text,
            response_metadata={"entropy_gate": result.to_dict(), "model_name": self.model},
            usage_metadata={
                "input_tokens": prompt,
                "output_tokens": result.tokens_used,
                "total_tokens": prompt + result.tokens_used,
            },
        )

    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AIMessage:
        return self._call_with_config(self._gate, input, config, run_type="llm")
