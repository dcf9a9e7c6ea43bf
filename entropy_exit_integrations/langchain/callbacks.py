"""EntropyExitCallbackHandler: watch (and optionally abort) any LangChain chat model run."""

from __future__ import annotations

import threading
from typing import Any, Literal
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.outputs import LLMResult

from ..core.policy import ExitPolicy
from ..core.savings import SavingsLedger, SavingsReport
from ..engine import REPORT_KEY, ExitResult, MonitoredCall
from ..errors import (
    EntropyExit,
    EntropyExitError,
    LogprobsUnavailableError,
    NoTokenEventsError,
    is_logprobs_refusal,
    provider_message,
)
from ..options import ExitOptions
from ..providers.frameworks import parse_langchain_chunk

OnExit = Literal["raise", "record"]
# The invocation parameters the engine needs: a required tool call is never cut, n > 1 is refused
_REQUEST_FIELDS = ("tools", "tool_choice", "functions", "response_format", "n")

LANGCHAIN_HINT = (
    "with LangChain: ChatOpenAI(logprobs=True, top_logprobs=20) or model.bind(logprobs=True, top_logprobs=20)"
)


def openai_dicts(messages: list[Any]) -> list[dict[str, Any]]:
    """LangChain messages as OpenAI dicts (for the prompt-token estimate and forcing)."""
    try:
        from langchain_core.messages.utils import convert_to_openai_messages  # 120 ms: when needed

        return list(convert_to_openai_messages(messages))
    except Exception:  # noqa: BLE001 - exotic content: a rough count is all that is needed
        return [{"role": "user", "content": getattr(m, "text", "")} for m in messages]


class _Handler:
    """What the sync and async handlers share: one ``MonitoredCall`` per run, results, reports;
    the prompt is counted when a run starts (async: off the event loop), so no end waits for it.

    Attributes:
        results: result (text, reasoning, tokens, report) of every finished run, by ``run_id``.
        last_result: the most recently finished run's result (use ``results`` when runs overlap).
    """

    raise_error = True
    run_inline = True

    def __init__(
        self,
        policy: ExitPolicy | None = None,
        on_exit: OnExit = "raise",
        ledger: SavingsLedger | None = None,
        *,
        options: ExitOptions | None = None,
        **fields: Any,
    ) -> None:
        super().__init__()
        if on_exit not in ("raise", "record"):
            raise ValueError(f"on_exit must be 'raise' or 'record', got {on_exit!r}")
        self.options = ExitOptions.build(options, type(self).__name__, policy=policy, ledger=ledger, **fields)
        self.policy: ExitPolicy = self.options.policy
        self.on_exit: OnExit = on_exit
        self.ledger: SavingsLedger | None = self.options.ledger
        self.results: dict[UUID, ExitResult] = {}
        self.last_result: ExitResult | None = None
        self._runs: dict[UUID, MonitoredCall] = {}
        self._lock = threading.Lock()

    @property
    def reports(self) -> dict[UUID, SavingsReport]:
        """Report of every finished run, by ``run_id``."""
        return {run_id: result.report for run_id, result in self.results.items()}

    def _start(
        self, run_id: UUID, kwargs: dict[str, Any], messages: Any = None, prompt: str | None = None
    ) -> MonitoredCall:
        params = kwargs.get("invocation_params") or {}
        budget = params.get("max_tokens") or params.get("max_completion_tokens")
        call = MonitoredCall(
            self.options,
            fields={key: params[key] for key in _REQUEST_FIELDS if key in params},
            api="chat" if prompt is None else "completions",
            messages=openai_dicts(messages) if messages else None,
            prompt=prompt,
            model=params.get("model_name") or params.get("model"),
            max_tokens=int(budget) if budget else None,
            # OpenAI-compatible models always end a stream with a finish reason; others may not.
            terminal_required="openai" in str(params.get("_type", "")),
            logprobs_hint=LANGCHAIN_HINT,
        )
        with self._lock:
            self._runs[run_id] = call
        return call

    def _new_token(self, run_id: UUID, chunk: Any) -> None:
        """Feed a token event; raise ``EntropyExit`` when it is time (``on_exit="raise"``)."""
        call = self._runs.get(run_id)
        if call is None or chunk is None:
            return
        call.feed(parse_langchain_chunk(chunk))
        if self.on_exit == "raise" and call.should_stop:
            call.end_main(cut=True)  # raising unwinds the model's HTTP stream: the server stops
            with self._lock:
                self._runs.pop(run_id, None)  # finished here: its end or error changes nothing
            result = self._keep(run_id, call.finish())
            raise EntropyExit(result.text, result.report, reasoning=result.reasoning, partial=result)

    def _end(self, run_id: UUID, response: LLMResult) -> None:
        """The run ended normally (unless it was finished at an exit): its report, everywhere."""
        with self._lock:
            call = self._runs.pop(run_id, None)
        if call is None:
            return
        if call.chunks_seen == 0 and any(g.text for gens in response.generations for g in gens):
            raise NoTokenEventsError(
                "EntropyExitCallbackHandler saw no streamed tokens for this run, so it could not "
                "measure anything: the model answered without streaming. Use a model that "
                "implements streaming, and force it with ChatOpenAI(streaming=True) or "
                "model.bind(stream=True); do not set disable_streaming=True"
            )
        data = self._keep(run_id, call.finish()).report.to_dict()
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                if message is not None:
                    message.response_metadata.setdefault(REPORT_KEY, data)
                else:
                    generation.generation_info = {**(generation.generation_info or {}), REPORT_KEY: data}

    def _error(self, run_id: UUID, error: BaseException) -> None:
        """The run failed: a logprob refusal raises ``LogprobsUnavailableError``; a stream broken
        after its first token, or an HTTP 200 stream with no chunk at all (LangChain: "No
        generations found in stream"), ``StreamInterrupted``, as in every integration."""
        with self._lock:
            call = self._runs.pop(run_id, None)
        if call is None or isinstance(error, EntropyExitError) or not isinstance(error, Exception):
            return
        if not call.chunks_seen and is_logprobs_refusal(error):
            raise LogprobsUnavailableError.refused(
                provider_message(error), top_k=self.policy.top_k
            ) from error
        if call.chunks_seen or (isinstance(error, ValueError) and "no generations" in str(error).lower()):
            interrupted = call.interrupted(error)
            self._keep(run_id, interrupted.partial)
            raise interrupted from error

    def _keep(self, run_id: UUID, result: ExitResult) -> ExitResult:
        with self._lock:
            self.results[run_id] = result
            self.last_result = result
        return result


