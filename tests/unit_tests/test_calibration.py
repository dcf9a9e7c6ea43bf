"""calibrate(): every method on constructed data with known answers, AUROC, verdicts, profiles.

Risk control and streaming calibration: test_risk_control.py; the verdict's error rates:
test_verdict_simulation.py.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest

from entropy_exit_integrations import ExitPolicy, TokenLogprob
from entropy_exit_integrations.core.calibration import (
    METHODS,
    Calibration,
    ClassStats,
    auroc,
    calibrate,
    calibrate_stream,
    lowest_group_confidence,
    sequence_entropy,
)
from entropy_exit_integrations.core.signals import (
    INCONCLUSIVE,
    NO_SIGNAL,
    STRONG,
    WEAK,
    auroc_interval,
)
from entropy_exit_integrations.errors import EntropyExitWarning, PolicyError

CORRECT = [0.1, 0.2, 0.3, 0.4]
WRONG = [0.6, 0.7, 0.8, 0.9]


def separated(n_tokens_c: int = 50, n_tokens_i: int = 50) -> list[tuple[float, bool, int]]:
    return [(h, True, n_tokens_c) for h in CORRECT] + [(h, False, n_tokens_i) for h in WRONG]


def test_mean_is_mean_entropy_of_correct() -> None:
    cal = calibrate(separated(), "mean", model="m")
    assert cal.tau == pytest.approx(0.25)
    assert cal.correct.n == 4 and cal.incorrect.n == 4
    assert cal.correct.mean == pytest.approx(0.25)
    assert cal.incorrect.mean == pytest.approx(0.75)
    assert cal.correct.std == pytest.approx(np.std(CORRECT, ddof=1))


def test_info_formula() -> None:
    cal = calibrate(separated(), "info")
    sd = float(np.std(CORRECT, ddof=1))  # both classes have the same spread: pooled == sd
    d = 0.5 / sd
    assert cal.tau == pytest.approx(0.25 + sd * math.log(1 + d))


def test_bayes_boundary_sits_between_the_classes() -> None:
    assert calibrate(separated(), "bayes").tau == pytest.approx(0.5)


def test_bayes_priors_move_the_boundary() -> None:
    # One wrong answer inside the correct range: with equal counts, accepting it costs less
    # than rejecting three correct ones; a heavy incorrect prior flips that.
    data = [(0.1, True, 9), (0.2, True, 9), (0.3, True, 9), (0.25, False, 9), (0.8, False, 9)]
    assert calibrate(data, "bayes").tau == pytest.approx(0.55)
    assert calibrate(data, "bayes", priors=(0.1, 0.9)).tau == pytest.approx(0.225)


def test_quantile() -> None:
    assert calibrate(separated(), "quantile", q=0.5).tau == pytest.approx(0.25)
    assert calibrate(separated(), "quantile", q=0.75).tau == pytest.approx(np.quantile(CORRECT, 0.75))


def test_deepconf_is_label_free_percentile() -> None:
    cal = calibrate(separated(), "deepconf", deepconf_keep=0.5)
    assert cal.tau == pytest.approx(0.5)
    flipped = [(h, not ok, n) for h, ok, n in separated()]
    assert calibrate(flipped, "deepconf", deepconf_keep=0.5).tau == cal.tau


def test_every_method_is_reported() -> None:
    cal = calibrate(separated(), "bayes")
    assert set(cal.taus) == {"mean", "info", "bayes", "quantile", "deepconf"}
    assert cal.taus["bayes"] == cal.tau


def test_eight_separated_examples_are_inconclusive_not_strong() -> None:
    # A percentile bootstrap gives [1.00, 1.00] here; the score interval does not.
    cal = calibrate(separated(), "mean")
    assert cal.auroc == 1.0
    assert cal.auroc_ci is not None
    low, high = cal.auroc_ci
    assert high == pytest.approx(1.0)
    z2 = 1.6448536269514722**2
    assert low == pytest.approx(4 / (4 + z2))  # Wilson at A=1 with min class 4: 0.596
    assert cal.length_auroc == 0.5  # all the same length: ties
    assert cal.verdict == INCONCLUSIVE
    # 6 per class make the lower bound pass 0.65 at AUROC 1: 12 examples with this class mix
    assert cal.examples_needed == 12
    assert "about 12 examples" in cal.verdict_detail
    assert cal.expected_tokens == 50

    def separated_per_class(k: int) -> list[tuple[float, bool, int]]:
        return [(0.1 + 0.01 * j, True, 50) for j in range(k)] + [
            (0.6 + 0.01 * j, False, 50) for j in range(k)
        ]

    assert calibrate(separated_per_class(6)).verdict == STRONG  # 12 examples are indeed enough
    assert calibrate(separated_per_class(5)).verdict == INCONCLUSIVE  # and 10 are not


def test_sixteen_separated_examples_are_strong() -> None:
    data = [(0.1 + 0.01 * j, True, 50) for j in range(8)] + [(0.6 + 0.01 * j, False, 50) for j in range(8)]
    cal = calibrate(data)
    assert cal.auroc == 1.0 and cal.auroc_ci is not None
    assert cal.auroc_ci[0] > 0.65
    assert cal.verdict == STRONG and cal.examples_needed is None


def test_score_interval_matches_its_formula() -> None:
    low, high = auroc_interval(np.array([0.8, 1.0, 0.5]), np.array([10, 6, 20]))
    z = 1.6448536269514722
    for a, k, lo, hi in zip((0.8, 1.0, 0.5), (10, 6, 20), low, high):
        # both ends solve (theta - a)^2 = z^2 theta (1 - theta) / k
        for theta in (lo, hi):
            assert (theta - a) ** 2 == pytest.approx(z * z * theta * (1 - theta) / k)
        assert lo <= a <= hi
    assert np.isnan(auroc_interval(0.7, 0)[0])


def test_length_beating_entropy_is_never_strong() -> None:
    # entropy separates well (9 pairs out of order and 2 ties in 100: AUROC 0.90), length
    # perfectly (1.0)
    c = [((10 + j) / 100, True, 10 + j) for j in range(10)]
    i = [((12 + 5 * j) / 100, False, 100 + j) for j in range(10)]
    cal = calibrate(c + i)
    assert cal.auroc == pytest.approx(0.90) and cal.length_auroc == 1.0
    assert cal.verdict == WEAK
    assert "length predicts correctness better" in cal.verdict_detail
    assert cal.length_auroc_ci is not None and cal.length_auroc_ci[0] > 0.65


def test_auroc_matches_mann_whitney_with_ties() -> None:
    pos, neg = np.array([3.0, 2.0, 2.0]), np.array([2.0, 1.0])
    # pairs: (3>2,3>1,2=2,2>1,2=2,2>1) = 4 wins + 2 ties -> 5/6
    assert auroc(pos, neg) == pytest.approx(5 / 6)
    from scipy.stats import mannwhitneyu

    assert auroc(pos, neg) == pytest.approx(mannwhitneyu(pos, neg).statistic / 6)


def test_no_signal_when_classes_overlap() -> None:
    rng = np.random.default_rng(1)
    data = [(float(h), bool(j % 2), 40) for j, h in enumerate(rng.uniform(0.2, 0.6, 40))]
    cal = calibrate(data)
    assert cal.verdict == NO_SIGNAL
    assert not cal.usable
    with pytest.raises(PolicyError, match="no signal"):
        ExitPolicy.from_calibration(cal)
    with pytest.warns(EntropyExitWarning, match="NO-SIGNAL"):
        policy = ExitPolicy.from_calibration(cal, allow_weak=True)
    assert policy.threshold == pytest.approx(cal.tau)


def test_weak_when_length_beats_entropy() -> None:
    # The Qwen2.5-Coder-0.5B GSM8K picture: entropy separates a little, length more.
    rng = np.random.default_rng(7)
    c = rng.normal(0.40, 0.1, 30)
    i = rng.normal(0.44, 0.1, 30)
    data = [(float(h), True, int(100 + j)) for j, h in enumerate(c)]
    data += [(float(h), False, int(120 + 3 * j)) for j, h in enumerate(i)]
    cal = calibrate(data)
    assert cal.length_auroc is not None and cal.auroc is not None
    assert cal.length_auroc > cal.auroc
    assert cal.verdict in (WEAK, NO_SIGNAL)


@pytest.mark.parametrize("labels", [True, False], ids=["all correct", "all wrong"])
def test_one_class_examples_are_refused_for_every_threshold(labels: bool) -> None:
    data = [(h, labels, 10) for h in CORRECT + WRONG]
    which = "correct" if labels else "wrong"
    for method in METHODS:
        with pytest.raises(PolicyError, match=f"all 8 calibration examples are {which}: no threshold"):
            calibrate(data, method)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match=f"are {which}"):
        calibrate(data, risk=0.1)
    tokens = [_tok(0.9)] * 20
    with pytest.raises(PolicyError, match=f"are {which}"):
        calibrate_stream(
            [(tokens, labels)] * 6,
            ExitPolicy(threshold=0.0, aggregation="window", window=4),
            lambda pairs: {},
        )


def test_from_calibration_refuses_a_one_class_profile(tmp_path) -> None:
    """A profile written before one-class calibrations were refused is refused when used."""
    good = calibrate(separated())
    for stats in (
        {"incorrect": ClassStats(0, None, None, None, None, None)},
        {"correct": ClassStats.of(np.array([]), np.array([]))},
    ):
        old = Calibration.load(dataclasses.replace(good, **stats).save(tmp_path / "old.json"))
        assert old.one_class and not old.usable
        for kwargs in ({}, {"allow_weak": True}, {"threshold": 0.5}):
            with pytest.raises(PolicyError, match="has only .* examples .* calibrate again"):
                ExitPolicy.from_calibration(old, **kwargs)
    assert not good.one_class and ExitPolicy.from_calibration(good).threshold == good.tau


@pytest.mark.parametrize("bad", ["no", "yes", 1, 0, None, 1.0])
def test_correct_must_be_a_bool(bad: object) -> None:
    data: list = separated()
    data[2] = (data[2][0], bad, 50)
    with pytest.raises(PolicyError, match=f"example 3: correct must be True or False, got {bad!r}"):
        calibrate(data)
    tokens = [_tok(0.9)] * 20
    stream = [(tokens, True), (tokens, False), (tokens, bad), (tokens, True)]
    with pytest.raises(PolicyError, match="example 3: correct must be True or False"):
        calibrate_stream(stream, ExitPolicy(threshold=0.0), lambda pairs: {})
    numpy_bools = [(h, np.bool_(c), n) for h, c, n in separated()]
    assert calibrate(numpy_bools).tau == calibrate(separated()).tau


def _nan_token() -> TokenLogprob:
    nan = float("nan")
    return TokenLogprob("a", nan, ("a", "b"), (nan, nan))


def test_nan_logprobs_count_as_unknown_and_are_reported() -> None:
    right = [_tok(0.95)] * 18 + [_nan_token()] * 2
    wrong = [_tok(0.6)] * 20
    data = [(right, True), (wrong, False)] * 3
    with pytest.warns(EntropyExitWarning, match="6 of 120 watched tokens had no usable logprobs") as caught:
        cal = calibrate(data)
    assert not any("malformed" in str(w.message) for w in caught)  # one summary, not one per trace
    assert (cal.unknown_tokens, cal.watched_tokens) == (6, 120)
    assert "unknown tokens: 6 of 120 watched tokens" in cal.summary()
    assert all(math.isfinite(v) for v in cal.taus.values() if v is not None) and math.isfinite(cal.tau)
    assert cal.deepconf_threshold is None or math.isfinite(cal.deepconf_threshold)
    assert Calibration.from_dict(cal.to_dict()) == cal
    # per-token entropies: NaN and inf are unknown too
    listed = calibrate([([0.1, float("nan"), 0.2], True), ([0.8, float("inf"), 0.9], False)] * 2)
    assert (listed.unknown_tokens, listed.watched_tokens) == (4, 12)


def test_an_example_without_any_usable_logprob_is_refused() -> None:
    wrong = [_tok(0.6)] * 20
    data = [([_tok(0.95)] * 20, True), (wrong, False), ([_nan_token()] * 20, True), (wrong, False)]
    with pytest.raises(PolicyError, match="example 3: none of its 20 watched tokens has usable logprobs"):
        calibrate(data)
    with pytest.raises(PolicyError, match="none of its 3 token entropies is a finite number"):
        calibrate([([float("nan")] * 3, True)] + [([0.5], False)] * 3)
    with pytest.raises(PolicyError, match="example 1: it has no known token entropy"):
        calibrate([(float("nan"), True, 10)] + separated())


def test_needs_four_examples_and_known_method() -> None:
    with pytest.raises(PolicyError, match="at least 4"):
        calibrate(separated()[:3])
    with pytest.raises(PolicyError, match="method"):
        calibrate(separated(), "median")  # type: ignore[arg-type]


def _tok(p: float) -> TokenLogprob:
    return TokenLogprob("a", math.log(p), ("a", "b"), (math.log(p), math.log(1 - p)))


def test_token_traces_are_accepted_and_match_the_monitor() -> None:
    sure, unsure = [_tok(0.99)] * 20, [_tok(0.6)] * 20
    examples = [(sure, True), (sure, True), (unsure, False), (unsure, False), (sure, True)]
    cal = calibrate(examples, k=2, deepconf_window=8)
    expected = sequence_entropy(sure, k=2)
    assert cal.tau == pytest.approx(expected)
    assert cal.expected_tokens == 20
    assert cal.deepconf_threshold == pytest.approx(lowest_group_confidence(sure, 8), rel=0.2) or (
        cal.deepconf_threshold is not None
    )
    per_token = [[0.1, 0.2, float("nan")], [0.1, 0.1], [0.9, 0.8], [0.7], [0.2]]
    labels = [True, True, False, False, True]
    cal2 = calibrate(list(zip(per_token, labels)))
    assert cal2.correct.mean == pytest.approx(np.mean([0.15, 0.1, 0.2]))


def test_profile_round_trip_and_policy(tmp_path) -> None:
    data = [(0.1 + 0.01 * j, True, 30) for j in range(8)] + [(0.6 + 0.01 * j, False, 60) for j in range(8)]
    cal = calibrate(data, "info", model="smollm2")
    path = cal.save(tmp_path / "profile.json")
    again = Calibration.load(path)
    assert again == cal
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = ExitPolicy.from_calibration(again, min_tokens=8)
    assert policy.threshold == pytest.approx(cal.tau)
    assert policy.aggregation == "mean"
    assert policy.calibrated_for == "smollm2" and policy.is_calibrated
    assert policy.expected_tokens == pytest.approx(45)
    assert policy.min_tokens == 8
    text = cal.summary()
    assert "verdict: strong" in text
    assert "tau[info]" in text
    assert "P(verdict strong)" in text and "population AUROC 0.95" in text


def test_sequence_threshold_refuses_a_window_policy() -> None:
    data = [(0.1 + 0.01 * j, True, 30) for j in range(8)] + [(0.6 + 0.01 * j, False, 60) for j in range(8)]
    cal = calibrate(data, model="m")
    with pytest.raises(PolicyError, match="whole-sequence mean"):
        ExitPolicy.from_calibration(cal, aggregation="window", window=16)
    with pytest.raises(PolicyError, match="whole-sequence mean"):
        ExitPolicy.from_calibration(cal, aggregation="ema")


def test_old_profiles_still_load(tmp_path) -> None:
    data = calibrate(separated(), model="m").to_dict()
    for key in ("length_auroc_ci", "interval", "level", "examples_needed", "kind", "aggregation", "risk"):
        data.pop(key)
    again = Calibration.from_dict(data)
    assert again.kind == "sequence" and again.risk is None and again.auroc == 1.0


def _binormal(n_per_class: int, value: float) -> list[tuple[float, bool, int]]:
    """Entropies at normal quantiles with a population AUROC of ``value``; equal lengths."""
    from statistics import NormalDist

    grid = [NormalDist().inv_cdf((i + 0.5) / n_per_class) for i in range(n_per_class)]
    shift = math.sqrt(2) * NormalDist().inv_cdf(value)
    return [(-(g + shift), True, 50) for g in grid] + [(-g, False, 50) for g in grid]


def test_a_middling_auroc_is_inconclusive_from_few_examples_and_weak_from_many() -> None:
    few, many = calibrate(_binormal(6, 0.66)), calibrate(_binormal(150, 0.66))
    assert few.auroc is not None and 0.6 <= few.auroc < 0.75
    assert few.verdict == INCONCLUSIVE and few.auroc_ci is not None and few.auroc_ci[1] >= 0.75
    assert "would show it is weak" in few.verdict_detail and few.examples_needed is not None
    assert few.examples_needed > 12
    assert many.verdict == WEAK and many.auroc_ci is not None and many.auroc_ci[1] < 0.75
    assert "upper end is under 0.75" in many.verdict_detail
    # the number `few` gave is the smallest that settles it: the same AUROC from that many
    # examples (half per class) is called weak, from one fewer per class still inconclusive
    from entropy_exit_integrations.core.signals import verdict_of

    per_class = few.examples_needed // 2
    for k, expected in ((per_class, WEAK), (per_class - 1, INCONCLUSIVE)):
        low, high = auroc_interval(few.auroc, k)
        assert verdict_of(few.auroc, (float(low), float(high)), None, k, k)[0] == expected
