"""EntropyExitMiddleware: early exit on every model call of a ``create_agent`` agent loop."""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Annotated, Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain.agents.middleware.types import ExtendedModelResponse
from langchain_core.messages import AIMessage
from langgraph.types import Command
from typing_extensions import NotRequired

from ..core.savings import SavingsLedger, SavingsReport
from ..engine import REPORT_KEY
from ..options import ExitOptions
from .chat_models import ChatEntropyExit

STATE_KEY = REPORT_KEY
"""Agent state key (and result key) holding one report per model call."""


class EntropyExitState(AgentState):
    """Agent state with the per-step exit reports of this run (appended, never overwritten)."""

    entropy_exit: NotRequired[Annotated[list[dict[str, Any]], operator.add]]


class EntropyExitMiddleware(AgentMiddleware[EntropyExitState, Any]):
    """Wraps each model call of the agent in ``ChatEntropyExit`` and keeps the run's ledger.

    Every step's report (plain data, with ``"step"``, the model call's index in the run) is
    appended to ``result["entropy_exit"]``, and is on its AIMessage's ``response_metadata``;
    ``middleware.ledger`` (the options' ledger, else a new one) collects every report of every run.

    Args:
        policy: the exit rule (or ``options=ExitOptions(...)``; its other fields may be given
            here too: ``force_answer``, ``forcing``, ``probes``, ``on_token``, ``ledger``).
        logprobs_kwargs: as for ``ChatEntropyExit``.

    Example (README "Use it", block 5)::

        agent = create_agent(model=ChatOpenAI(...), tools=[...], middleware=[EntropyExitMiddleware(policy)])
        result = agent.invoke({"messages": [{"role": "user", "content": "..."}]})
        EntropyExitMiddleware.summary(result)  # steps, exits, tokens generated and saved
    """

    state_schema = EntropyExitState

    def __init__(
        self,
        policy: Any = None,
        *,
        options: ExitOptions | None = None,
        logprobs_kwargs: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__()
        options = ExitOptions.build(options, "EntropyExitMiddleware", policy=policy, **fields)
        self.ledger: SavingsLedger = SavingsLedger() if options.ledger is None else options.ledger
        self.options = replace(options, ledger=self.ledger)
        self.logprobs_kwargs = logprobs_kwargs

    def _wrapped(self, request: ModelRequest) -> ModelRequest:
        if isinstance(request.model, ChatEntropyExit):
            return request
        wrapped = ChatEntropyExit(
            model=request.model, options=self.options, logprobs_kwargs=self.logprobs_kwargs
        )
        return request.override(model=wrapped)

    def _with_reports(self, request: ModelRequest, response: Any) -> Any:
        messages = response.result if isinstance(response, ModelResponse) else [response]
        state: Mapping[str, Any] = request.state or {}
        step = len(state.get(STATE_KEY) or [])
        found = [m.response_metadata.get(REPORT_KEY) for m in messages if isinstance(m, AIMessage)]
        reports = [{"step": step + i, **report} for i, report in enumerate(r for r in found if r is not None)]
        if not reports:
            return response
        if isinstance(response, AIMessage):
            response = ModelResponse(result=[response])
        return ExtendedModelResponse(model_response=response, command=Command(update={STATE_KEY: reports}))

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        return self._with_reports(request, handler(self._wrapped(request)))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> Any:
        return self._with_reports(request, await handler(self._wrapped(request)))

    @staticmethod
    def summary(result: Mapping[str, Any]) -> dict[str, Any]:
        """Totals over an agent result's steps (``SavingsLedger.summary``: tokens generated and
        saved, exits, probes...), with ``steps`` and the tokens ``saved_per_step``."""
        steps = list(result.get(STATE_KEY) or [])
        ledger = SavingsLedger([SavingsReport.from_dict(step) for step in steps])
        saved = [s.get("tokens_saved_vs_budget") or 0 for s in steps]
        return {"steps": len(steps), **ledger.summary(), "saved_per_step": saved}
