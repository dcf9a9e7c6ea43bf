"""Forcing a short final answer after an early exit.

After the monitor stops a generation, one small continuation request asks for the answer. The
provider's own way is used where it exists:

* ``"prefix"``: the cut generation goes back as a trailing assistant message ending in an answer
  cue, and the server continues it. llama.cpp's server continues a trailing assistant message by
  itself; vLLM and SGLang need ``continue_final_message=True, add_generation_prompt=False``
  (sent in ``extra_body``; llama.cpp ignores them).
* ``"followup"``: the cut generation as an assistant message, then a user message asking for the
  final answer only. Works everywhere, including api.openai.com, which has no prefill.
* For the legacy Completions API the cue is appended to the prompt text itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ForcingStyle = Literal["auto", "prefix", "followup"]


@dataclass(frozen=True)
class AnswerForcing:
    """How to ask for the final answer after an exit.

    Args:
        style: ``"auto"`` picks ``"followup"`` for api.openai.com and ``"prefix"`` elsewhere.
        max_tokens: budget of the forcing request.
        cue: text that ends the cut generation and starts the answer.
        instruction: the user turn of the ``"followup"`` style.
        stop: stop sequences of the forcing request; a blank line ends a short answer.
    """

    style: ForcingStyle = "auto"
    max_tokens: int = 64
    cue: str = "\n\nFinal answer:"
    instruction: str = "Stop reasoning. Reply with only the final answer."
    stop: tuple[str, ...] = ("\n\n",)

    def resolved_style(self, base_url: str | None) -> Literal["prefix", "followup"]:
        if self.style != "auto":
            return self.style
        return "followup" if base_url and "api.openai.com" in base_url else "prefix"

    def chat_request(
        self,
        messages: list[dict[str, Any]],
        *,
        reasoning: str,
        text: str,
        inline_think: bool,
        base_url: str | None,
        reasoning_format: str | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
        """Messages, extra_body and the assistant prefix of the forcing chat request.

        Reasoning that arrived in a separate field goes back as the message's
        ``reasoning_content`` (the chat templates of reasoning models render it inside their
        thinking tags); reasoning that arrived inside ``<think>`` tags goes back the same way.
        The prefix is what a server may echo back at the start of its answer (llama.cpp does);
        ``EchoStripper`` drops it.
        """
        cut = text
        thought: dict[str, Any] = {}
        if reasoning and inline_think:
            cut = inline_reasoning(reasoning, text, reasoning_format)
        elif reasoning:
            thought = {"reasoning_content": reasoning}
        if self.resolved_style(base_url) == "followup":
            history = [*messages]
            if cut or thought:
                history.append({"role": "assistant", "content": cut, **thought})
            history.append({"role": "user", "content": self.instruction})
            return history, {}, ""
        prefix = f"{cut.rstrip()}{self.cue}" if cut.strip() else self.cue.lstrip()
        history = [*messages, {"role": "assistant", "content": prefix, **thought}]
        extra = {"continue_final_message": True, "add_generation_prompt": False}
        return history, extra, prefix

    def completion_prompt(self, prompt: str, generated: str) -> str:
        return f"{prompt}{generated.rstrip()}{self.cue}"


def inline_reasoning(reasoning: str, text: str, reasoning_format: str | None) -> str:
    """The cut generation with its reasoning inline, in the markers the model itself writes
    (``[THINK]`` for Magistral, harmony channels for GPT-OSS, ``<think>`` otherwise)."""
    if reasoning_format == "mistral":
        return f"[THINK]{reasoning}[/THINK]{text}"
    if reasoning_format == "harmony":
        final = "<|start|>assistant<|channel|>final<|message|>"
        return f"<|channel|>analysis<|message|>{reasoning}<|end|>{final}{text}"
    return f"<think>\n{reasoning}\n</think>\n\n{text}"


class EchoStripper:
    """Drops a server's echo of the assistant prefix from the start of a streamed answer.

    llama.cpp's server starts its continuation of a trailing assistant message by repeating that
    message; other servers do not. Text is held back only while it still matches the prefix.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._held = ""
        self._deciding = bool(prefix)

    def feed(self, text: str) -> str:
        if not self._deciding:
            return text
        self._held += text
        if len(self._held) < len(self._prefix) and self._prefix.startswith(self._held):
            return ""
        self._deciding = False
        held, self._held = self._held, ""
        return held[len(self._prefix) :] if held.startswith(self._prefix) else held

    def flush(self) -> str:
        held, self._held = self._held, ""
        self._deciding = False
        return held


class ForcedAnswer:
    """The streamed forced answer: echo dropped, and the cue kept where the cut answer needs it.

    After a cut *answer* the cue (``"\\n\\nFinal answer:"``) is part of the text the user reads,
    so it goes out with the first piece of the answer; after a cut *reasoning* the answer stands
    alone, so its leading whitespace is dropped. Every integration streams its forced answer
    through one of these.
    """

    def __init__(self, forcing: AnswerForcing, *, prefix: str, cut_answer: str) -> None:
        self.preamble = forcing.cue if cut_answer.strip() else ""
        self._stripper = EchoStripper(prefix)
        self._parts: list[str] = []

    def feed(self, text: str) -> str:
        """Take a streamed delta; return the text to show now."""
        return self._show(self._stripper.feed(text))

    def finish(self) -> str:
        """End of the forcing stream: return the text still held back."""
        return self._show(self._stripper.flush())

    def _show(self, text: str) -> str:
        if self._parts:
            if text:
                self._parts.append(text)
            return text
        text = text if self.preamble else text.lstrip()
        if not text:
            return ""
        self._parts.append(text)
        return self.preamble + text

    @property
    def continuation(self) -> str:
        """What the model wrote after the cue."""
        return "".join(self._parts)

    @property
    def text(self) -> str:
        """What the forced answer adds to the cut text ("" when the model wrote nothing)."""
        return self.preamble + self.continuation if self._parts else ""
