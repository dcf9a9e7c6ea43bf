"""LangChain objects in and out of the engine: requests, chunks, forcing messages, the last chunk.

``ChatEntropyExit`` only moves these between the inner model's stream and a ``MonitoredCall``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk

from ..core.policy import ExitPolicy
from ..core.probes import ProbeRule
from ..core.savings import SavingsLedger
from ..core.tokens import Phase
from ..engine import ENTROPY_EXIT, ExitResult, ForcingPlan, MonitoredCall, TextDelta
from ..forcing import AnswerForcing
from ._inner import openai_base
from .callbacks import REPORT_KEY, openai_dicts, parts_from_chunk

WRAPPER_HINT = (
    "ChatEntropyExit asked the inner model for them with its logprobs_kwargs "
    "(default logprobs=True, top_logprobs=policy.top_k) and it ignored them: use a model class "
    "that supports logprobs (ChatOpenAI against a server that returns them), or pass the "
    "arguments your model needs as logprobs_kwargs"
)
_NOT_FORWARDED = ("max_tokens", "max_completion_tokens", "n", "stop", "tool_choice", "stream_options")


@dataclasses.dataclass
class Monitored:
    """One ``ChatEntropyExit`` call: the engine, the inner request, what the last chunk needs."""

    call: MonitoredCall
    request: dict[str, Any]
    logprob_keys: list[str]
    openai: bool
    model_name: str
    saw_model_name: bool = False

    def refused(self, error: BaseException, inner: BaseChatModel) -> bool:
        """A refusal the engine answers with a retry: the request minus the logprob keys, plus
        its ``extra_body`` (``n_probs`` for llama.cpp with tools)."""
        retry = self.call.refused(error)
        if retry is None:
            return False
        for key in self.logprob_keys:
            self.request.pop(key, None)
        existing = self.request.get("extra_body", getattr(inner, "extra_body", None))
        extra = retry.merged_extra_body(existing)
        if extra is not None or "extra_body" in self.request:
            self.request["extra_body"] = extra
        return True


def monitored(
    inner: BaseChatModel,
    policy: ExitPolicy,
    messages: list[BaseMessage],
    kwargs: dict[str, Any],
    *,
    logprobs_kwargs: dict[str, Any] | None,
    force_answer: bool | None,
    forcing: AnswerForcing,
    ledger: SavingsLedger | None,
    probes: ProbeRule | None = None,
) -> Monitored:
    is_openai = openai_base(inner) is not None
    request = dict(kwargs)
    if logprobs_kwargs is None:
        logprobs_kwargs = {"logprobs": True}
        if getattr(inner, "top_logprobs", None) is None:
            logprobs_kwargs["top_logprobs"] = policy.top_k
    keys = [key for key in logprobs_kwargs if key not in request]
    for key, value in logprobs_kwargs.items():
        request.setdefault(key, value)
    if is_openai:
        request.setdefault("stream_usage", True)
    if "response_format" in request:  # a cut JSON document would not parse: monitor only
        policy = dataclasses.replace(policy, threshold=0.0)
    budget = request.get(
        "max_tokens", request.get("max_completion_tokens", getattr(inner, "max_tokens", None))
    )
    name = str(
        request.get("model") or getattr(inner, "model_name", None) or getattr(inner, "model", "") or ""
    )
    call = MonitoredCall(
        policy,
        messages=openai_dicts(messages),
        model=name or None,
        max_tokens=budget if isinstance(budget, int) else None,
        force_answer=force_answer,
        forcing=forcing if is_openai else dataclasses.replace(forcing, style="followup"),
        ledger=ledger,
        base_url=str(getattr(inner, "openai_api_base", "") or "") if is_openai else "",
        terminal_required=is_openai,
        reasoning_field=False,  # ChatOpenAI does not send reasoning_content back
        logprobs_hint=WRAPPER_HINT,
        probes=probes,
    )
    return Monitored(call, request, keys, is_openai, name)


def passed_on(run: Monitored, chunk: ChatGenerationChunk) -> ChatGenerationChunk:
    """Feed an inner chunk; return it with the engine's text and its usage held for the end.

    The content is the answer only: reasoning (a separate field or ``<think>`` tags, even split
    over chunks) goes to ``additional_kwargs["reasoning_content"]``.
    """
    deltas = run.call.feed(parts_from_chunk(chunk))
    message = chunk.message
    info = chunk.generation_info or {}
    run.saw_model_name |= bool(info.get("model_name") or message.response_metadata.get("model_name"))
    update: dict[str, Any] = {}
    if isinstance(message.content, str):
        update["content"] = "".join(d.text for d in deltas if d.phase is Phase.ANSWER)
    reasoning = "".join(d.text for d in deltas if d.phase is Phase.REASONING)
    extra = {
        k: v for k, v in message.additional_kwargs.items() if k not in ("reasoning_content", "reasoning")
    }
    if reasoning:
        extra["reasoning_content"] = reasoning
    update["additional_kwargs"] = extra
    if isinstance(message, AIMessageChunk) and message.usage_metadata:
        update["usage_metadata"] = None
    return ChatGenerationChunk(
        message=message.model_copy(update=update), generation_info=chunk.generation_info
    )


def delta_chunks(deltas: list[TextDelta]) -> list[ChatGenerationChunk]:
    """Chunks of text the engine released (held-back text, the forced answer)."""
    chunks = []
    for delta in deltas:
        if delta.phase is Phase.REASONING:
            message = AIMessageChunk(content="", additional_kwargs={"reasoning_content": delta.text})
        else:
            message = AIMessageChunk(content=delta.text)
        chunks.append(ChatGenerationChunk(message=message))
    return chunks


def short_call(
    run: Monitored, inner: BaseChatModel, messages: list[BaseMessage], plan: ForcingPlan
) -> tuple[list[BaseMessage], dict[str, Any]]:
    """Messages and kwargs of a forcing plan's request (the final answer, or a probe)."""
    history = list(messages)
    for item in plan.messages:
        if item["role"] == "user":
            history.append(HumanMessage(item["content"]))
        else:
            thought = {"reasoning_content": item["reasoning_content"]} if "reasoning_content" in item else {}
            history.append(AIMessage(item["content"], additional_kwargs=thought))
    kwargs = {k: v for k, v in run.request.items() if k not in _NOT_FORWARDED}
    kwargs.update(max_tokens=plan.max_tokens, logprobs=True, top_logprobs=1)
    if plan.extra_body and run.openai:
        kwargs["extra_body"] = {
            **(getattr(inner, "extra_body", None) or {}),
            **(kwargs.get("extra_body") or {}),
            **plan.extra_body,
        }
    return history, kwargs


def last_chunk(run: Monitored, result: ExitResult) -> ChatGenerationChunk:
    """The last chunk: usage, the report (plain data, once), the exit's finish reason."""
    metadata: dict[str, Any] = {REPORT_KEY: result.report.to_dict()}
    if result.finish_reason == ENTROPY_EXIT:
        metadata["finish_reason"] = ENTROPY_EXIT  # a cut stream sent none of its own
    if not run.saw_model_name and run.model_name:
        metadata["model_name"] = run.model_name
    usage = result.usage
    message = AIMessageChunk(
        content="",
        response_metadata=metadata,
        usage_metadata=cast(
            UsageMetadata,
            {
                "input_tokens": int(usage["prompt_tokens"]),
                "output_tokens": int(usage["completion_tokens"]),
                "total_tokens": int(usage["total_tokens"]),
            },
        ),
        chunk_position="last",
    )
    return ChatGenerationChunk(message=message)
