"""ExitPolicy: when a stream counts as confident enough to stop."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ..errors import EntropyExitWarning, PolicyError

Aggregation = Literal["mean", "window", "ema"]
WatchedPhase = Literal["auto", "reasoning", "answer", "both"]
OnMissing = Literal["raise", "pass_through"]

_AGGREGATIONS = ("mean", "window", "ema")
_PHASES = ("auto", "reasoning", "answer", "both")
_ON_MISSING = ("raise", "pass_through")


def _entropy_ceiling(top_k: int, tail_aware: bool) -> float | None:
    """The largest entropy (bits) ``top_k`` candidates can have, or None when nothing is measured.

    ``log2(top_k)`` for the renormalised estimator (None for ``top_k=1``: a single candidate is
    read as unknown, never as a measurement); ``log2(top_k + 1)`` with ``tail_aware`` (the missing
    mass is one more outcome). An aggregate reaches it only when every token is perfectly flat,
    so a threshold at or above it exits on every call.
    """
    if tail_aware:
        return math.log2(top_k + 1)
    return math.log2(top_k) if top_k > 1 else None


@dataclass(frozen=True)
class ExitPolicy:
    """The rule that turns a stream of token entropies into "stop now".

    Args:
        threshold: exit when the aggregate entropy (bits) is below this; 0 never exits (monitor
            only, for recording traces and reports). There is no default:
            the right value differs per model; get it from ``calibrate`` and
            ``ExitPolicy.from_calibration``. A hand-set value is reported as uncalibrated. A
            threshold at or above ``log2(top_k)`` (``log2(top_k + 1)`` with ``tail_aware``), the
            largest entropy ``top_k`` candidates can have, exits on every call once
            ``min_tokens`` are watched: it is accepted (tests use it) with an
            ``EntropyExitWarning``.
        aggregation: ``"mean"`` over all watched tokens so far (the paper's sequence mean),
            ``"window"`` sliding mean of the last ``window`` tokens, or ``"ema"`` exponential moving
            average with span ``window``.
        window: window size (``"window"``) or EMA span (``"ema"``).
        min_tokens: watched tokens to see before any exit.
        patience: consecutive confident tokens needed to exit.
        phase: which tokens are watched: ``"auto"`` (reasoning tokens when the model emits any,
            else the answer), ``"reasoning"`` (warns once and falls back to the answer when the
            model has no reasoning phase), ``"answer"``, or ``"both"``.
        top_k: candidates to request per token (OpenAI allows up to 20).
        tail_aware: use the tail-aware entropy estimator instead of the renormalised one.
        on_missing: a stream without logprobs raises ``LogprobsUnavailableError`` (``"raise"``)
            or passes through unmonitored with a warning (``"pass_through"``); never a false exit.
        calibrated_for: model id of the calibration this threshold came from, if any.
        expected_tokens: typical generation length from calibration, for savings reports.
    """

    threshold: float
    aggregation: Aggregation = "mean"
    window: int = 32
    min_tokens: int = 16
    patience: int = 1
    phase: WatchedPhase = "auto"
    top_k: int = 20
    tail_aware: bool = False
    on_missing: OnMissing = "raise"
    calibrated_for: str | None = None
    expected_tokens: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise PolicyError(f"threshold must be a number of bits, got {self.threshold!r}")
        if not math.isfinite(self.threshold) or self.threshold < 0:
            raise PolicyError(f"threshold must be finite and >= 0 bits, got {self.threshold!r}")
        if self.aggregation not in _AGGREGATIONS:
            raise PolicyError(f"aggregation must be one of {_AGGREGATIONS}, got {self.aggregation!r}")
        if self.phase not in _PHASES:
            raise PolicyError(f"phase must be one of {_PHASES}, got {self.phase!r}")
        if self.on_missing not in _ON_MISSING:
            raise PolicyError(f"on_missing must be one of {_ON_MISSING}, got {self.on_missing!r}")
        for name, low in (("window", 1), ("min_tokens", 0), ("patience", 1), ("top_k", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PolicyError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.top_k > 20:
            raise PolicyError(f"top_k must be <= 20 (the OpenAI API maximum), got {self.top_k}")
        if self.expected_tokens is not None and not self.expected_tokens > 0:
            raise PolicyError(f"expected_tokens must be > 0, got {self.expected_tokens!r}")
        ceiling = _entropy_ceiling(self.top_k, self.tail_aware)
        if self.threshold > 0 and ceiling is not None and self.threshold >= ceiling:
            bound = f"log2({self.top_k + 1}) with tail_aware" if self.tail_aware else f"log2({self.top_k})"
            warnings.warn(
                f"ExitPolicy(threshold={self.threshold:g}) is at or above {ceiling:.4g} bits ({bound}), the "
                f"largest entropy {self.top_k} candidates can have: every call exits as soon as "
                f"min_tokens={self.min_tokens} tokens are watched. Calibrate the threshold (calibrate, then "
                "ExitPolicy.from_calibration) or set a lower one",
                EntropyExitWarning,
                stacklevel=3,  # __post_init__ <- the dataclass __init__ <- the caller
            )

    @property
    def is_calibrated(self) -> bool:
        return self.calibrated_for is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExitPolicy:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"unknown ExitPolicy fields: {unknown}")
        return cls(**data)

    @classmethod
    def from_calibration(cls, calibration: Any, *, allow_weak: bool = False, **overrides: Any) -> ExitPolicy:
        """A policy with the calibrated threshold, tagged with its model and length.

        ``calibration`` is a ``Calibration`` (or anything with its ``policy_kwargs`` method,
        which holds the rules; this module does not import the calibration). The threshold is
        the one calibrated for the policy's aggregation: a mismatch (e.g. a sequence-mean
        threshold for a sliding window) raises ``PolicyError``. Refuses a calibration whose
        verdict is "no signal" unless ``allow_weak=True``, which warns loudly instead; weak,
        inconclusive or unmeasured signals warn.
        """
        kwargs = calibration.policy_kwargs(allow_weak=allow_weak, overrides=overrides)
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExitPolicy:
        return cls.from_dict(json.loads(text))
