"""Calibration from a few graded examples: the threshold tau, and whether the signal is there.

``calibrate(examples, method=...)`` turns a handful of (entropy, correct, tokens) examples into a
``Calibration``: the threshold for the chosen method, the thresholds of every other method for
comparison, class statistics, the AUROC of the entropy signal (Mann-Whitney, with a stratified
bootstrap interval), the AUROC of a length-only baseline, and a plain verdict. Pure numpy.

Methods (all thresholds in bits; "H <= tau" reads as "confident"):

* ``mean``: mean entropy of the correct answers (the paper's default).
* ``info``: ``mu_c + sigma_c * ln(1 + |d|)``, d the Cohen's d between correct and incorrect.
* ``bayes``: the boundary that minimises (prior-weighted) misclassification on the examples.
* ``quantile``: the q-quantile of the correct answers' entropies (a precision-style target).
* ``deepconf``: label-free, DeepConf-style: the ``deepconf_keep`` percentile of all warm-up
  entropies (and, from token traces, DeepConf's own lowest-group-confidence threshold).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import EntropyExitWarning, PolicyError
from .signals import (
    NO_SIGNAL,
    STRONG,
    auroc,
    bootstrap_auroc_ci,
    lowest_group_confidence,
    sequence_entropy,
    verdict_of,
)
from .tokens import TokenLogprob

Method = Literal["mean", "info", "bayes", "quantile", "deepconf"]
METHODS: tuple[str, ...] = ("mean", "info", "bayes", "quantile", "deepconf")
Signal = float | Sequence[float] | Sequence[TokenLogprob] | np.ndarray
MIN_EXAMPLES = 4


@dataclass(frozen=True)
class CalibrationExample:
    """One graded generation: its sequence entropy (bits), whether it was right, tokens used."""

    entropy: float
    correct: bool
    tokens: int
    lowest_group_confidence: float | None = None


@dataclass(frozen=True)
class ClassStats:
    """Entropy statistics of one class (correct or incorrect) of examples."""

    n: int
    mean: float | None
    std: float | None
    minimum: float | None
    maximum: float | None
    mean_tokens: float | None

    @classmethod
    def of(cls, entropies: np.ndarray, tokens: np.ndarray) -> ClassStats:
        if entropies.size == 0:
            return cls(0, None, None, None, None, None)
        std = float(entropies.std(ddof=1)) if entropies.size > 1 else 0.0
        return cls(
            int(entropies.size),
            float(entropies.mean()),
            std,
            float(entropies.min()),
            float(entropies.max()),
            float(tokens.mean()),
        )


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold with the evidence behind it; saved as a JSON profile per model."""

    tau: float
    method: str
    n: int
    correct: ClassStats
    incorrect: ClassStats
    auroc: float | None
    auroc_ci: tuple[float, float] | None
    length_auroc: float | None
    verdict: str
    verdict_detail: str
    expected_tokens: float
    k: int
    model: str | None
    taus: dict[str, float | None] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)
    deepconf_threshold: float | None = None
    deepconf_window: int | None = None
    estimator: str = "renormalised top-k"

    @property
    def usable(self) -> bool:
        """False when the verdict is "no signal"."""
        return self.verdict != NO_SIGNAL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        values = dict(data)
        values["correct"] = ClassStats(**values["correct"])
        values["incorrect"] = ClassStats(**values["incorrect"])
        if values.get("auroc_ci") is not None:
            values["auroc_ci"] = tuple(values["auroc_ci"])
        return cls(**values)

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON; returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return target

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary(self) -> str:
        """Plain multi-line text: class statistics, AUROC, tau per method, verdict."""
        return format_calibration(self)


def _example(item: Any, k: int, window: int) -> CalibrationExample:
    if isinstance(item, CalibrationExample):
        return item
    if len(item) == 2:
        signal, correct = item
        tokens_used: int | None = None
    else:
        signal, correct, tokens_used = item[0], item[1], item[2]
    lowest = None
    entropy: float | None
    if isinstance(signal, (int, float, np.floating)):
        entropy = float(signal)
    elif len(signal) and isinstance(signal[0], TokenLogprob):
        entropy = sequence_entropy(signal, k=k)  # type: ignore[arg-type]
        lowest = lowest_group_confidence(signal, window)  # type: ignore[arg-type]
        tokens_used = len(signal) if tokens_used is None else tokens_used
    else:
        values = np.asarray(signal, dtype=float)
        known = values[~np.isnan(values)]
        entropy = float(known.mean()) if known.size else None
        tokens_used = int(values.size) if tokens_used is None else tokens_used
    if entropy is None or not math.isfinite(entropy):
        raise PolicyError("an example has no known token entropy (no logprobs?)")
    if tokens_used is None:
        raise PolicyError("an example given as a bare entropy needs its tokens used: (H, correct, n)")
    return CalibrationExample(entropy, bool(correct), int(tokens_used), lowest)


