"""Entropy-based early exit for LLM generations.

Read the token logprobs a provider streams, turn them into Shannon entropy, and stop the stream
once a calibrated threshold says the model is sure. Integrations live in subpackages:
``entropy_exit_integrations.openai``, ``.langchain``, ``.llama_index``.
"""

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
from .errors import (
    EntropyExit,
    EntropyExitError,
    EntropyExitWarning,
    LogprobsFormatError,
    LogprobsUnavailableError,
    StreamInterrupted,
)

__version__ = "0.1.0"

__all__ = [
    "Calibration",
    "Decision",
    "EntropyExit",
    "EntropyExitError",
    "EntropyExitWarning",
    "EntropyMonitor",
    "ExitPolicy",
    "LogprobsFormatError",
    "LogprobsUnavailableError",
    "Phase",
    "SavingsLedger",
    "SavingsReport",
    "StreamInterrupted",
    "TokenLogprob",
    "calibrate",
    "token_entropy",
]
