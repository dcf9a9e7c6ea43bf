"""One monitored LlamaIndex call (``Call``): requests, responses, forcing, the final response.

The generators that drive a ``Call`` are in ``_stream``.
"""

from __future__ import annotations

from typing import Any, Literal

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    MessageRole,
)

from ..core.savings import SavingsReport
from ..errors import is_logprobs_refusal
from ..forcing import AnswerForcing, ForcedAnswer
from ..session import ExitSession
from ..tokencount import count_message_tokens, count_tokens
from ._responses import REPORT_KEY, parts_of, text_of, to_llama_logprobs, with_text
from .closing import ResponseCapture

Mode = Literal["chat", "completion"]
_NO_FORWARD = ("tools", "tool_choice", "parallel_tool_calls", "stop", "max_tokens")


def is_openai_based(llm: Any) -> bool:
    """A llama-index-llms-openai LLM (OpenAI, OpenAILike, AzureOpenAI...): its fields take logprobs."""
    fields = getattr(type(llm), "model_fields", {})
    return "logprobs" in fields and "top_logprobs" in fields and hasattr(llm, "_get_model_kwargs")


class Call:
    """The state of one call; ``owner`` is the EntropyExitLLM."""

    def __init__(self, owner: Any, mode: Mode, payload: Any, kwargs: dict[str, Any], formatted: bool) -> None:
        self.owner = owner
        self.mode = mode
        self.payload = payload  # messages (chat) or prompt (completion)
        self.kwargs = dict(kwargs)
        self.formatted = formatted
        inner = owner.llm
        self.openai_based = is_openai_based(inner)
        self.inner = self._with_logprobs(inner)
        self.forcing: AnswerForcing = owner.forcing
        max_tokens = self.kwargs.get("max_tokens", getattr(inner, "max_tokens", None))
        self.session = ExitSession(
            owner.policy,
            max_tokens=int(max_tokens) if isinstance(max_tokens, int) else None,
            model=getattr(inner.metadata, "model_name", None),
        )
        self.capture = ResponseCapture()
        self.last: Any = None
        self.base_text = ""
        self.forced: ForcedAnswer | None = None
        self.forced_tokens = 0
        self.forcing_usage: dict[str, Any] | None = None

    # -- requests ---------------------------------------------------------------------------

    def _with_logprobs(self, inner: Any) -> Any:
        """The inner LLM asked for logprobs through its own fields (a shallow copy: same clients)."""
        if not self.openai_based:
            return inner
        update: dict[str, Any] = {}
        if not (inner.logprobs and inner.top_logprobs):
            update = {"logprobs": True, "top_logprobs": self.owner.policy.top_k}
        if "stream_options" not in self.kwargs and "stream_options" not in inner.additional_kwargs:
            self.kwargs["stream_options"] = {"include_usage": True}
        return inner.model_copy(update=update) if update else inner

    def open(self) -> Any:
        if self.mode == "chat":
            return self.inner.stream_chat(self.payload, **self.kwargs)
        return self.inner.stream_complete(self.payload, formatted=self.formatted, **self.kwargs)

    async def aopen(self) -> Any:
        if self.mode == "chat":
            return await self.inner.astream_chat(self.payload, **self.kwargs)
        return await self.inner.astream_complete(self.payload, formatted=self.formatted, **self.kwargs)

    def refused(self, error: BaseException) -> bool:
        """True to retry without logprobs after ``error``; raises when logprobs were refused."""
        if not (self.openai_based and is_logprobs_refusal(error)):
            return False
        self.session.refuse_logprobs(error)
        self.inner = self.owner.llm.model_copy(update={"logprobs": False})
        return True

    def wants_forcing(self) -> bool:
        force = self.owner.force_answer
        if not self.session.should_stop or force is False:
            return False
        return force is True or self.session.exited_in_reasoning

    def _forcing_setup(self) -> tuple[Any, str, Any, dict[str, Any]]:
        """(llm, kind, payload, kwargs) of the short request that asks for the final answer."""
        inner, session, forcing = self.owner.llm, self.session, self.forcing
        kwargs: dict[str, Any] = {k: v for k, v in self.kwargs.items() if k not in _NO_FORWARD}
        if self.openai_based:
            inner = inner.model_copy(
                update={"max_tokens": forcing.max_tokens, "logprobs": True, "top_logprobs": 1}
            )
            if forcing.stop:
                kwargs["stop"] = list(forcing.stop)
        if self.mode == "completion" and not inner.metadata.is_chat_model:
            prompt = self.payload if self.formatted else inner.completion_to_prompt(self.payload)
            self._expect_forced(prefix="")
            return inner, "completion", forcing.completion_prompt(prompt, session.text), kwargs
        messages = (
            self.payload
            if self.mode == "chat"
            else [ChatMessage(role=MessageRole.USER, content=self.payload)]
        )
        history, extra, prefix = forcing.chat_request(
            list(messages),  # type: ignore[arg-type]
            reasoning=session.reasoning,
            text=session.text,
            inline_think=session.inline_think,
            base_url=getattr(inner, "api_base", None),
        )
        history = [m if isinstance(m, ChatMessage) else ChatMessage(**m) for m in history]  # type: ignore[misc]
        if extra and self.openai_based:
            kwargs["extra_body"] = {**(kwargs.get("extra_body") or {}), **extra}
        self._expect_forced(prefix=prefix)
        return inner, "chat", history, kwargs

    def _expect_forced(self, *, prefix: str) -> None:
        self.base_text = text_of(self.last)
        self.forced = ForcedAnswer(self.forcing, prefix=prefix, cut_answer=self.base_text)

    def open_forcing(self) -> Any:
        llm, kind, payload, kwargs = self._forcing_setup()
        if kind == "chat":
            return llm.stream_chat(payload, **kwargs)
        return llm.stream_complete(payload, formatted=True, **kwargs)

    async def aopen_forcing(self) -> Any:
        llm, kind, payload, kwargs = self._forcing_setup()
        if kind == "chat":
            return await llm.astream_chat(payload, **kwargs)
        return await llm.astream_complete(payload, formatted=True, **kwargs)

    # -- responses --------------------------------------------------------------------------

    def handle(self, response: Any) -> Any:
        self.session.feed(parts_of(response))
        self.last = response
        return response

    def handle_forced(self, response: Any) -> Any | None:
        parts = parts_of(response)
        self.forced_tokens += len(parts.tokens)
        if parts.usage is not None:
            self.forcing_usage = parts.usage
        assert self.forced is not None
        return self._forced_piece(self.forced.feed(parts.content))

    def _forced_piece(self, piece: str) -> Any | None:
        if not piece or self.forced is None:
            return None
        return self._response(self.base_text + self.forced.text, piece)

    def finish_forcing(self) -> Any | None:
        return self._forced_piece(self.forced.finish()) if self.forced is not None else None

    def _response(self, text: str, delta: str, **extra: Any) -> Any:
        if self.mode == "chat":
            message = self.last.message if self.last is not None else ChatMessage(role=MessageRole.ASSISTANT)
            return ChatResponse(message=with_text(message, text), delta=delta, **extra)
        return CompletionResponse(text=text, delta=delta, **extra)

    def report(self) -> SavingsReport:
        session = self.session
        session.close_text()
        forced_tokens = self.forced_tokens
        if self.forcing_usage and self.forcing_usage.get("completion_tokens") is not None:
            forced_tokens = int(self.forcing_usage["completion_tokens"])
        prompt_tokens, estimated = self._prompt_tokens()
        return session.report(
            forced_answer_tokens=forced_tokens, prompt_tokens=prompt_tokens, prompt_tokens_estimated=estimated
        )

    def _prompt_tokens(self) -> tuple[int | None, bool]:
        usage = self.session.usage
        if usage and usage.get("prompt_tokens") is not None:
            return int(usage["prompt_tokens"]), False
        model = self.session.model
        if self.mode == "chat":
            messages = [{"role": str(m.role.value), "content": m.content or ""} for m in self.payload]
            return count_message_tokens(messages, model).tokens, True
        return count_tokens(str(self.payload), model).tokens, True

    def final(self) -> Any:
        """The last response: whole text, per-token logprobs, usage and the report."""
        report = self.report()
        if self.owner.ledger is not None:
            self.owner.ledger.record(report)
        self.owner._last_report = report
        last = self.last
        extra = dict(getattr(last, "additional_kwargs", None) or {})
        extra.pop("thinking_delta", None)
        usage = self.session.usage_block(report)
        extra.update(
            {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens") if k in usage}
        )
        extra[REPORT_KEY] = report.to_dict()
        forced = self.forced.text if self.forced is not None else ""
        text = self.base_text + forced if forced else text_of(last)
        return self._response(
            text,
            "",
            raw=getattr(last, "raw", None),
            logprobs=to_llama_logprobs(self.session.tokens),
            additional_kwargs=extra,
        )
