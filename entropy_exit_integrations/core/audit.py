"""Sampled audits of exits in production, and the live bound on their harm.

A threshold is calibrated offline on a few labelled questions; production traffic differs. An
``AuditRule(rate=r)`` makes the engine audit a sampled fraction ``r`` of the calls where the
policy decides to exit: it does not close the stream, asks for the answer the exit would have
returned (the text so far plus a forced answer from that prefix, on a second slot while the
stream goes on: the same request as a probe), reads the stream to its natural end and compares
the two answers. The audited call saves nothing; its report says what the exit would have saved
and whether it would have changed the answer (``audit_harmful``).

Over many calls, ``SavingsLedger.audit()`` gives the observed harm rate and an exact
Clopper-Pearson upper bound on it (``harm_upper_bound``: the bound calibration uses,
``calibration.clopper_pearson_upper``): with ``n`` audits and ``k`` harmful ones, the true rate
of harmful exits is at most the bound with the stated confidence (one-sided), whatever the
traffic, as long as the audited calls are a random sample of the exits (they are: the rule
samples them independently of everything else).

The cost: one forced answer per audited call, plus the tokens the audited calls did not save.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import PolicyError
from .probes import answer_key

Compare = Callable[[str, str], bool]
"""``compare(exit_answer, full_answer)``: True when the exit's forced answer is as good as the
full run's answer (its whole text)."""


def same_final_answer(exit_answer: str, full_answer: str) -> bool:
    """The default comparison of the exit's forced answer with the full run's answer: the last
    number of each (``"... = 42."``); without numbers, the full answer (normalised: lower case,
    single spaces, no closing punctuation) ends with the exit's. An empty answer matches nothing.
    """
    exit_key, full_key = answer_key(exit_answer), answer_key(full_answer)
    if exit_key is None or full_key is None:
        return False
    if _has_number(exit_answer) or _has_number(full_answer):
        return exit_key == full_key
    return full_key.endswith(exit_key)


def _has_number(text: str) -> bool:
    return any(c.isdigit() for c in text)


@dataclass(frozen=True)
class AuditRule:
    """Which exits to audit, and how to compare the answers.

    Args:
        rate: the fraction of exit decisions to audit, from 0 (never; the default costs nothing
            on the hot path) to 1 (every one: then nothing is ever saved).
        compare: ``compare(exit_answer, full_answer) -> bool``, True when the exit's answer is
            as good; default ``same_final_answer`` (final number, else normalised text).
        seed: seeds the sampling (reproducible tests); None draws from the system.
    """

    rate: float = 0.0
    compare: Compare = same_final_answer
    seed: int | None = None
    _random: random.Random = field(init=False, repr=False, compare=False)
    _lock: threading.Lock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.rate, (int, float)) or not 0.0 <= float(self.rate) <= 1.0:
            raise PolicyError(f"AuditRule: rate must be between 0 and 1, got {self.rate!r}")
        if not callable(self.compare):
            raise PolicyError(f"AuditRule: compare must be callable, got {type(self.compare).__name__}")
        object.__setattr__(self, "_random", random.Random(self.seed))
        object.__setattr__(self, "_lock", threading.Lock())

    def sample(self) -> bool:
        """Audit this exit decision? (thread and task safe)."""
        if self.rate <= 0.0:
            return False
        if self.rate >= 1.0:
            return True
        with self._lock:
            return self._random.random() < self.rate


@dataclass(frozen=True)
class AuditSummary:
    """The live bound over a ledger's calls (``SavingsLedger.audit()``).

    Attributes:
        audited: calls audited (the policy decided to exit; the stream was read to its end).
        harmful: audited calls whose exit would have changed the answer.
        harm_rate: ``harmful / audited`` (None with no audit).
        harm_upper_bound: the exact one-sided Clopper-Pearson upper bound on the rate of harmful
            exits at ``confidence``.
        confidence: the bound's confidence.
        exits: calls that exited (not audited): where the savings come from.
        tokens_saved: tokens saved against the budget by those exits, net of forcing and probes.
        audit_tokens: tokens the audits' forced answers cost.
        audit_would_have_saved: tokens the audited calls would have saved had they exited.
        net_tokens_saved: ``tokens_saved - audit_tokens``: what the policy saved after paying
            for its audits (the audited calls' unsaved tokens are already not in ``tokens_saved``).
        net_saved_fraction: ``net_tokens_saved`` over the budget of every call that decided to
            exit (exits and audits); None without budgets.
    """

    audited: int
    harmful: int
    harm_rate: float | None
    harm_upper_bound: float
    confidence: float
    exits: int
    tokens_saved: int
    audit_tokens: int
    audit_would_have_saved: int
    net_tokens_saved: int
    net_saved_fraction: float | None

    def __str__(self) -> str:
        rate = "n/a" if self.harm_rate is None else f"{self.harm_rate:.1%}"
        share = "" if self.net_saved_fraction is None else f" ({self.net_saved_fraction:.1%} of budget)"
        return (
            f"{self.harmful} harmful of {self.audited} audited exits ({rate}); at "
            f"{self.confidence:.0%} confidence the harm rate is at most {self.harm_upper_bound:.1%}. "
            f"{self.exits} exits saved {self.tokens_saved} tokens, audits cost {self.audit_tokens}: "
            f"net {self.net_tokens_saved}{share}"
        )
