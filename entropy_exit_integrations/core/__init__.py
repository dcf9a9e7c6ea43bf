"""The framework-free engine: entropy, policy, monitor, savings. Imports numpy only."""

from .entropy import max_entropy_bits, token_entropies, token_entropy
from .monitor import Decision, EntropyMonitor
from .policy import ExitPolicy
from .savings import EntropySummary, SavingsLedger, SavingsReport
from .tokens import Phase, TokenLogprob, token_from_candidates

__all__ = [
    "Decision",
    "EntropyMonitor",
    "EntropySummary",
    "ExitPolicy",
    "Phase",
    "SavingsLedger",
    "SavingsReport",
    "TokenLogprob",
    "max_entropy_bits",
    "token_entropies",
    "token_entropy",
    "token_from_candidates",
]
