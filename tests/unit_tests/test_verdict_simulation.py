"""How often the calibration verdict says "strong", on synthetic populations with a known AUROC.

The populations are drawn here (not by the package's simulator): per example a label (correct
with probability 0.5, or 0.3), a negative entropy N(d, 1) for correct and N(0, 1) for incorrect
answers with d = sqrt(2) Phi^-1(AUROC), and a length that carries no signal. The verdict is the
package's vectorised one (``verdict_codes``), and a sample of draws checks that ``calibrate``
gives the same verdict on the same data. Run with ``-s`` to see the tables.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from entropy_exit_integrations.core.calibration import calibrate
from entropy_exit_integrations.core.signals import (
    STRONG,
    VERDICTS,
    auroc_interval,
    auroc_many,
    power_table,
    verdict_codes,
)

AUROCS = (0.5, 0.65, 0.8, 0.95)
SIZES = (8, 16, 32, 64)
REPS = 2000


def draw(value: float, n: int, prevalence: float, rng: np.random.Generator):
    correct = rng.random((REPS, n)) < prevalence
    shift = math.sqrt(2.0) * NormalDist().inv_cdf(value)
    entropy = -(rng.standard_normal((REPS, n)) + shift * correct)  # right answers: lower entropy
    length = rng.integers(50, 400, size=(REPS, n))
    return entropy, correct, length


def verdicts(entropy: np.ndarray, correct: np.ndarray, length: np.ndarray) -> np.ndarray:
    score, n_pos, n_neg = auroc_many(-entropy, correct)
    length_score, _, _ = auroc_many(-length.astype(float), correct)
    low, high = auroc_interval(score, np.minimum(n_pos, n_neg))
    return verdict_codes(score, low, high, n_pos, n_neg, length_score)


def strong_rates(prevalence: float, seed: int) -> dict[float, dict[int, float]]:
    rng = np.random.default_rng(seed)
    rates: dict[float, dict[int, float]] = {}
    for value in AUROCS:
        rates[value] = {}
        for n in SIZES:
            codes = verdicts(*draw(value, n, prevalence, rng))
            rates[value][n] = float(np.mean(codes == VERDICTS.index(STRONG)))
    return rates


def show(title: str, rates: dict[float, dict[int, float]]) -> None:
    print(f"\n{title}: P(verdict 'strong'), {REPS} draws per cell")
    print("  true AUROC  " + "".join(f"n={n:<7}" for n in SIZES))
    for value, row in rates.items():
        print(f"  {value:<11.2f} " + "".join(f"{row[n]:<9.1%}" for n in SIZES))


@pytest.mark.parametrize("prevalence", [0.5, 0.3])
def test_strong_is_rare_when_the_signal_is_weak_and_common_when_it_is_strong(prevalence: float) -> None:
    rates = strong_rates(prevalence, seed=12)
    show(f"{prevalence:.0%} correct", rates)
    for value in (0.5, 0.65):
        for n in SIZES:
            assert rates[value][n] <= 0.05, (value, n, rates[value][n])
    # the verdict is not simply conservative: with enough examples a strong signal is found
    assert rates[0.95][64] >= 0.9
    assert rates[0.8][64] >= 0.25
    assert rates[0.95][8] == 0.0  # 8 examples can never be enough (6 per class needed)
    for value in (0.8, 0.95):
        assert rates[value][64] > rates[value][16]


def test_calibrate_gives_the_vectorised_verdict() -> None:
    rng = np.random.default_rng(3)
    for value, n in [(0.65, 16), (0.8, 32), (0.95, 32), (0.95, 16), (0.5, 64)]:
        entropy, correct, length = draw(value, n, 0.5, rng)
        codes = verdicts(entropy, correct, length)
        for row in range(25):
            cal = (
                calibrate(
                    [(float(h), bool(c), int(t)) for h, c, t in zip(entropy[row], correct[row], length[row])]
                )
                if 0 < correct[row].sum() < n
                else None
            )
            if cal is not None:
                assert cal.verdict == VERDICTS[codes[row]], (value, n, row)


def test_population_where_length_beats_entropy() -> None:
    """The issue's measurement, synthesised: a fixed population of 60 where entropy's AUROC is
    about 0.64 and length's about 0.75; subsets of 8, 16 and 32 must rarely be called strong."""
    rng = np.random.default_rng(60)
    grid = np.array([NormalDist().inv_cdf((i + 0.5) / 30) for i in range(30)])  # normal quantiles
    correct = np.arange(60) < 30
    entropy = -np.concatenate([grid + math.sqrt(2) * NormalDist().inv_cdf(0.64), grid])
    length = 300 - 80 * np.concatenate(
        [rng.permutation(grid) + math.sqrt(2) * NormalDist().inv_cdf(0.75), grid]
    )
    full = calibrate(list(zip(entropy, correct, length.astype(int))))
    assert full.auroc is not None and full.length_auroc is not None
    assert 0.58 <= full.auroc <= 0.70 and full.length_auroc >= 0.72
    assert full.verdict != STRONG
    print(f"\npopulation of 60: entropy AUROC {full.auroc:.2f}, length {full.length_auroc:.2f}")
    for size in (8, 16, 32):
        picks = np.argsort(rng.random((REPS, 60)), axis=1)[:, :size]
        codes = verdicts(entropy[picks], correct[picks], length[picks])
        rate = float(np.mean(codes == VERDICTS.index(STRONG)))
        print(f"  subsets of {size}: strong in {rate:.1%}")
        assert rate <= 0.05


def test_the_power_table_calibrate_prints_matches_an_independent_simulation() -> None:
    ours = strong_rates(0.5, seed=99)
    table = power_table(0.5, values=(0.8, 0.95), sizes=SIZES, reps=REPS)
    show("package power table at 50% correct", table)
    for value in (0.8, 0.95):
        for n in SIZES:
            # two independent simulations of the same rate: within Monte Carlo error
            assert table[value][n] == pytest.approx(ours[value][n], abs=0.05)
