"""Entropy-based early exit for LLM generations.

Read the token logprobs a provider streams, turn them into Shannon entropy, and stop the stream
once a calibrated threshold says the model is sure. Integrations live in subpackages:
``entropy_exit_integrations.openai``, ``.langchain``, ``.llama_index``.
"""

from ._version import __version__
from .core import (
    Calibration,
    Decision,
    EntropyMonitor,
    ExitPolicy,
    Phase,
    SavingsLedger,
    SavingsReport,
    TokenLogprob,
    calibrate,
    token_entropy,
)
from .core.audit import AuditRule, AuditSummary
from .core.probes import ProbeRule
from .engine import REPORT_KEY, ExitResult
from .errors import (
    AuditBoundExceeded,
    EntropyExit,
    EntropyExitError,
    EntropyExitWarning,
    LogprobsFormatError,
    LogprobsUnavailableError,
    NoTokenEventsError,
    PolicyError,
    ServerError,
    StreamInterrupted,
)
from .forcing import AnswerForcing
from .options import ExitOptions
from .providers.reasoning import ReasoningFormat, format_for_model, format_from_props
from .traces import TraceSink

__all__ = [
    "__version__",
    "REPORT_KEY",
    "AnswerForcing",
    "AuditBoundExceeded",
    "AuditRule",
    "AuditSummary",
    "Calibration",
    "Decision",
    "EntropyExit",
    "EntropyExitError",
    "EntropyExitWarning",
    "EntropyMonitor",
    "ExitOptions",
    "ExitPolicy",
    "ExitResult",
    "LogprobsFormatError",
    "LogprobsUnavailableError",
    "NoTokenEventsError",
    "Phase",
    "PolicyError",
    "ProbeRule",
    "ReasoningFormat",
    "SavingsLedger",
    "SavingsReport",
    "ServerError",
    "StreamInterrupted",
    "TraceSink",
    "TokenLogprob",
    "calibrate",
    "format_for_model",
    "format_from_props",
    "token_entropy",
]
