"""Shannon entropy of a token's top-k logprobs, in bits.

Two estimators:

* ``renormalised`` (the paper's, default): softmax over the k candidates, so the k probabilities
  sum to one, then ``H = -sum p log2 p``. Bounded by ``log2 k``. It ignores the probability mass
  outside the top k, so it *under*-estimates the true entropy when that tail is heavy.
* ``tail-aware``: keeps the candidates' raw probabilities and puts the missing mass
  ``1 - sum(exp(logprob))`` into one extra outcome. Still a lower bound on the true entropy (the
  tail is really many outcomes), but it does not call a flat distribution "certain" just because
  k is small; with k = 1 it is the only estimator that says anything.

Input rules, the same for the scalar and the vectorised forms:

* ``-inf`` and the OpenAI "very unlikely" sentinel ``-9999.0`` (and anything below it) are
  probability zero;
* NaN, and positive logprobs beyond rounding noise, are malformed: ``LogprobsFormatError`` for a
  direct caller; ``EntropyMonitor`` (so every integration) reads such a token as unknown instead;
* an empty list, or one where every candidate has probability zero, has no entropy: ``None``
  (NaN in the vectorised form). Callers treat it as *unknown*, never as zero.

One *live* candidate (finite and above the sentinel; the rest -inf/-9999) has exactly 0 bits
here, which is the right arithmetic but no evidence of certainty: the provider told us nothing
about the alternatives. ``EntropyMonitor`` reads such a token as unknown under the renormalised
estimator (``live_candidates``). In floating point a lone live candidate reads as 0 plus rounding
noise (at most about 2e-13 bits for any logprob above the sentinel, e.g. 1.9e-164 bits for
``[-1.3e-164, -9999]``), so the monitor counts live candidates whenever a reading is below
``ONE_LIVE_BITS``: a reading above it always has two or more live candidates.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

from ..errors import LogprobsFormatError

SENTINEL_LOGPROB = -9999.0
"""OpenAI's "very unlikely" value; it and anything below it count as probability zero."""

ONE_LIVE_BITS = 1e-9
"""Readings below this many bits may come from one live candidate: count them (``live_candidates``).

Four orders of magnitude above the rounding noise of a one-candidate distribution (below 2e-13
bits for every logprob in [-9999, 0]); a real two-candidate token reads this low only when the
runner-up is below about e^-25, which the count then confirms as known."""

POSITIVE_TOLERANCE = 1e-4
"""Positive logprobs up to this are rounding noise (read as 0.0); above it they are malformed."""

_LN2 = math.log(2.0)
_exp = math.exp
_log = math.log
_mul = operator.mul


def _checked(logprobs: Sequence[float]) -> list[float]:
    """Finite candidate logprobs above the sentinel; raises on NaN or clearly positive values."""
    kept: list[float] = []
    for value in logprobs:
        if value != value:  # NaN compares unequal to itself
            raise LogprobsFormatError("top_logprobs", "NaN logprob")
        if value > POSITIVE_TOLERANCE:
            raise LogprobsFormatError("top_logprobs", f"positive logprob {value!r}")
        if value > SENTINEL_LOGPROB:
            kept.append(value if value < 0.0 else 0.0)
    return kept


def token_entropy(logprobs: Sequence[float], *, tail_aware: bool = False) -> float | None:
    """Entropy in bits of one token's candidate logprobs (natural-log values).

    >>> token_entropy([math.log(0.5), math.log(0.5)])
    1.0
    >>> token_entropy([0.0])
    0.0
    >>> token_entropy([]) is None
    True
    """
    if not tail_aware and logprobs:
        bits = fast_renormalised_bits(logprobs)
        if bits is not None:
            return bits
    kept = _checked(logprobs)
    if not kept:
        return None
    if tail_aware:
        return _tail_aware_bits(kept)
    top = max(kept)
    weights = [_exp(value - top) for value in kept]
    total = sum(weights)
    # H = log Z - E[l - top] with Z the sum of the shifted weights.
    expected = sum(w * (v - top) for w, v in zip(weights, kept)) / total
    bits = (_log(total) - expected) / _LN2
    return bits if bits > 0.0 else 0.0


