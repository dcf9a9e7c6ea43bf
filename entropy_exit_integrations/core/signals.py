"""Per-trace signals and how well a signal separates right answers from wrong ones.

* ``sequence_entropy``: mean token entropy over the watched tokens, by the same ``EntropyMonitor``
  that runs live (unknown tokens count as maximally uncertain);
* ``lowest_group_confidence``: DeepConf's trace score;
* ``auroc`` (Mann-Whitney, ties count one half), ``bootstrap_auroc_ci`` (stratified percentile
  bootstrap) and ``verdict_of``: "strong", "weak signal: ...", "no signal", or "unmeasured".
Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .monitor import EntropyMonitor
from .policy import ExitPolicy
from .tokens import TokenLogprob

STRONG, WEAK, NO_SIGNAL = "strong", "weak signal: early exit will cost accuracy on this model", "no signal"
UNMEASURED = "unmeasured: every example was correct, the signal cannot be tested"


def sequence_entropy(tokens: Sequence[TokenLogprob], *, k: int = 20, phase: str = "auto") -> float | None:
    """Mean token entropy over the watched tokens, computed by the same monitor as live runs."""
    policy = ExitPolicy(threshold=0.0, min_tokens=0, top_k=min(max(k, 1), 20), phase=phase)  # type: ignore[arg-type]
    monitor = EntropyMonitor(policy)
    for token in tokens:
        monitor.observe(token)
    return monitor.decision.entropy


def lowest_group_confidence(tokens: Sequence[TokenLogprob], window: int = 32) -> float | None:
    """DeepConf's trace score: the lowest sliding-window mean of token confidences.

    Token confidence is ``-mean(top-k logprobs)`` (natural log, raw, as in DeepConf); tokens
    without candidates are skipped. A trace shorter than the window is one group.
    """
    conf = np.array([-float(np.mean(t.top_logprobs)) for t in tokens if t.top_logprobs], dtype=float)
    if conf.size == 0:
        return None
    if conf.size <= window:
        return float(conf.mean())
    sums = np.convolve(conf, np.ones(window), mode="valid") / window
    return float(sums.min())


def auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties count one half (Mann-Whitney U / n1 n2)."""
    if positive.size == 0 or negative.size == 0:
        return None
    return float(_comparisons(positive, negative).mean())


def _comparisons(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    diff = positive[:, None] - negative[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def bootstrap_auroc_ci(
    positive: np.ndarray, negative: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile interval of the AUROC under stratified resampling (class sizes kept)."""
    if positive.size == 0 or negative.size == 0:
        return None
    rng = np.random.default_rng(seed)
    table = _comparisons(positive, negative)
    wp = rng.multinomial(positive.size, np.full(positive.size, 1 / positive.size), size=n_boot)
    wn = rng.multinomial(negative.size, np.full(negative.size, 1 / negative.size), size=n_boot)
    values = ((wp @ table) * wn).sum(axis=1) / (positive.size * negative.size)
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def verdict_of(
    score: float | None,
    ci: tuple[float, float] | None,
    length: float | None,
    n_correct: int,
    n_incorrect: int,
) -> tuple[str, str]:
    if n_correct == 0:
        return NO_SIGNAL, "no correct examples: there is no confident answer to keep"
    if score is None or ci is None:
        return UNMEASURED, "no incorrect examples: exits cannot be shown to keep accuracy"
    text = f"AUROC {score:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f})"
    if length is not None:
        text += f", length alone {length:.2f}"
    if score < 0.6 and ci[0] <= 0.5:
        return NO_SIGNAL, text + ": entropy does not separate right from wrong answers"
    if score >= 0.75 and ci[0] > 0.6 and (length is None or score >= length - 0.05):
        return STRONG, text
    if length is not None and length > score + 0.05:
        text += ": length predicts correctness better than entropy"
    return WEAK, text
