"""How well a per-trace signal separates right answers from wrong ones, honestly at small n.

* ``auroc`` (Mann-Whitney, ties count one half) and ``auroc_many`` (the same, vectorised over
  many draws: one row per draw);
* ``auroc_interval``: a score (Wilson-type) interval for the AUROC whose variance is the
  distribution-free upper bound of Birnbaum and McCarty (1958),
  ``Var(AUROC) <= A (1 - A) / min(n_correct, n_incorrect)``. It needs no resampling, is never
  degenerate (eight perfectly separated examples give a 90% interval of 0.60-1.00, where a
  percentile bootstrap says [1.00, 1.00]) and stays conservative at every sample size;
* ``verdict_codes`` / ``verdict_of``: "strong", "inconclusive", "weak signal", "no signal" or
  "unmeasured", with the number of examples that would change the verdict;
* ``verdict_rates`` and ``power_table``: how often the verdict says "strong" on synthetic
  populations with a known AUROC (binormal scores), so a user can see how many examples they need;
* ``lowest_group_confidence``: DeepConf's trace score.

Pure numpy. Nothing here runs the monitor (``sequence_entropy`` lives in ``calibration``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from .tokens import TokenLogprob

STRONG = "strong"
WEAK = "weak signal: early exit will cost accuracy on this model"
NO_SIGNAL = "no signal"
UNMEASURED = "unmeasured: every example was correct, the signal cannot be tested"
INCONCLUSIVE = "inconclusive: too few examples to tell whether the signal is strong"

VERDICTS: tuple[str, ...] = (STRONG, INCONCLUSIVE, WEAK, NO_SIGNAL, UNMEASURED)
"""Verdicts in code order: ``VERDICTS[code]`` for a code from ``verdict_codes``."""

LEVEL = 0.90
"""Two-sided level of the AUROC interval; its lower end is a one-sided 95% lower bound."""
STRONG_FLOOR = 0.65
""""strong" needs the AUROC's lower bound above this."""
STRONG_POINT = 0.75
"""... and the AUROC itself at least this."""
MIN_PER_CLASS = 6
"""... and at least this many correct and incorrect examples each."""
NO_SIGNAL_POINT = 0.6
"""An AUROC below this whose interval reaches 0.5 is "no signal"."""
LENGTH_MARGIN = 0.05
"""Length-only AUROC this much above the entropy's: length predicts better, never "strong"."""


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
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if positive.size == 0 or negative.size == 0:
        return None
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def midranks(scores: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis of a 2-D array, ties sharing their mean rank."""
    scores = np.asarray(scores, dtype=float)
    rows, n = scores.shape
    order = np.argsort(scores, axis=1, kind="stable")
    ordered = np.take_along_axis(scores, order, axis=1)
    starts_group = np.ones((rows, n), dtype=bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    starts = np.flatnonzero(starts_group.ravel())
    positions = np.tile(np.arange(1, n + 1, dtype=float), rows)
    counts = np.diff(np.append(starts, rows * n))
    means = np.repeat(np.add.reduceat(positions, starts) / counts, counts).reshape(rows, n)
    ranks = np.empty_like(means)
    np.put_along_axis(ranks, order, means, axis=1)
    return ranks


def auroc_many(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise AUROC of ``scores`` for the ``positive`` labels (both shaped draws x examples).

    Returns (auroc, n_positive, n_negative); the AUROC is NaN where a class is empty.
    """
    labels = np.asarray(positive, dtype=bool)
    ranks = midranks(scores)
    n_pos = labels.sum(axis=1)
    n_neg = labels.shape[1] - n_pos
    u = (ranks * labels).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        values = u / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), values, np.nan), n_pos, n_neg


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def auroc_interval(
    value: float | np.ndarray, n_min: int | np.ndarray, level: float = LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """Score interval for an AUROC from ``n_min = min(n_correct, n_incorrect)`` examples.

    The Wilson-type interval solves ``(theta - A)^2 = z^2 theta (1 - theta) / n_min``: the
    variance is the Birnbaum-McCarty bound, which holds for every pair of score distributions,
    so the interval does not rest on the sample looking typical (perfect separation included).
    Vectorised; returns (low, high) arrays (NaN where ``n_min`` is 0 or the AUROC is NaN).
    """
    a = np.asarray(value, dtype=float)
    k = np.asarray(n_min, dtype=float)
    z = _z(level)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = z * z / k
        centre = a + c / 2
        half = z * np.sqrt(a * (1 - a) / k + c / (4 * k))
        low, high = (centre - half) / (1 + c), (centre + half) / (1 + c)
        low, high = np.clip(np.minimum(low, a), 0.0, 1.0), np.clip(np.maximum(high, a), 0.0, 1.0)
    bad = (k <= 0) | np.isnan(a)
    return np.where(bad, np.nan, low), np.where(bad, np.nan, high)


def per_class_needed(value: float, floor: float, level: float = LEVEL) -> int | None:
    """Smallest ``min(n_correct, n_incorrect)`` at which an AUROC of ``value`` has its lower
    bound above ``floor`` (None when ``value <= floor``: no sample size is enough)."""
    if not value > floor:
        return None
    z = _z(level)
    # low > floor  <=>  (A - floor)^2 k > z^2 floor (1 - floor)  (A > floor)
    return max(1, math.floor(z * z * floor * (1 - floor) / (value - floor) ** 2) + 1)


def verdict_codes(
    value: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    n_pos: np.ndarray,
    n_neg: np.ndarray,
    length: np.ndarray | None = None,
) -> np.ndarray:
    """The verdict (an index into ``VERDICTS``) for every row, vectorised.

    * "no signal": no correct example, or AUROC < 0.6 with an interval reaching 0.5;
    * "unmeasured": no incorrect example;
    * "strong": AUROC >= 0.75, its lower bound > 0.65, at least 6 examples per class, and
      length alone not better by more than 0.05;
    * "weak signal": length alone predicts better, or the whole interval is under 0.75;
    * "inconclusive": the rest: the interval still reaches both sides of the line.
    """
    value = np.asarray(value, dtype=float)
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    n_pos, n_neg = np.asarray(n_pos), np.asarray(n_neg)
    length_better = (
        np.zeros(value.shape, dtype=bool)
        if length is None
        else np.nan_to_num(np.asarray(length, dtype=float), nan=0.0) > value + LENGTH_MARGIN
    )
    enough = np.minimum(n_pos, n_neg) >= MIN_PER_CLASS
    strong = (value >= STRONG_POINT) & (low > STRONG_FLOOR) & enough & ~length_better
    no_signal = (value < NO_SIGNAL_POINT) & (low <= 0.5)
    weak = length_better | (high < STRONG_POINT)
    codes = np.full(value.shape, VERDICTS.index(INCONCLUSIVE))
    codes = np.where(weak, VERDICTS.index(WEAK), codes)
    codes = np.where(no_signal, VERDICTS.index(NO_SIGNAL), codes)
    codes = np.where(strong, VERDICTS.index(STRONG), codes)
    codes = np.where(n_neg == 0, VERDICTS.index(UNMEASURED), codes)
    return np.where(n_pos == 0, VERDICTS.index(NO_SIGNAL), codes)


def per_class_below(value: float, ceiling: float, level: float = LEVEL) -> int | None:
    """Smallest ``min(n_correct, n_incorrect)`` at which an AUROC of ``value`` has its upper
    bound below ``ceiling`` (None when ``value >= ceiling``)."""
    if not value < ceiling:
        return None
    z = _z(level)
    return max(1, math.floor(z * z * ceiling * (1 - ceiling) / (ceiling - value) ** 2) + 1)


def verdict_of(
    score: float | None,
    interval: tuple[float, float] | None,
    length: float | None,
    n_correct: int,
    n_incorrect: int,
    length_interval: tuple[float, float] | None = None,
) -> tuple[str, str, int | None]:
    """The verdict, its plain explanation, and how many examples (in all, with the same class
    mix and AUROC) would settle or change it (None: no number would)."""
    if n_correct == 0:
        return NO_SIGNAL, "no correct examples: there is no confident answer to keep", None
    if score is None or interval is None:
        wanted = max(2 * MIN_PER_CLASS, n_correct + MIN_PER_CLASS)
        return (
            UNMEASURED,
            "no incorrect examples: exits cannot be shown to keep accuracy; "
            f"at least {wanted} examples with {MIN_PER_CLASS} or more wrong ones are needed",
            wanted,
        )
    code = int(
        verdict_codes(
            np.array([score]),
            np.array([interval[0]]),
            np.array([interval[1]]),
            np.array([n_correct]),
            np.array([n_incorrect]),
            None if length is None else np.array([length]),
        )[0]
    )
    verdict = VERDICTS[code]
    n = n_correct + n_incorrect
    share = min(n_correct, n_incorrect) / n
    text = f"AUROC {score:.2f} ({LEVEL:.0%} interval {interval[0]:.2f}-{interval[1]:.2f})"
    if length is not None:
        shown = "" if length_interval is None else f" ({length_interval[0]:.2f}-{length_interval[1]:.2f})"
        text += f", length alone {length:.2f}{shown}"
    text += f"; n={n} ({n_correct} correct, {n_incorrect} incorrect)"

    def total(per_class: int) -> int:
        return max(n + 1, math.ceil(per_class / share))

    needed: int | None = None
    if verdict == STRONG:
        return verdict, text + f": the lower bound {interval[0]:.2f} is above {STRONG_FLOOR}", None
    if verdict == NO_SIGNAL:
        text += ": entropy does not separate right from wrong answers"
        per = per_class_needed(score, 0.5)
        if per is not None:
            needed = total(per)
            text += f"; telling an AUROC of {score:.2f} from chance would take about {needed} examples"
        return verdict, text, needed
    if verdict == WEAK:
        if length is not None and length > score + LENGTH_MARGIN:
            text += ": length predicts correctness better than entropy"
        else:
            text += f": even the interval's upper end is under {STRONG_POINT}"
        return verdict, text, None
    if score >= STRONG_POINT:
        per = max(MIN_PER_CLASS, per_class_needed(score, STRONG_FLOOR) or MIN_PER_CLASS)
        needed = total(per)
        text += f": about {needed} examples ({per} of the smaller class) with this AUROC would make it strong"
        return verdict, text, needed
    per = per_class_below(score, STRONG_POINT)
    needed = total(per) if per is not None else None
    text += f": the AUROC is under {STRONG_POINT} but the interval reaches {interval[1]:.2f}"
    if needed is not None:
        text += f"; about {needed} examples with this AUROC would show it is weak"
    return verdict, text, needed


def binormal_shift(value: float) -> float:
    """Mean shift of two unit normals whose AUROC is ``value``: ``sqrt(2) * Phi^-1(value)``."""
    return math.sqrt(2.0) * NormalDist().inv_cdf(value)


def verdict_rates(
    value: float,
    n: int,
    *,
    prevalence: float = 0.5,
    reps: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Share of each verdict (indexed like ``VERDICTS``) over ``reps`` synthetic calibration sets.

    Each set has ``n`` examples, correct with probability ``prevalence``; the signal (negative
    entropy) is N(d, 1) for correct and N(0, 1) for incorrect examples with ``d`` chosen so that
    the population AUROC is ``value``; lengths carry no signal.
    """
    rng = np.random.default_rng(seed)
    correct = rng.random((reps, n)) < prevalence
    signal = rng.standard_normal((reps, n)) + binormal_shift(value) * correct
    length = rng.standard_normal((reps, n))
    score, n_pos, n_neg = auroc_many(signal, correct)
    length_score, _, _ = auroc_many(length, correct)
    low, high = auroc_interval(score, np.minimum(n_pos, n_neg))
    codes = verdict_codes(score, low, high, n_pos, n_neg, length_score)
    return np.bincount(codes, minlength=len(VERDICTS)) / reps


@functools.lru_cache(maxsize=32)
def power_table(
    prevalence: float = 0.5,
    values: tuple[float, ...] = (0.8, 0.95),
    sizes: tuple[int, ...] = (8, 16, 32, 64, 128),
    reps: int = 1000,
    seed: int = 0,
) -> dict[float, dict[int, float]]:
    """P("strong") for a population AUROC in ``values`` and ``n`` in ``sizes`` (simulated)."""
    return {
        v: {n: float(verdict_rates(v, n, prevalence=prevalence, reps=reps, seed=seed)[0]) for n in sizes}
        for v in values
    }


def format_power(prevalence: float, table: dict[float, dict[int, float]]) -> str:
    """The power table as plain text, one line per AUROC."""
    sizes = next(iter(table.values())).keys()
    head = "  ".join(f"n={n:<4}" for n in sizes)
    lines = [f"  P(verdict strong) at {prevalence:.0%} correct, simulated:  {head}"]
    for value, row in table.items():
        cells = "  ".join(f"{row[n]:<6.0%}" for n in sizes)
        lines.append(f"    population AUROC {value:.2f}{'':>20}{cells}")
    return "\n".join(lines)