def _tau_info(c: np.ndarray, i: np.ndarray) -> float:
    mu_c, sd_c = float(c.mean()), float(c.std(ddof=1)) if c.size > 1 else 0.0
    sd_i = float(i.std(ddof=1)) if i.size > 1 else 0.0
    dof = c.size + i.size - 2
    pooled = math.sqrt(((c.size - 1) * sd_c**2 + (i.size - 1) * sd_i**2) / dof) if dof > 0 else 0.0
    if sd_c == 0.0:
        return mu_c
    d = abs(float(i.mean()) - mu_c) / pooled if pooled > 0 else 0.0
    return mu_c + sd_c * math.log1p(d)


def _tau_bayes(c: np.ndarray, i: np.ndarray, priors: tuple[float, float] | None) -> float:
    p_c, p_i = priors if priors is not None else (c.size, i.size)
    p_c, p_i = p_c / (p_c + p_i), p_i / (p_c + p_i)
    values = np.unique(np.concatenate([c, i]))
    candidates = np.concatenate([[values[0] - 1e-9], (values[:-1] + values[1:]) / 2, [values[-1]]])
    missed = (c[None, :] > candidates[:, None]).mean(axis=1)  # correct answers sent on
    accepted = (i[None, :] <= candidates[:, None]).mean(axis=1)  # wrong answers let through
    error = p_c * missed + p_i * accepted
    best = np.flatnonzero(np.isclose(error, error.min()))
    return float(max(candidates[best[len(best) // 2]], 0.0))


def calibrate(
    examples: Iterable[Any],
    method: Method = "mean",
    *,
    model: str | None = None,
    k: int = 20,
    q: float = 0.75,
    priors: tuple[float, float] | None = None,
    deepconf_keep: float = 0.9,
    deepconf_window: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
) -> Calibration:
    """Set the threshold from graded examples and say how much the signal can be trusted.

    Args:
        examples: ``(signal, correct, tokens_used)`` tuples or ``CalibrationExample``; signal is a
            sequence entropy in bits, a list of per-token entropies, or the ``TokenLogprob`` trace
            (then tokens used may be omitted: ``(trace, correct)``).
        method: which threshold becomes ``tau``; every method's value is kept in ``taus``.
        model: model id the profile is for. k: candidates per token that were requested.
        q: quantile of correct entropies for ``quantile``. priors: (p_correct, p_incorrect)
            for ``bayes`` (default: the example frequencies).
        deepconf_keep: fraction of warm-up traces DeepConf keeps (0.9 = DeepConf-high).
        deepconf_window: group size for DeepConf's sliding-window confidence.
    """
    if method not in METHODS:
        raise PolicyError(f"method must be one of {METHODS}, got {method!r}")
    if not 0.0 < q < 1.0 or not 0.0 < deepconf_keep < 1.0:
        raise PolicyError("q and deepconf_keep must be in (0, 1)")
    items = [_example(item, k, deepconf_window) for item in examples]
    if len(items) < MIN_EXAMPLES:
        raise PolicyError(f"calibration needs at least {MIN_EXAMPLES} examples, got {len(items)}")
    h = np.array([e.entropy for e in items])
    ok = np.array([e.correct for e in items])
    used = np.array([e.tokens for e in items], dtype=float)
    c, i = h[ok], h[~ok]
    taus: dict[str, float | None] = {"deepconf": float(np.quantile(h, deepconf_keep))}
    fallbacks: dict[str, str] = {}
    if c.size == 0:
        for name in ("mean", "info", "bayes", "quantile"):
            taus[name], fallbacks[name] = taus["deepconf"], "deepconf"
        warnings.warn(
            "no correct examples: mean, info, bayes and quantile fall back to deepconf "
            "(label-free); the verdict is 'no signal'",
            EntropyExitWarning,
            stacklevel=2,
        )
    else:
        taus["mean"] = float(c.mean())
        taus["quantile"] = float(np.quantile(c, q))
        if i.size == 0:
            taus["info"] = taus["bayes"] = taus["mean"]
            fallbacks.update(info="mean", bayes="mean")
            warnings.warn(
                "no incorrect examples: info and bayes fall back to mean; the signal cannot be tested",
                EntropyExitWarning,
                stacklevel=2,
            )
        else:
            taus["info"] = _tau_info(c, i)
            taus["bayes"] = _tau_bayes(c, i, priors)
    score = auroc(-c, -i)
    ci = bootstrap_auroc_ci(-c, -i, n_boot=n_boot, seed=seed)
    length = auroc(-used[ok], -used[~ok])
    verdict, detail = verdict_of(score, ci, length, int(c.size), int(i.size))
    lows = [e.lowest_group_confidence for e in items if e.lowest_group_confidence is not None]
    deepconf = float(np.quantile(lows, 1 - deepconf_keep)) if lows else None
    return Calibration(
        tau=float(taus[method] or 0.0),
        method=method,
        n=len(items),  # type: ignore[arg-type]
        correct=ClassStats.of(c, used[ok]),
        incorrect=ClassStats.of(i, used[~ok]),
        auroc=score,
        auroc_ci=ci,
        length_auroc=length,
        verdict=verdict,
        verdict_detail=detail,
        expected_tokens=float(used.mean()),
        k=k,
        model=model,
        taus=taus,
        fallbacks=fallbacks,
        deepconf_threshold=deepconf,
        deepconf_window=deepconf_window if lows else None,
    )


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_calibration(cal: Calibration) -> str:
    """The plain report the ``calibrate`` command prints."""
    lines = [
        f"calibration for {cal.model or '(unnamed model)'}: n={cal.n}, k={cal.k} "
        f"({cal.estimator} entropy, bits)"
    ]
    for name, s in (("correct", cal.correct), ("incorrect", cal.incorrect)):
        lines.append(
            f"  {name:<9} n={s.n:<4} mean={_num(s.mean)} std={_num(s.std)} "
            f"min={_num(s.minimum)} max={_num(s.maximum)} tokens={_num(s.mean_tokens, 1)}"
        )
    ci = "n/a" if cal.auroc_ci is None else f"{cal.auroc_ci[0]:.2f}-{cal.auroc_ci[1]:.2f}"
    lines.append(
        f"  AUROC of -entropy: {_num(cal.auroc, 2)} (95% bootstrap CI {ci}); "
        f"length-only AUROC: {_num(cal.length_auroc, 2)}"
    )
    for name in METHODS:
        mark = " <- tau" if name == cal.method else ""
        via = f" (fallback: {cal.fallbacks[name]})" if name in cal.fallbacks else ""
        lines.append(f"  tau[{name}] = {_num(cal.taus.get(name))}{via}{mark}")
    if cal.deepconf_threshold is not None:
        lines.append(
            f"  DeepConf lowest-group-confidence threshold: {cal.deepconf_threshold:.3f} "
            f"(window {cal.deepconf_window})"
        )
    lines.append(f"  expected tokens: {cal.expected_tokens:.1f}")
    lines.append(f"  verdict: {cal.verdict} - {cal.verdict_detail}")
    return "\n".join(lines)


def policy_kwargs(cal: Calibration, *, allow_weak: bool, overrides: dict[str, Any]) -> dict[str, Any]:
    """ExitPolicy arguments from a calibration (used by ``ExitPolicy.from_calibration``)."""
    if cal.verdict == NO_SIGNAL:
        message = (
            f"calibration for {cal.model!r} found no signal ({cal.verdict_detail}); "
            "an entropy exit would cut answers at random"
        )
        if not allow_weak:
            raise PolicyError(message + "; pass allow_weak=True to use it anyway")
        warnings.warn("USING A NO-SIGNAL CALIBRATION: " + message, EntropyExitWarning, stacklevel=3)
    elif cal.verdict != STRONG:
        warnings.warn(
            f"calibration for {cal.model!r}: {cal.verdict} ({cal.verdict_detail})",
            EntropyExitWarning,
            stacklevel=3,
        )
    values: dict[str, Any] = {
        "threshold": max(cal.tau, 0.0),
        "top_k": min(max(cal.k, 1), 20),
        "calibrated_for": cal.model or "unknown",
        "expected_tokens": cal.expected_tokens if cal.expected_tokens > 0 else None,
    }
    values.update(overrides)
    return values
