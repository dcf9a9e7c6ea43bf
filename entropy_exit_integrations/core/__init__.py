"""The framework-free engine: entropy, policy, monitor, savings. Imports numpy only."""

from .calibration import Calibration, calibrate
from .entropy import max_entropy_bits, token_entropies, token_entropy
from .monitor import Decision, EntropyMonitor
from .policy import ExitPolicy
from .savings import EntropySummary, SavingsLedger, SavingsReport
from .tokens import Phase, TokenLogprob, token_from_candidates

__all__ = [
    "Calibration",
    "Decision",
    "EntropyMonitor",
    "EntropySummary",
    "ExitPolicy",
    "Phase",
    "SavingsLedger",
    "SavingsReport",
    "TokenLogprob",
    "calibrate",
    "max_entropy_bits",
    "token_entropies",
    "token_entropy",
    "token_from_candidates",
]
