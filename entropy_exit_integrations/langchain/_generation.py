"""The I/O-free part of one ``ChatEntropyExit`` call: request, chunks in, chunks out, report.

``ChatEntropyExit._stream``/``_astream`` only iterate the inner model's stream and act on
``should_stop``; everything else (the logprobs request, the session, answer forcing, the final
chunk with usage and report) lives here, shared by the sync and async paths.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.outputs import ChatGenerationChunk

from ..core.savings import SavingsLedger, SavingsReport
from ..forcing import AnswerForcing, ForcedAnswer
from ..session import ExitSession
from ..tokencount import count_message_tokens
from ._inner import openai_base
from .callbacks import REPORT_KEY, feed_with_hint, parts_from_chunk

ENTROPY_EXIT = "entropy_exit"
WRAPPER_HINT = (
    "ChatEntropyExit asked the inner model for them with its logprobs_kwargs "
    "(default logprobs=True, top_logprobs=policy.top_k) and it ignored them: use a model class "
    "that supports logprobs (ChatOpenAI against a server that returns them), or pass the "
    "arguments your model needs as logprobs_kwargs"
)


class Generation:
    """One monitored call of the inner model (and, after an exit, its forcing request)."""

    def __init__(
        self,
        inner: BaseChatModel,
        policy: Any,
        messages: list[BaseMessage],
        kwargs: dict[str, Any],
        *,
        logprobs_kwargs: dict[str, Any] | None,
        force_answer: bool | None,
        forcing: AnswerForcing,
        ledger: SavingsLedger | None,
    ) -> None:
        self.inner = inner
        self.messages = messages
        self.openai = openai_base(inner) is not None
        self.base_url = str(getattr(inner, "openai_api_base", "") or "") if self.openai else ""
        request = dict(kwargs)
        if logprobs_kwargs is None:
            logprobs_kwargs = {"logprobs": True}
            if getattr(inner, "top_logprobs", None) is None:
                logprobs_kwargs["top_logprobs"] = policy.top_k
        self.logprob_keys = [key for key in logprobs_kwargs if key not in request]
        for key, value in logprobs_kwargs.items():
            request.setdefault(key, value)
        if self.openai:
            request.setdefault("stream_usage", True)
        self.request = request
        self.force_answer = force_answer
        self.forcing = forcing if self.openai else dataclasses.replace(forcing, style="followup")
        self.ledger = ledger
        budget = request.get(
            "max_tokens", request.get("max_completion_tokens", getattr(inner, "max_tokens", None))
        )
        self.model_name = str(
            request.get("model") or getattr(inner, "model_name", None) or getattr(inner, "model", "") or ""
        )
        if "response_format" in request:  # a cut JSON document would not parse: monitor only
            policy = dataclasses.replace(policy, threshold=0.0)
        self.session = ExitSession(
            policy, max_tokens=budget if isinstance(budget, int) else None, model=self.model_name or None
        )
        self.inner_usage: dict[str, Any] | None = None
        self.saw_model_name = False
        self.forced: ForcedAnswer | None = None
        self.forced_tokens = 0
        self.forced_usage: dict[str, Any] | None = None
        self.report: SavingsReport | None = None

    @property
    def should_stop(self) -> bool:
        return self.session.should_stop

    def refused(self, error: BaseException) -> None:
        """The provider refused logprobs: raise, or (``on_missing="pass_through"``) drop them."""
        self.session.refuse_logprobs(error)
        for key in self.logprob_keys:
            self.request.pop(key, None)

    def handle(self, chunk: ChatGenerationChunk) -> ChatGenerationChunk:
        """Account for one inner chunk; returns it with its usage held back for the last chunk."""
        feed_with_hint(self.session, parts_from_chunk(chunk), WRAPPER_HINT)
        message = chunk.message
        self.saw_model_name |= bool(
            (chunk.generation_info or {}).get("model_name") or message.response_metadata.get("model_name")
        )
        if isinstance(message, AIMessageChunk) and message.usage_metadata:
            self.inner_usage = dict(message.usage_metadata)
            message = message.model_copy(update={"usage_metadata": None})
        return ChatGenerationChunk(message=message, generation_info=chunk.generation_info)

    def wants_forcing(self) -> bool:
        if not self.should_stop or self.force_answer is False:
            return False
        return self.force_answer is True or self.session.exited_in_reasoning

    def forcing_call(self) -> tuple[list[BaseMessage], dict[str, Any]]:
        """Messages and kwargs of the short request that asks for the final answer."""
        session = self.session
        inline = session.inline_think or (
            self.openai and bool(session.reasoning)
        )  # ChatOpenAI drops the field
        tail, extra, prefix = self.forcing.chat_request(
            [], reasoning=session.reasoning, text=session.text, inline_think=inline, base_url=self.base_url
        )
        messages = list(self.messages)
        for item in tail:
            if item["role"] == "user":
                messages.append(HumanMessage(item["content"]))
            else:
                thought = (
                    {"reasoning_content": item["reasoning_content"]} if "reasoning_content" in item else {}
                )
                messages.append(AIMessage(item["content"], additional_kwargs=thought))
        drop = ("max_tokens", "max_completion_tokens", "n", "stop", "tool_choice", "stream_options")
        kwargs = {k: v for k, v in self.request.items() if k not in drop}
        kwargs.update(max_tokens=self.forcing.max_tokens, logprobs=True, top_logprobs=1)
        if extra and self.openai:
            kwargs["extra_body"] = {
                **(getattr(self.inner, "extra_body", None) or {}),
                **(kwargs.get("extra_body") or {}),
                **extra,
            }
        self.forced = ForcedAnswer(self.forcing, prefix=prefix, cut_answer=self.session.text)
        return messages, kwargs

    def handle_forced(self, chunk: ChatGenerationChunk) -> ChatGenerationChunk | None:
        """Only the text of a forcing chunk goes on (its metadata would clash with the first call's)."""
        parts = parts_from_chunk(chunk)
        self.forced_tokens += len(parts.tokens)
        if parts.usage is not None:
            self.forced_usage = parts.usage
        assert self.forced is not None
        return self._forced_chunk(self.forced.feed(parts.content))

    @staticmethod
    def _forced_chunk(text: str) -> ChatGenerationChunk | None:
        return ChatGenerationChunk(message=AIMessageChunk(content=text)) if text else None

    def final_chunk(self) -> ChatGenerationChunk:
        """The last chunk: usage, the report (plain data, once), the exit's finish reason."""
        session = self.session
        cut = self.should_stop  # checked before close_text, which may still move the decision
        tail = self._forced_chunk(self.forced.finish()) if self.forced is not None else None
        session.close_text()
        if self.forced is not None and self.forced.text:
            session.add_forced_answer(self.forced.text)
        forced_tokens = self.forced_tokens
        if self.forced_usage and self.forced_usage.get("completion_tokens") is not None:
            forced_tokens = int(self.forced_usage["completion_tokens"])
        prompt, estimated = self._prompt_tokens()
        self.report = session.report(
            forced_answer_tokens=forced_tokens, prompt_tokens=prompt, prompt_tokens_estimated=estimated
        )
        if self.report.exited and not cut:  # confident only while a tool call streamed: nothing saved
            self.report = _no_exit(self.report, session.finish_reason or "stop")
        if self.ledger is not None:
            self.ledger.record(self.report)
        usage = session.usage_block(self.report)
        metadata: dict[str, Any] = {REPORT_KEY: self.report.to_dict()}
        if cut and session.finish_reason is None:
            metadata["finish_reason"] = ENTROPY_EXIT
        if not self.saw_model_name and self.model_name:
            metadata["model_name"] = self.model_name
        message = AIMessageChunk(
            content=tail.message.content if tail is not None else "",
            response_metadata=metadata,
            usage_metadata=cast(
                UsageMetadata,
                {
                    "input_tokens": int(usage.get("prompt_tokens") or 0),
                    "output_tokens": int(usage.get("completion_tokens") or 0),
                    "total_tokens": int(usage.get("total_tokens") or 0),
                },
            ),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message)

    def _prompt_tokens(self) -> tuple[int | None, bool]:
        if self.inner_usage is not None:
            return int(self.inner_usage.get("input_tokens") or 0), False
        try:
            dicts = convert_to_openai_messages(self.messages)
        except Exception:  # noqa: BLE001 - exotic content: a rough count is all that is needed
            dicts = [{"content": m.text} for m in self.messages]
        return count_message_tokens(list(dicts), self.model_name or None).tokens, True


def _no_exit(report: SavingsReport, reason: str) -> SavingsReport:
    """The report of a stream that ran to its end although the policy would have stopped it."""
    return dataclasses.replace(
        report,
        exited=False,
        exit_reason=reason,
        exit_token_index=None,
        tokens_saved_vs_budget=None if report.tokens_saved_vs_budget is None else 0,
        tokens_saved_vs_expected=None if report.tokens_saved_vs_expected is None else 0.0,
        saved_fraction=None if report.saved_fraction is None else 0.0,
    )