class EntropyExitCallbackHandler(_Handler, BaseCallbackHandler):
    """Monitors every chat-model run it sees; raises ``EntropyExit`` on exit or only reports.

    Args:
        policy: the exit rule (or ``options=ExitOptions(...)``; a handler only watches: it never
            forces an answer or sends probes).
        on_exit: ``"raise"`` aborts the generation with ``EntropyExit`` (the partial text and the
            ``SavingsReport``); ``"record"`` lets it finish and only reports.
        ledger: records the report of every run.

    Each report is on ``handler.reports[run_id]``, in the ledger, and (for runs that finish) in
    the message's ``response_metadata["entropy_exit"]``. The model must stream and send logprobs
    (else ``NoTokenEventsError``, ``LogprobsUnavailableError``); README "Use it", block 4::

        llm = ChatOpenAI(base_url=url, api_key="none", streaming=True, logprobs=True, top_logprobs=20)
        handler = EntropyExitCallbackHandler(ExitPolicy(threshold=1.0), on_exit="raise")
        llm.invoke("Why is the sky blue?", config={"callbacks": [handler]})  # or EntropyExit
    """

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._start(run_id, kwargs, messages=messages[0] if messages else None).count_prompt()

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._start(run_id, kwargs, prompt=prompts[0] if prompts else "").count_prompt()

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        self._new_token(run_id, chunk)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, response)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._error(run_id, error)


class AsyncEntropyExitCallbackHandler(_Handler, AsyncCallbackHandler):
    """Async twin of ``EntropyExitCallbackHandler`` (same arguments, same behaviour)."""

    async def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        await self._start(run_id, kwargs, messages=messages[0] if messages else None).acount_prompt()

    async def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, **kwargs: Any) -> None:
        await self._start(run_id, kwargs, prompt=prompts[0] if prompts else "").acount_prompt()

    async def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        self._new_token(run_id, chunk)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, response)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._error(run_id, error)