def fast_renormalised_bits(logprobs: Sequence[float]) -> float | None:
    """The common case in one pass of C-level loops; None sends the input to the careful path.

    Logprobs are <= 0, so ``exp`` cannot overflow and no max-shift is needed:
    with p = exp(l) and S = sum p, H = ln S - sum(p l) / S (nats). NaN anywhere, an -inf
    (0 * -inf is NaN), a positive value (S may exceed 1) or a total underflow all fall back.
    """
    probabilities = list(map(_exp, logprobs))
    total = sum(probabilities)
    if not 1e-300 < total <= 1.0 + POSITIVE_TOLERANCE:
        return None
    weighted = sum(map(_mul, probabilities, logprobs))
    if weighted != weighted:
        return None
    bits = (_log(total) - weighted / total) / _LN2
    return bits if bits > 0.0 else 0.0


def live_candidates(logprobs: Sequence[float]) -> int:
    """How many candidates carry a live logprob: finite and above the sentinel (NaN is not live).

    >>> live_candidates([-1.3e-164, SENTINEL_LOGPROB, -math.inf])
    1
    """
    return sum(1 for value in logprobs if value > SENTINEL_LOGPROB)


def _tail_aware_bits(kept: list[float]) -> float:
    probabilities = [_exp(value) for value in kept]
    nats = -sum(p * v for p, v in zip(probabilities, kept))
    tail = 1.0 - sum(probabilities)
    if tail > 1e-12:
        nats -= tail * _log(tail)
    bits = nats / _LN2
    return bits if bits > 0.0 else 0.0


def token_entropies(logprobs: np.ndarray, *, tail_aware: bool = False) -> np.ndarray:
    """Vectorised entropy in bits for many tokens at once.

    Args:
        logprobs: shape ``(n_tokens, k)``; pad short rows with ``-inf``.
        tail_aware: use the tail-aware estimator (see the module docstring).

    Returns:
        Shape ``(n_tokens,)``; NaN where a row has no candidate with non-zero probability.
    """
    values = np.asarray(logprobs, dtype=np.float64)
    if values.ndim != 2:
        raise LogprobsFormatError("top_logprobs", f"expected a 2-D array, got shape {values.shape}")
    if np.isnan(values).any():
        row = int(np.argwhere(np.isnan(values))[0][0])
        raise LogprobsFormatError("top_logprobs", f"NaN logprob in row {row}")
    if (values > POSITIVE_TOLERANCE).any():
        row = int(np.argwhere(values > POSITIVE_TOLERANCE)[0][0])
        raise LogprobsFormatError("top_logprobs", f"positive logprob in row {row}")
    values = np.where(values <= SENTINEL_LOGPROB, -np.inf, np.minimum(values, 0.0))
    alive = np.isfinite(values)
    known = alive.any(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if tail_aware:
            probabilities = np.where(alive, np.exp(values), 0.0)
            nats = -np.where(alive, probabilities * values, 0.0).sum(axis=1)
            tail = np.clip(1.0 - probabilities.sum(axis=1), 0.0, 1.0)
            nats -= np.where(tail > 1e-12, tail * np.log(np.where(tail > 0, tail, 1.0)), 0.0)
        else:
            top = np.where(known, np.max(np.where(alive, values, -np.inf), axis=1), 0.0)
            shifted = np.where(alive, values - top[:, None], -np.inf)
            weights = np.exp(shifted)
            total = weights.sum(axis=1)
            expected = np.where(alive, weights * shifted, 0.0).sum(axis=1) / np.where(known, total, 1.0)
            nats = np.log(np.where(known, total, 1.0)) - expected
    bits = np.maximum(nats / _LN2, 0.0)
    return np.where(known, bits, np.nan)


def max_entropy_bits(k: int) -> float:
    """Largest renormalised entropy ``log2 k`` that k candidates can have."""
    return math.log2(k) if k > 1 else 0.0
