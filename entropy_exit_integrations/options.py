"""ExitOptions: every setting of a monitored call, declared and validated once.

Every integration (the openai helpers, ``ChatEntropyExit``, ``EntropyExitMiddleware``,
``EntropyExitLLM``) takes either ``options=ExitOptions(...)`` or the same fields as keyword
arguments, and validates them when it is built, not at the first call::

    from entropy_exit_integrations import ExitOptions, ExitPolicy, ProbeRule

    options = ExitOptions(
        policy=ExitPolicy(threshold=1.0, min_tokens=8),
        probes=ProbeRule(agree=2),          # optional: stop only when short answers agree
    )
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .core.audit import AuditRule
from .core.monitor import Decision
from .core.policy import ExitPolicy
from .core.probes import ProbeRule
from .core.savings import SavingsLedger
from .core.tokens import TokenLogprob
from .forcing import AnswerForcing
from .providers.reasoning import ReasoningFormat, check_reasoning_format
from .traces import TraceSinkLike, as_sink

OnToken = Callable[[TokenLogprob, Decision], None]
"""Called with every token of the main stream and the monitor's decision after its chunk."""


@dataclass(frozen=True)
class ExitOptions:
    """What a monitored call does: when to stop, what to do after, where reports go.

    Args:
        policy: the exit rule (``ExitPolicy``; ``ExitPolicy.from_calibration`` for a
            calibrated one). Its ``on_missing`` says what happens without logprobs.
        force_answer: after an exit, ask for the final answer: None (default) when the exit cut
            the reasoning phase, True after any exit, False never.
        forcing: how the answer is forced (style, budget, cue, stop).
        probes: answer probes (``ProbeRule``): the stream stops only when consecutive short
            forced answers agree, and the agreed answer is the result. None: no probes.
        ledger: records the report of every call (a ``SavingsLedger``; thread and task safe).
        on_token: called with every token and the decision after its chunk (hot path: keep it
            cheap).
        reasoning_format: where the reasoning is in the stream (``providers.reasoning``):
            ``"auto"`` (default) reads a reasoning field (``reasoning_content``, ``reasoning``,
            ``thinking``) and ``<think>``/``[THINK]``/harmony markers in the content, and takes
            the format of a known model family (``MODEL_FORMATS``: R1 distills, QwQ and
            Qwen3-Thinking open ``<think>`` in their template) from the model's name; name it
            (``"think_open"``, ``"think"``, ``"mistral"``, ``"harmony"``, ``"field"``,
            ``"none"``) when auto cannot know, e.g. from ``detect_reasoning_format(base_url)``.
        audit: sampled audits of exits (``AuditRule(rate=...)``): on that fraction of the exit
            decisions the stream is read to its end instead, and the answer the exit would have
            given is compared with the full one (``SavingsLedger.audit()`` bounds the harm).
        trace_sink: where each monitored call is written in the trace format (``traces``): a
            path (a ``TraceSink``: appends, rotates by size, thread safe) or a callable given
            each record; ``entropy-exit calibrate --traces`` recalibrates from it.
        keep_tokens: keep every token with its top-k candidates on the result and on the
            partial result of a broken stream (``ExitResult.tokens``; LlamaIndex's ``.logprobs``
            on the last response): about 1.5 KB a token at k=20 (LlamaIndex's ``LogProb``
            objects about 12 KB). False keeps memory flat for long streams: the report, the
            text and the entropy summary are still complete. A trace sink always keeps them.
    """

    policy: ExitPolicy
    force_answer: bool | None = None
    forcing: AnswerForcing = field(default_factory=AnswerForcing)
    probes: ProbeRule | None = None
    ledger: SavingsLedger | None = None
    on_token: OnToken | None = None
    reasoning_format: ReasoningFormat = "auto"
    audit: AuditRule | None = None
    trace_sink: TraceSinkLike | str | os.PathLike[str] | None = None
    keep_tokens: bool = True

    def __post_init__(self) -> None:
        _expect(
            "policy", self.policy, ExitPolicy, "ExitPolicy(threshold=...) or ExitPolicy.from_calibration(...)"
        )
        if self.force_answer not in (None, True, False):
            raise TypeError(
                f"ExitOptions: force_answer must be None, True or False, got {self.force_answer!r}"
            )
        _expect("forcing", self.forcing, AnswerForcing, "AnswerForcing(...)")
        if self.probes is not None:
            _expect("probes", self.probes, ProbeRule, "ProbeRule(...) or None")
        if self.ledger is not None:
            _expect("ledger", self.ledger, SavingsLedger, "SavingsLedger() or None")
        if self.on_token is not None and not callable(self.on_token):
            raise TypeError(f"ExitOptions: on_token must be callable, got {type(self.on_token).__name__}")
        check_reasoning_format(self.reasoning_format)  # ValueError listing the formats
        if self.audit is not None:
            _expect("audit", self.audit, AuditRule, "AuditRule(rate=...) or None")
        object.__setattr__(self, "trace_sink", as_sink(self.trace_sink))  # a path: a TraceSink
        if self.keep_tokens not in (True, False):
            raise TypeError(f"ExitOptions: keep_tokens must be True or False, got {self.keep_tokens!r}")

    @classmethod
    def build(cls, options: ExitOptions | None = None, owner: str = "", **values: Any) -> ExitOptions:
        """``options``, or options built from field values (``policy=...``); not both.

        A value of None means "not given" (the field's default), so integrations can pass their
        keyword arguments straight through.
        """
        given = {k: v for k, v in values.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"{owner or 'ExitOptions'}: unknown option(s) {unknown}")
        if options is not None:
            if not isinstance(options, ExitOptions):
                raise TypeError(
                    f"{owner}: options must be an ExitOptions, got {type(options).__name__} ({options!r})"
                )
            if given:
                raise TypeError(
                    f"{owner}: pass options=ExitOptions(...) or its fields {sorted(given)}, not both"
                )
            return options
        if "policy" not in given:
            raise TypeError(
                f"{owner or 'ExitOptions'} needs policy=ExitPolicy(...) (or "
                "options=ExitOptions(policy=...)), got NoneType (None); build one with "
                "ExitPolicy(threshold=...) or ExitPolicy.from_calibration(...)"
            )
        try:
            return cls(**given)
        except TypeError as error:
            raise TypeError(f"{owner}: {error}" if owner else str(error)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for identifying parameters and tracing (no ledger, no callback)."""
        return {
            "policy": self.policy.to_dict(),
            "force_answer": self.force_answer,
            "probes": None if self.probes is None else self.probes.name,
            "reasoning_format": self.reasoning_format,
            "audit_rate": None if self.audit is None else self.audit.rate,
        }


def _expect(name: str, value: Any, kind: type, hint: str) -> None:
    if not isinstance(value, kind):
        shown = dict(value) if isinstance(value, Mapping) else value
        raise TypeError(f"ExitOptions: {name} must be {hint}, got {type(value).__name__} ({shown!r})")


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ExitOptions))
"""The option fields, which every integration also takes as keyword arguments."""
