import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import entropy as scipy_entropy

from entropy_exit_integrations.core.entropy import (
    SENTINEL_LOGPROB,
    max_entropy_bits,
    token_entropies,
    token_entropy,
)
from entropy_exit_integrations.errors import LogprobsFormatError

logprob_lists = st.lists(st.floats(min_value=-30.0, max_value=0.0), min_size=1, max_size=20)


def reference_bits(logprobs: list[float]) -> float:
    return float(scipy_entropy(np.exp(np.array(logprobs)), base=2))


def test_hand_computed_cases() -> None:
    assert token_entropy([math.log(0.5), math.log(0.5)]) == pytest.approx(1.0)
    assert token_entropy([math.log(0.25)] * 4) == pytest.approx(2.0)
    # 0.9 / 0.1: -(0.9 log2 0.9 + 0.1 log2 0.1) = 0.4689955935892812
    assert token_entropy([math.log(0.9), math.log(0.1)]) == pytest.approx(0.4689955935892812)


def test_renormalises_over_the_candidates() -> None:
    # 0.3 and 0.1 renormalise to 0.75 / 0.25.
    expected = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert token_entropy([math.log(0.3), math.log(0.1)]) == pytest.approx(expected)


def test_tail_aware_puts_missing_mass_in_one_outcome() -> None:
    # 0.3, 0.1 and a tail of 0.6.
    expected = -(0.3 * math.log2(0.3) + 0.1 * math.log2(0.1) + 0.6 * math.log2(0.6))
    assert token_entropy([math.log(0.3), math.log(0.1)], tail_aware=True) == pytest.approx(expected)
    assert token_entropy([0.0], tail_aware=True) == 0.0
    assert token_entropy([math.log(0.5)], tail_aware=True) == pytest.approx(1.0)


def test_k_equal_one_is_zero_renormalised() -> None:
    assert token_entropy([-3.0]) == 0.0


@pytest.mark.parametrize("dead", [-math.inf, SENTINEL_LOGPROB, -1e6])
def test_zero_probability_values_are_ignored(dead: float) -> None:
    assert token_entropy([math.log(0.5), math.log(0.5), dead]) == pytest.approx(1.0)


def test_no_live_candidate_is_unknown_not_zero() -> None:
    assert token_entropy([]) is None
    assert token_entropy([-math.inf, SENTINEL_LOGPROB]) is None


def test_nan_and_positive_are_rejected() -> None:
    with pytest.raises(LogprobsFormatError, match="NaN"):
        token_entropy([-0.1, math.nan])
    with pytest.raises(LogprobsFormatError, match="positive"):
        token_entropy([0.5])
    assert token_entropy([1e-7, -20.0]) >= 0.0  # rounding noise above zero is tolerated


@given(logprob_lists)
def test_matches_scipy_and_bounds(logprobs: list[float]) -> None:
    bits = token_entropy(logprobs)
    assert bits is not None
    assert 0.0 <= bits <= max_entropy_bits(len(logprobs)) + 1e-9
    assert bits == pytest.approx(reference_bits(logprobs), abs=1e-9)


@given(logprob_lists, st.randoms())
def test_permutation_invariant(logprobs: list[float], rnd) -> None:
    shuffled = list(logprobs)
    rnd.shuffle(shuffled)
    assert token_entropy(shuffled) == pytest.approx(token_entropy(logprobs), abs=1e-12)


@given(st.integers(min_value=1, max_value=20), st.floats(min_value=-30, max_value=0))
def test_one_hot_is_zero_and_uniform_is_log2_k(k: int, level: float) -> None:
    assert token_entropy([0.0] + [-math.inf] * (k - 1)) == 0.0
    assert token_entropy([level] * k) == pytest.approx(max_entropy_bits(k), abs=1e-9)


@given(st.lists(logprob_lists, min_size=1, max_size=10), st.booleans())
def test_vectorised_equals_scalar(rows: list[list[float]], tail: bool) -> None:
    k = max(len(r) for r in rows)
    matrix = np.full((len(rows), k), -np.inf)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    vector = token_entropies(matrix, tail_aware=tail)
    for i, row in enumerate(rows):
        assert vector[i] == pytest.approx(token_entropy(row, tail_aware=tail), abs=1e-9)


def test_vectorised_unknown_rows_are_nan_and_nan_input_raises() -> None:
    out = token_entropies(np.array([[-np.inf, SENTINEL_LOGPROB], [0.0, -np.inf]]))
    assert math.isnan(out[0]) and out[1] == 0.0
    with pytest.raises(LogprobsFormatError, match="row 1"):
        token_entropies(np.array([[0.0, -1.0], [np.nan, -1.0]]))
    with pytest.raises(LogprobsFormatError, match="2-D"):
        token_entropies(np.array([0.0, -1.0]))
