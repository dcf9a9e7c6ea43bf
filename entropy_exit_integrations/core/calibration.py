"""Calibration from a few graded examples: the threshold, whether the signal is there, and a
threshold whose harm is bounded.

``calibrate(examples, method=...)`` turns a handful of (entropy, correct, tokens) examples into a
``Calibration`` for the *sequence mean* entropy (the paper's gate, and an ``ExitPolicy`` with
``aggregation="mean"``): the threshold for the chosen method, every other method's for
comparison, class statistics, the AUROC of the entropy signal with an interval that stays honest
at small n (see ``signals``), the AUROC of a length-only baseline with its own interval, and a
verdict that says how many examples would change it.

``calibrate(..., risk=0.05, confidence=0.9)`` instead picks the largest threshold whose rate of
harmful exits (a question whose answer is wrong where the full run's was right) has an exact
upper confidence bound at most ``risk``: fixed-sequence testing of thresholds from the most
cautious up (Learn then Test, Angelopoulos et al. 2021) with exact binomial (Clopper-Pearson)
bounds, valid at any sample size.

``calibrate_stream(examples, policy, resolve, risk=...)`` does the same for a *streaming*
policy (its own aggregate, window, min_tokens and patience): exit points come from replaying the
monitor over recorded traces, and the answer at each candidate exit point (forced or already in
the text) comes from ``resolve``.

``calibrate_stream(..., label="answer_changed")`` calibrates on production traces (the trace
sink's, ``entropy_exit_integrations.traces``), which have no gold answer: each is graded against
its own full answer, so all are "correct" and a harmful exit is one whose forced answer differs
from the full run's. The refusal of one-class examples (``calibrate``) exists for calibrating a
correctness *signal*; it does not apply to this risk control of exits against the run's own
answer. The label is conservative: an exit that turns a wrong answer into a right one, or rewords
a right one, also counts as harmful, so the threshold errs toward exiting less.

Methods for the sequence threshold (bits; "H <= tau" reads as "confident"):

* ``mean``: mean entropy of the correct answers (the paper's default).
* ``info``: ``mu_c + sigma_c * ln(1 + |d|)``, d the Cohen's d between correct and incorrect.
* ``bayes``: the boundary that minimises (prior-weighted) misclassification on the examples.
* ``quantile``: the q-quantile of the correct answers' entropies (a precision-style target).
* ``deepconf``: label-free, DeepConf-style: the ``deepconf_keep`` percentile of all warm-up
  entropies (and, from token traces, DeepConf's own lowest-group-confidence threshold).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import numpy as np

from ..errors import EntropyExitWarning, PolicyError
from .guards import stop_indices
from .monitor import EntropyMonitor
from .policy import ExitPolicy, WatchedPhase
from .signals import (
    INCONCLUSIVE,
    LEVEL,
    NO_SIGNAL,
    STRONG,
    UNMEASURED,
    auroc,
    auroc_interval,
    format_power,
    lowest_group_confidence,
    power_table,
    verdict_of,
)
from .tokens import TokenLogprob

Method = Literal["mean", "info", "bayes", "quantile", "deepconf"]
METHODS: tuple[str, ...] = ("mean", "info", "bayes", "quantile", "deepconf")
Signal = float | Sequence[float] | Sequence[TokenLogprob] | np.ndarray
MIN_EXAMPLES = 4
INTERVAL = "Wilson score interval with the Birnbaum-McCarty variance bound"
_UNKNOWN_RULE = (
    "a token trace counts each as the largest entropy a token can have (as live runs do), "
    "a list of token entropies leaves it out of the mean"
)
GRADED = "graded"
"""The label of examples graded against a reference answer (right or wrong)."""
ANSWER_CHANGED = "answer_changed"
"""The label of production traces graded against their own full answer (all correct by
construction): a harmful exit is one that changes the answer (``traces.LABEL_ANSWER_CHANGED``)."""
LABELS = (GRADED, ANSWER_CHANGED)
ANSWER_CHANGED_NOTE = (
    "the label 'answer_changed' is conservative: an exit that turns a wrong answer into a right one, "
    "or rewords a right one, also counts as harmful, so the threshold errs toward exiting less"
)
RISK_METHOD = "fixed-sequence testing (Learn then Test) with exact binomial (Clopper-Pearson) bounds"

__all__ = [
    "ANSWER_CHANGED",
    "GRADED",
    "METHODS",
    "Calibration",
    "CalibrationExample",
    "ClassStats",
    "ExampleError",
    "ExitAnswer",
    "RiskControl",
    "StreamExample",
    "auroc",
    "calibrate",
    "calibrate_stream",
    "clopper_pearson_upper",
    "format_calibration",
    "live_stop_index",
    "lowest_group_confidence",
    "sequence_entropy",
    "stream_stop_indices",
]


def sequence_entropy(
    tokens: Sequence[TokenLogprob], *, k: int = 20, phase: WatchedPhase = "auto"
) -> float | None:
    """Mean token entropy over the watched tokens, computed by the same monitor as live runs."""
    return _sequence_stats(tokens, k=k, phase=phase).entropy


class _SequenceStats(NamedTuple):
    entropy: float | None
    watched: int
    unknown: int
    """Watched tokens without usable logprobs (missing, or malformed such as NaN): the monitor
    counts each as the largest entropy a token can have."""


def _sequence_stats(
    tokens: Sequence[TokenLogprob], *, k: int = 20, phase: WatchedPhase = "auto"
) -> _SequenceStats:
    policy = ExitPolicy(threshold=0.0, min_tokens=0, top_k=min(max(k, 1), 20), phase=phase)
    monitor = EntropyMonitor(policy)
    watched = unknown = 0
    for token in tokens:
        reason = monitor.observe(token).reason
        if reason != "not_watched":
            watched += 1
            unknown += reason == "unknown"
    return _SequenceStats(monitor.decision.entropy, watched, unknown)


@dataclass(frozen=True)
class CalibrationExample:
    """One graded generation: its sequence entropy (bits), whether it was right, tokens used.

    ``full_correct`` is, for the gate's risk control, whether the answer the gate would otherwise
    have returned (the extended step's) was right; unknown (None) counts as right, so a passed
    wrong answer always counts as harmful.
    """

    entropy: float
    correct: bool
    tokens: int
    lowest_group_confidence: float | None = None
    full_correct: bool | None = None


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
class RiskControl:
    """The risk-controlled threshold and the evidence for it.

    Attributes:
        risk: the bound asked for on the rate of harmful exits (per question).
        confidence: probability that the bound holds (over the draw of calibration examples).
        threshold: the largest tested threshold whose bound is at most ``risk``; None when none.
        upper_bound: exact upper confidence bound of the harmful-exit rate at ``threshold``.
        harmful: harmful exits at ``threshold`` among the ``n`` examples.
        unknown: exits whose answer was unknown (no forced answer); counted as harmful.
        exits: exits (gate: questions that pass the gate) at ``threshold``.
        saved_fraction: streaming: tokens saved (forced answers included) over the full runs';
            gate: the share of questions that skip the extended step.
        savings_of: what ``saved_fraction`` counts: ``"tokens"`` or ``"extended steps"``.
        candidates: thresholds tested before the sequence stopped (of ``grid`` in all).
        needed: when no threshold qualifies, examples that would let the most cautious one
            qualify at its observed harm rate (None: more examples would not help).
        detail: the result in one sentence.
        table: per tested threshold: (threshold, exits, harmful, upper bound, saved fraction).
    """

    risk: float
    confidence: float
    n: int
    threshold: float | None
    upper_bound: float | None
    harmful: int | None
    unknown: int
    exits: int | None
    saved_fraction: float | None
    savings_of: str
    candidates: int
    grid: int
    needed: int | None
    detail: str
    method: str = RISK_METHOD
    table: list[tuple[float, int, int, float, float]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RiskControl:
        values = dict(data)
        values["table"] = [tuple(row) for row in values.get("table", [])]
        return cls(**values)


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold with the evidence behind it; saved as a JSON profile per model.

    ``kind`` says which quantity ``tau`` belongs to: ``"sequence"`` (the whole generation's mean
    token entropy: the gate, and ``ExitPolicy(aggregation="mean")``) or ``"stream"`` (the
    streaming policy described by ``aggregation``, ``window``, ``min_tokens``, ``patience`` and
    ``phase``). ``ExitPolicy.from_calibration`` refuses a policy of another shape.
    """

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
    length_auroc_ci: tuple[float, float] | None = None
    interval: str = INTERVAL
    level: float = LEVEL
    examples_needed: int | None = None
    kind: str = "sequence"
    aggregation: str = "mean"
    window: int | None = None
    min_tokens: int | None = None
    patience: int | None = None
    phase: str | None = None
    risk: RiskControl | None = None
    watched_tokens: int = 0
    unknown_tokens: int = 0
    """Watched tokens without usable logprobs (missing, or not finite such as NaN): see
    ``_UNKNOWN_RULE`` for how they count."""
    label: str = GRADED
    """``"graded"`` (against reference answers) or ``"answer_changed"`` (production traces graded
    against their own full answer: one class by construction, the risk control is the evidence)."""

    @property
    def _one_class_refused(self) -> bool:
        """One class, and not a risk control of exits against the runs' own answers."""
        return self.one_class and not (self.label == ANSWER_CHANGED and self.risk is not None)

    @property
    def one_class(self) -> bool:
        """True when every example was right, or every one wrong: nothing can be tested."""
        return self.correct.n == 0 or self.incorrect.n == 0

    @property
    def usable(self) -> bool:
        """False when the examples were all right or all wrong, when the verdict is "no signal"
        (and no risk-controlled threshold overrides it), or when a risk-controlled calibration
        found no threshold."""
        if self._one_class_refused:
            return False
        if self.risk is not None:
            return self.risk.threshold is not None
        return self.verdict != NO_SIGNAL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        values = dict(data)
        values["correct"] = ClassStats(**values["correct"])
        values["incorrect"] = ClassStats(**values["incorrect"])
        for key in ("auroc_ci", "length_auroc_ci"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if values.get("risk") is not None:
            values["risk"] = RiskControl.from_dict(values["risk"])
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

    def summary(self, *, power: bool = True) -> str:
        """Plain multi-line text: class statistics, AUROC, tau per method, verdict, power, risk."""
        return format_calibration(self, power=power)

    def policy_shape(self) -> dict[str, Any]:
        """The ExitPolicy fields this threshold was calibrated for."""
        if self.kind == "sequence":
            return {"aggregation": "mean"}
        return {
            "aggregation": self.aggregation,
            "window": self.window,
            "min_tokens": self.min_tokens,
            "patience": self.patience,
            "phase": self.phase,
        }

    def policy_kwargs(self, *, allow_weak: bool = False, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """ExitPolicy arguments from this calibration (what ``ExitPolicy.from_calibration`` uses).

        Raises ``PolicyError`` when the examples were all right or all wrong, when the overrides
        ask for another aggregate than the one the threshold was calibrated for, when a
        risk-controlled calibration found no threshold, or when the verdict is "no signal"
        (unless ``allow_weak``, which warns instead).
        """
        overrides = dict(overrides)
        if self._one_class_refused:
            which = "correct" if self.incorrect.n == 0 else "wrong"
            raise PolicyError(
                f"calibration for {self.model!r} has only {which} examples ({self.correct.n} correct, "
                f"{self.incorrect.n} incorrect): its threshold was never tested against the other kind; "
                "calibrate again on examples with both right and wrong answers (this refusal is for "
                "a correctness signal; production traces graded against their own answer are "
                "risk-calibrated with calibrate_stream(..., label='answer_changed'))"
            )
        shape = self.policy_shape()
        mismatched = {
            name: (overrides[name], wanted)
            for name, wanted in shape.items()
            if name in overrides and overrides[name] != wanted
        }
        if mismatched:
            asked = ", ".join(f"{k}={v[0]!r}" for k, v in mismatched.items())
            meant = ", ".join(f"{k}={v!r}" for k, v in shape.items())
            if self.kind == "sequence":
                hint = (
                    "this threshold is for the whole-sequence mean entropy; a sliding window or EMA "
                    "varies far more and would exit almost at once. Calibrate the streaming policy on "
                    "recorded traces (calibrate_stream, or `entropy-exit calibrate --traces FILE "
                    "--aggregation window --window N --min-tokens M`)"
                )
            else:
                hint = "calibrate that policy shape on the traces, or use the calibrated one"
            raise PolicyError(f"calibration for {self.model!r} was made for {meant}, not {asked}: {hint}")
        if self.risk is not None and self.risk.threshold is None and "threshold" not in overrides:
            raise PolicyError(
                f"calibration for {self.model!r} found no threshold with a harmful-exit rate "
                f"bounded by {self.risk.risk:.0%} at {self.risk.confidence:.0%} confidence: "
                f"{self.risk.detail}"
            )
        certified = self.risk is not None and self.risk.threshold is not None
        if self.verdict == NO_SIGNAL and not certified:
            message = (
                f"calibration for {self.model!r} found no signal ({self.verdict_detail}); "
                "an entropy exit would cut answers at random"
            )
            if not allow_weak:
                raise PolicyError(message + "; pass allow_weak=True to use it anyway")
            warnings.warn("USING A NO-SIGNAL CALIBRATION: " + message, EntropyExitWarning, stacklevel=3)
        elif self.verdict != STRONG and not certified:
            warnings.warn(
                f"calibration for {self.model!r}: {self.verdict} ({self.verdict_detail})",
                EntropyExitWarning,
                stacklevel=3,
            )
        values: dict[str, Any] = {
            **{k: v for k, v in shape.items() if v is not None},
            "threshold": max(self.tau, 0.0),
            "top_k": min(max(self.k, 1), 20),
            "calibrated_for": self.model or "unknown",
            "expected_tokens": self.expected_tokens if self.expected_tokens > 0 else None,
        }
        values.update(overrides)
        return values


class ExampleError(PolicyError):
    """One calibration example cannot be used; ``index`` is its position (0-based) in the input."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"example {index + 1}: {reason}")


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _finite_lowest_group_confidence(tokens: Sequence[TokenLogprob], window: int) -> float | None:
    usable = [t for t in tokens if t.top_logprobs and all(math.isfinite(v) for v in t.top_logprobs)]
    value = lowest_group_confidence(usable, window)
    return value if value is not None and math.isfinite(value) else None


def _example(item: Any, k: int, window: int, index: int) -> tuple[CalibrationExample, int, int]:
    """The example, its watched tokens and how many of them had no usable logprobs."""
    if isinstance(item, CalibrationExample):
        example = item
        if not _is_bool(example.correct):
            raise ExampleError(index, f"correct must be True or False, got {example.correct!r}")
        if not math.isfinite(example.entropy):
            raise ExampleError(index, f"its entropy is {example.entropy!r}, not a finite number of bits")
        return example, example.tokens, 0
    if len(item) == 2:
        signal, correct = item
        tokens_used: int | None = None
    else:
        signal, correct, tokens_used = item[0], item[1], item[2]
    if not _is_bool(correct):
        raise ExampleError(
            index, f"correct must be True or False, got {correct!r} ({type(correct).__name__})"
        )
    lowest = None
    entropy: float | None
    watched = unknown = 0
    if isinstance(signal, (int, float, np.floating)) and not isinstance(signal, bool):
        entropy = float(signal)
    elif len(signal) and isinstance(signal[0], TokenLogprob):
        signal = cast("Sequence[TokenLogprob]", signal)  # a list of one kind: the first item says which
        with warnings.catch_warnings():  # malformed tokens are counted and reported once, below
            warnings.filterwarnings("ignore", message="malformed logprobs", category=EntropyExitWarning)
            stats = _sequence_stats(signal, k=k)
        entropy, watched, unknown = stats
        if watched and unknown == watched:
            raise ExampleError(
                index,
                f"none of its {watched} watched tokens has usable logprobs (missing, or not finite such "
                "as NaN): its entropy cannot be measured; record it again with top_logprobs, or drop it",
            )
        lowest = _finite_lowest_group_confidence(signal, window)
        tokens_used = len(signal) if tokens_used is None else tokens_used
    else:
        values = np.asarray(signal, dtype=float)
        known = values[np.isfinite(values)]
        watched, unknown = int(values.size), int(values.size - known.size)
        if values.size and not known.size:
            raise ExampleError(index, f"none of its {values.size} token entropies is a finite number")
        entropy = float(known.mean()) if known.size else None
        tokens_used = int(values.size) if tokens_used is None else tokens_used
    if entropy is None or not math.isfinite(entropy):
        raise ExampleError(index, "it has no known token entropy (no logprobs?)")
    if tokens_used is None:
        raise ExampleError(index, "an example given as a bare entropy needs its tokens used: (H, correct, n)")
    return CalibrationExample(entropy, bool(correct), int(tokens_used), lowest), watched, unknown


def _examples(examples: Iterable[Any], k: int, window: int) -> tuple[list[CalibrationExample], int, int]:
    """Checked examples, their watched tokens and those without usable logprobs (all examples)."""
    items: list[CalibrationExample] = []
    watched = unknown = 0
    for index, item in enumerate(examples):
        example, seen, missing = _example(item, k, window, index)
        items.append(example)
        watched += seen
        unknown += missing
    return items, watched, unknown


def _check_both_classes(items: Sequence[CalibrationExample]) -> None:
    right = sum(e.correct for e in items)
    if right == 0 or right == len(items):
        which, need = (
            ("correct", "wrong (harder questions)") if right else ("wrong", "right (easier questions)")
        )
        raise PolicyError(
            f"all {len(items)} calibration examples are {which}: no threshold (of any method, the "
            "risk-controlled one included) can be set or tested without both right and wrong answers; "
            f"add examples the model gets {need}. (This refusal is for calibrating a correctness signal, "
            "not for the risk that an exit changes the run's own answer: production traces from a trace "
            "sink, labelled answer_changed and all correct by construction, are calibrated with "
            "calibrate_stream(..., label='answer_changed') or `entropy-exit calibrate --traces FILE "
            "--risk R`.)"
        )


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


# --- exact binomial bounds and fixed-sequence testing -------------------------------------------


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed exactly in log space."""
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    if k < 0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q
        for j in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """Exact one-sided upper confidence bound of a rate seen ``k`` times in ``n`` (Clopper-Pearson).

    The p with P(Binomial(n, p) <= k) = 1 - confidence; 1.0 when ``k == n``.
    """
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    delta = 1.0 - confidence
    low, high = k / n, 1.0
    for _ in range(80):
        mid = (low + high) / 2
        if _binom_cdf(k, n, mid) > delta:
            low = mid
        else:
            high = mid
    return high


def examples_needed(rate: float, risk: float, confidence: float, *, limit: int = 100_000) -> int | None:
    """Smallest n at which ``ceil(rate * n)`` harmful exits still have an upper bound <= ``risk``.

    None when ``rate >= risk`` (no sample size is enough) or past ``limit``.
    """
    if rate >= risk:
        return None
    if rate == 0.0:
        return math.ceil(math.log(1.0 - confidence) / math.log1p(-risk))
    n = max(1, math.ceil(math.log(1.0 - confidence) / math.log1p(-risk)))
    step = max(1, n // 8)
    while n <= limit:
        if clopper_pearson_upper(math.ceil(rate * n - 1e-9), n, confidence) <= risk:
            # step back to the smallest such n
            while (
                n > 1 and clopper_pearson_upper(math.ceil(rate * (n - 1) - 1e-9), n - 1, confidence) <= risk
            ):
                n -= 1
            return n
        n += step
    return None


def _check_risk(risk: float, confidence: float) -> None:
    if not 0.0 < risk < 1.0:
        raise PolicyError(f"risk must be in (0, 1), got {risk!r}")
    if not 0.0 < confidence < 1.0:
        raise PolicyError(f"confidence must be in (0, 1), got {confidence!r}")


class _Step(NamedTuple):
    threshold: float
    exits: int
    harmful: int
    unknown: int
    saved: float


def _fixed_sequence(
    steps: Iterable[_Step], *, n: int, risk: float, confidence: float, grid: int, savings_of: str
) -> RiskControl:
    """Test thresholds in order (most cautious first) until one fails; keep the last that passed."""
    table: list[tuple[float, int, int, float, float]] = []
    chosen: _Step | None = None
    chosen_bound: float | None = None
    first: _Step | None = None
    for step in steps:
        bound = clopper_pearson_upper(step.harmful, n, confidence)
        table.append((step.threshold, step.exits, step.harmful, bound, step.saved))
        if first is None:
            first = step
        if bound > risk:
            break
        chosen, chosen_bound = step, bound
    if chosen is not None:
        if savings_of == "tokens":
            gain = f"{chosen.exits} exits, saving {chosen.saved:.0%} of the tokens (forced answers included)"
        else:
            gain = f"{chosen.exits} questions pass, skipping the extended step on {chosen.saved:.0%} of them"
        detail = (
            f"threshold {chosen.threshold:.4f} bits: {chosen.harmful} harmful exits in {n} questions, "
            f"{confidence:.0%} upper bound {chosen_bound:.1%} <= {risk:.0%}; {gain}"
        )
        if chosen.unknown:
            detail += f" ({chosen.unknown} exits without a known answer counted as harmful)"
        return RiskControl(
            risk,
            confidence,
            n,
            chosen.threshold,
            chosen_bound,
            chosen.harmful,
            chosen.unknown,
            chosen.exits,
            chosen.saved,
            savings_of,
            len(table),
            grid,
            None,
            detail,
            table=table,
        )
    if first is None:
        return RiskControl(
            risk, confidence, n, None, None, None, 0, None, None, savings_of, 0, grid, None,
            "no candidate threshold: no example ever reaches an exit",
        )  # fmt: skip
    rate = first.harmful / n
    needed = examples_needed(rate, risk, confidence)
    floor = clopper_pearson_upper(first.harmful, n, confidence)
    detail = (
        f"no threshold qualifies with {n} examples: the most cautious one ({first.threshold:.4f} bits, "
        f"{first.exits} exits) has {first.harmful} harmful, upper bound {floor:.1%} > {risk:.0%}"
    )
    if first.unknown:
        detail += f" ({first.unknown} exits without a known answer counted as harmful)"
    if needed is not None:
        detail += f"; about {needed} examples at that harm rate would qualify it"
    else:
        detail += f"; its harm rate {rate:.1%} is at or above {risk:.0%}, so more examples will not help"
    return RiskControl(
        risk, confidence, n, None, None, first.harmful, first.unknown, first.exits, None,
        savings_of, len(table), grid, needed, detail, table=table,
    )  # fmt: skip


def _gate_risk(items: Sequence[CalibrationExample], risk: float, confidence: float) -> RiskControl:
    h = np.array([e.entropy for e in items])
    correct = np.array([e.correct for e in items])
    full = np.array([True if e.full_correct is None else e.full_correct for e in items])
    at_stake = ~correct & full
    grid = np.unique(h)

    def steps() -> Iterable[_Step]:
        for tau in grid:
            passes = h <= tau
            yield _Step(
                float(tau), int(passes.sum()), int((passes & at_stake).sum()), 0, float(passes.mean())
            )

    return _fixed_sequence(
        steps(), n=len(items), risk=risk, confidence=confidence, grid=grid.size, savings_of="extended steps"
    )


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
    risk: float | None = None,
    confidence: float = 0.9,
) -> Calibration:
    """Set the sequence-mean threshold from graded examples and say how much it can be trusted.

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
        risk: when given, ``tau`` is the largest threshold whose rate of harmful gate passes
            (a passed wrong answer whose extended answer would have been right; unknown extended
            answers count as right) has a ``confidence`` upper bound at most ``risk``;
            ``method`` becomes ``"risk"`` and ``risk`` holds the evidence. When no threshold
            qualifies, ``tau`` is 0 and ``ExitPolicy.from_calibration`` refuses the profile.
        confidence: probability that the risk bound holds.
    """
    if method not in METHODS:
        raise PolicyError(f"method must be one of {METHODS}, got {method!r}")
    if not 0.0 < q < 1.0 or not 0.0 < deepconf_keep < 1.0:
        raise PolicyError("q and deepconf_keep must be in (0, 1)")
    if risk is not None:
        _check_risk(risk, confidence)
    items, watched, unknown = _examples(examples, k, deepconf_window)
    if len(items) < MIN_EXAMPLES:
        raise PolicyError(f"calibration needs at least {MIN_EXAMPLES} examples, got {len(items)}")
    _check_both_classes(items)
    if unknown:
        warnings.warn(
            f"{unknown} of {watched} watched tokens had no usable logprobs (missing, or not finite such "
            f"as NaN) and count as unknown: {_UNKNOWN_RULE}",
            EntropyExitWarning,
            stacklevel=2,
        )
    h = np.array([e.entropy for e in items])
    ok = np.array([e.correct for e in items])
    used = np.array([e.tokens for e in items], dtype=float)
    c, i = h[ok], h[~ok]
    taus: dict[str, float | None] = {"deepconf": float(np.quantile(h, deepconf_keep))}
    fallbacks: dict[str, str] = {}
    taus["mean"] = float(c.mean())
    taus["quantile"] = float(np.quantile(c, q))
    taus["info"] = _tau_info(c, i)
    taus["bayes"] = _tau_bayes(c, i, priors)
    broken = {name: value for name, value in taus.items() if value is not None and not math.isfinite(value)}
    if broken:  # cannot happen with finite entropies; never hand out a NaN threshold
        raise PolicyError(f"calibration produced non-finite thresholds {broken}")
    score = auroc(-c, -i)
    length = auroc(-used[ok], -used[~ok])
    n_min = min(c.size, i.size)
    ci = _interval(score, n_min)
    length_ci = _interval(length, n_min)
    verdict, detail, needed = verdict_of(score, ci, length, int(c.size), int(i.size), length_ci)
    lows = [
        e.lowest_group_confidence
        for e in items
        if e.lowest_group_confidence is not None and math.isfinite(e.lowest_group_confidence)
    ]
    deepconf = float(np.quantile(lows, 1 - deepconf_keep)) if lows else None
    control = _gate_risk(items, risk, confidence) if risk is not None else None
    tau = float(taus[method] or 0.0)
    if control is not None:
        taus["risk"] = control.threshold
        tau = control.threshold if control.threshold is not None else 0.0
    return Calibration(
        tau=tau,
        method="risk" if control is not None else method,
        n=len(items),
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
        length_auroc_ci=length_ci,
        examples_needed=needed,
        risk=control,
        watched_tokens=watched,
        unknown_tokens=unknown,
    )


def _interval(value: float | None, n_min: int) -> tuple[float, float] | None:
    if value is None or n_min == 0:
        return None
    low, high = auroc_interval(value, n_min)
    return float(low), float(high)


# --- streaming policies: exit points replayed over traces ----------------------------------------


def live_stop_index(tokens: Sequence[TokenLogprob], exit_index: int) -> int:
    """Where a live stream stops after the monitor exits at ``exit_index``.

    A live run never cuts a number in half (``core.guards``, the rule ``ExitSession`` applies).
    Returns ``len(tokens)`` or more when the stream would have ended first.
    """
    if exit_index >= len(tokens):
        return exit_index
    return stop_indices(tokens)[exit_index]


@dataclass(frozen=True)
class _Replay:
    """One trace under a policy shape: per watched token, its index, aggregate and eligibility."""

    index: np.ndarray
    aggregate: np.ndarray
    eligible: np.ndarray
    stop_at: np.ndarray
    length: int


def _replay(tokens: Sequence[TokenLogprob], policy: ExitPolicy) -> _Replay:
    monitor = EntropyMonitor(dataclasses.replace(policy, threshold=0.0))
    index: list[int] = []
    aggregate: list[float] = []
    eligible: list[bool] = []
    for position, token in enumerate(tokens):
        decision = monitor.observe(token)
        if decision.reason == "not_watched":
            continue
        index.append(position)
        aggregate.append(math.inf if decision.entropy is None else decision.entropy)
        eligible.append(decision.reason == "uncertain")  # ready, known, past min_tokens
    stop_at = np.array([*stop_indices(tokens), len(tokens)])
    return _Replay(
        np.asarray(index, dtype=int),
        np.asarray(aggregate, dtype=float),
        np.asarray(eligible, dtype=bool),
        stop_at,
        len(tokens),
    )


def _stops(replay: _Replay, thresholds: np.ndarray, patience: int) -> np.ndarray:
    """Live stop index per threshold (-1: the run is never cut)."""
    if replay.index.size == 0:
        return np.full(thresholds.shape, -1)
    confident = replay.eligible[None, :] & (replay.aggregate[None, :] < thresholds[:, None])
    if patience > 1:
        runs = np.concatenate([np.zeros((confident.shape[0], 1), int), np.cumsum(confident, axis=1)], axis=1)
        full = (runs[:, patience:] - runs[:, :-patience]) == patience
        hit = np.concatenate([np.zeros((confident.shape[0], patience - 1), bool), full], axis=1)
    else:
        hit = confident
    found = hit.any(axis=1)
    exits = replay.index[hit.argmax(axis=1)]
    stops = replay.stop_at[exits]
    return np.where(found & (stops < replay.length - 1), stops, -1)


def stream_stop_indices(
    tokens: Sequence[TokenLogprob], policy: ExitPolicy, thresholds: Sequence[float]
) -> list[int | None]:
    """Where a live stream under ``policy`` with each threshold stops (None: never cut early).

    One monitor pass over the trace, then every threshold at once; equal to running the monitor
    with each threshold and applying ``live_stop_index``.
    """
    stops = _stops(_replay(tokens, policy), np.asarray(thresholds, dtype=float), policy.patience)
    return [None if s < 0 else int(s) for s in stops]


def _record_lows(replay: _Replay) -> np.ndarray:
    values = replay.aggregate[replay.eligible]
    if values.size == 0:
        return values
    running = np.minimum.accumulate(values)
    new = np.ones(values.size, dtype=bool)
    new[1:] = running[1:] < running[:-1]
    return values[new]


def _candidates(replays: Sequence[_Replay], limit: int) -> np.ndarray:
    lows = np.concatenate([_record_lows(r) for r in replays] + [np.empty(0)])
    lows = np.unique(np.round(lows[np.isfinite(lows)], 12))  # one candidate per value, not per float
    if lows.size == 0:
        return lows
    upper = np.append(lows[1:], lows[-1] * 1.001 + 1e-6)
    grid = (lows + upper) / 2  # includes this low, not the next one
    if grid.size > limit:
        grid = grid[np.unique(np.linspace(0, grid.size - 1, limit).round().astype(int))]
    return grid


@dataclass(frozen=True)
class StreamExample:
    """One recorded full generation (never cut) and whether its final answer was right."""

    tokens: Sequence[TokenLogprob]
    correct: bool


class ExitAnswer(NamedTuple):
    """The answer a stream cut at some token would have ended with.

    ``correct`` is None when unknown (no forced answer available); ``forced_tokens`` is what
    forcing it cost (0 when the answer was already in the text).
    """

    correct: bool | None
    forced_tokens: int = 0


Resolver = Callable[[Sequence[tuple[int, int]]], Mapping[tuple[int, int], ExitAnswer]]
"""Given (example index, stop token index) pairs, the answer at each such exit."""


def calibrate_stream(
    examples: Sequence[StreamExample | tuple[Sequence[TokenLogprob], bool]],
    policy: ExitPolicy,
    resolve: Resolver,
    *,
    risk: float = 0.05,
    confidence: float = 0.9,
    model: str | None = None,
    max_candidates: int = 48,
    label: str = GRADED,
) -> Calibration:
    """Calibrate a streaming policy's threshold on recorded traces, with a bounded harm rate.

    Candidate thresholds are where some trace's exit point moves (record lows of the policy's
    own aggregate, replayed by the monitor, at most ``max_candidates`` of them). They are tested
    from the most cautious up; at each, every trace's live stop point is computed and, for traces
    whose full run was right, ``resolve`` says whether the answer at that exit (forced, or
    already in the text) is still right. A wrong or unknown one is a harmful exit. The largest
    threshold whose harmful-exit rate has an exact ``confidence`` upper bound at most ``risk``
    becomes ``tau``; fixed-sequence testing keeps the bound valid across the candidates.

    ``policy`` gives the shape (aggregation, window, min_tokens, patience, phase, top_k); its
    threshold is ignored. The result's ``kind`` is ``"stream"``: ``ExitPolicy.from_calibration``
    builds that shape and refuses another.

    ``label="answer_changed"``: the examples are production traces graded against their own full
    answer (every ``correct`` is True), and ``resolve`` says whether the answer at an exit is the
    same as the full run's. No wrong answers are needed (the one-class refusal is for correctness
    signals): the class statistics cover one class and the verdict is unmeasured; the bound is
    on the rate of exits that change the answer, a conservative label (``ANSWER_CHANGED_NOTE``).
    """
    _check_risk(risk, confidence)
    if label not in LABELS:
        raise PolicyError(f"label must be one of {LABELS}, got {label!r}")
    items = [e if isinstance(e, StreamExample) else StreamExample(e[0], e[1]) for e in examples]
    for index, item in enumerate(items):
        if not _is_bool(item.correct):
            raise ExampleError(index, f"correct must be True or False, got {item.correct!r}")
    if len(items) < MIN_EXAMPLES:
        raise PolicyError(f"calibration needs at least {MIN_EXAMPLES} traces, got {len(items)}")
    if any(not item.tokens for item in items):
        raise PolicyError("every trace needs its tokens (with top logprobs)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EntropyExitWarning)  # phase fallback warnings, once per trace
        if label == ANSWER_CHANGED:
            base = _answer_changed_base(items, model=model, k=policy.top_k)
        else:
            base = calibrate([(item.tokens, item.correct) for item in items], model=model, k=policy.top_k)
        replays = [_replay(item.tokens, policy) for item in items]
    grid = _candidates(replays, max_candidates)
    stops = np.stack([_stops(r, grid, policy.patience) for r in replays]) if grid.size else None
    full_right = np.array([item.correct for item in items])
    lengths = np.array([len(item.tokens) for item in items], dtype=float)
    answers: dict[tuple[int, int], ExitAnswer] = {}

    def steps() -> Iterable[_Step]:
        assert stops is not None
        for column, tau in enumerate(grid):
            exits = stops[:, column]
            needed = [
                (i, int(s))
                for i, s in enumerate(exits)
                if s >= 0 and full_right[i] and (i, int(s)) not in answers
            ]
            if needed:
                got = resolve(needed)
                for pair in needed:
                    answers[pair] = got.get(pair, ExitAnswer(None))
            harmful = unknown = 0
            forced: list[int] = []
            for i, s in enumerate(exits):
                if s < 0 or not full_right[i]:
                    continue
                answer = answers[(i, int(s))]
                forced.append(answer.forced_tokens)
                harmful += answer.correct is not True
                unknown += answer.correct is None
            cut = exits >= 0
            mean_forced = float(np.mean(forced)) if forced else 0.0
            used = np.where(cut, exits + 1 + mean_forced, lengths)
            saved = float((lengths.sum() - used.sum()) / lengths.sum())
            yield _Step(float(tau), int(cut.sum()), harmful, unknown, saved)

    control = _fixed_sequence(
        steps() if grid.size else iter(()),
        n=len(items),
        risk=risk,
        confidence=confidence,
        grid=int(grid.size),
        savings_of="tokens",
    )
    return dataclasses.replace(
        base,
        tau=control.threshold if control.threshold is not None else 0.0,
        method="risk",
        taus={"risk": control.threshold},
        fallbacks={},
        kind="stream",
        aggregation=policy.aggregation,
        window=policy.window,
        min_tokens=policy.min_tokens,
        patience=policy.patience,
        phase=policy.phase,
        risk=control,
        label=label,
    )


def _answer_changed_base(items: Sequence[StreamExample], *, model: str | None, k: int) -> Calibration:
    """Class statistics of production traces (one class: each is right against its own answer)."""
    wrong = [index for index, item in enumerate(items) if not item.correct]
    if wrong:
        raise ExampleError(
            wrong[0],
            "correct is False, but a trace labelled answer_changed is graded against its own answer "
            "and is correct by construction",
        )
    examples, watched, unknown = _examples([(item.tokens, True) for item in items], k, 32)
    h = np.array([e.entropy for e in examples])
    used = np.array([e.tokens for e in examples], dtype=float)
    return Calibration(
        tau=0.0,
        method="risk",
        n=len(examples),
        correct=ClassStats.of(h, used),
        incorrect=ClassStats.of(h[:0], used[:0]),
        auroc=None,
        auroc_ci=None,
        length_auroc=None,
        verdict=UNMEASURED,
        verdict_detail="production traces are graded against their own answer, so there is no wrong "
        "answer to tell apart; the risk control bounds how often an exit changes the answer",
        expected_tokens=float(used.mean()),
        k=k,
        model=model,
        watched_tokens=watched,
        unknown_tokens=unknown,
        label=ANSWER_CHANGED,
    )


# --- report ---------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _span(interval: tuple[float, float] | None) -> str:
    return "n/a" if interval is None else f"{interval[0]:.2f}-{interval[1]:.2f}"


def format_calibration(cal: Calibration, *, power: bool = True) -> str:
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
    lines.append(
        f"  AUROC of -entropy: {_num(cal.auroc, 2)} ({cal.level:.0%} interval {_span(cal.auroc_ci)}); "
        f"length-only AUROC: {_num(cal.length_auroc, 2)} ({_span(cal.length_auroc_ci)})"
    )
    lines.append(f"    interval: {cal.interval}")
    if cal.kind == "sequence":
        for name in METHODS:
            mark = " <- tau" if name == cal.method else ""
            via = f" (fallback: {cal.fallbacks[name]})" if name in cal.fallbacks else ""
            lines.append(f"  tau[{name}] = {_num(cal.taus.get(name))}{via}{mark}")
        if cal.deepconf_threshold is not None:
            lines.append(
                f"  DeepConf lowest-group-confidence threshold: {cal.deepconf_threshold:.3f} "
                f"(window {cal.deepconf_window})"
            )
        lines.append("  threshold for: the whole-sequence mean entropy (the gate, aggregation='mean')")
    else:
        shape = ", ".join(f"{k}={v}" for k, v in cal.policy_shape().items())
        lines.append(f"  threshold for: the streaming policy {shape}")
    lines.append(f"  expected tokens: {cal.expected_tokens:.1f}")
    if cal.unknown_tokens:
        lines.append(
            f"  unknown tokens: {cal.unknown_tokens} of {cal.watched_tokens} watched tokens had no usable "
            f"logprobs (missing, or not finite such as NaN): {_UNKNOWN_RULE}"
        )
    about = "" if cal.kind == "sequence" else " (of the sequence mean entropy)"
    lines.append(f"  verdict{about}: {cal.verdict} - {cal.verdict_detail}")
    if cal.label == ANSWER_CHANGED:
        lines.append(
            "  label: answer_changed (production traces graded against their own full answer; a "
            "harmful exit is one whose forced answer differs from the full run's): " + ANSWER_CHANGED_NOTE
        )
    if power and cal.correct.n and cal.incorrect.n:
        share = round(min(max(cal.correct.n / cal.n, 0.1), 0.9), 1)
        lines.append(format_power(share, power_table(share)))
    if cal.risk is not None:
        r = cal.risk
        lines.append(
            f"  risk control ({r.risk:.0%} harmful exits at {r.confidence:.0%} confidence; {r.method}):"
        )
        lines.append(f"    {r.detail}")
        lines.append(f"    thresholds tested: {r.candidates} of {r.grid}")
        lines.append(f"    risk-controlled tau: {_num(r.threshold, 4)}")
    elif cal.verdict == INCONCLUSIVE:
        lines.append("  (use risk=... / --risk for a threshold whose harm is bounded whatever the verdict)")
    return "\n".join(lines)
