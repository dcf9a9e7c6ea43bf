"""Risk-controlled thresholds: exact bounds, the gate's threshold, and streaming calibration.

Every expected value is computed here independently: Clopper-Pearson bounds against scipy's beta
quantiles, harmful exits by running the real ``EntropyMonitor`` at each threshold.
"""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import beta

from entropy_exit_integrations import EntropyMonitor, ExitPolicy, TokenLogprob
from entropy_exit_integrations.core.calibration import (
    Calibration,
    ExitAnswer,
    StreamExample,
    calibrate,
    calibrate_stream,
    clopper_pearson_upper,
    examples_needed,
    live_stop_index,
    stream_stop_indices,
)
from entropy_exit_integrations.core.tokens import Phase
from entropy_exit_integrations.errors import PolicyError
from entropy_exit_integrations.gate import EntropyGate


@pytest.mark.parametrize(("k", "n"), [(0, 10), (0, 60), (1, 60), (3, 25), (7, 200), (24, 25)])
def test_clopper_pearson_matches_the_beta_quantile(k: int, n: int) -> None:
    assert clopper_pearson_upper(k, n, 0.9) == pytest.approx(beta.ppf(0.9, k + 1, n - k), abs=1e-9)
    assert clopper_pearson_upper(n, n, 0.9) == 1.0


def test_examples_needed_is_the_smallest_sufficient_n() -> None:
    assert examples_needed(0.0, 0.05, 0.9) == 45  # (0.95)^n <= 0.1
    assert clopper_pearson_upper(0, 45, 0.9) <= 0.05 < clopper_pearson_upper(0, 44, 0.9)
    n = examples_needed(0.02, 0.05, 0.9)
    assert n is not None
    assert clopper_pearson_upper(math.ceil(0.02 * n), n, 0.9) <= 0.05
    assert clopper_pearson_upper(math.ceil(0.02 * (n - 1)), n - 1, 0.9) > 0.05
    assert examples_needed(0.06, 0.05, 0.9) is None


WRONG = {20, 35, 50, 55}


def gate_examples(n: int = 60, extended_wrong: frozenset[int] = frozenset()) -> list:
    from entropy_exit_integrations.core.calibration import CalibrationExample

    return [
        CalibrationExample(j / 100, j not in WRONG, 100, full_correct=False if j in extended_wrong else None)
        for j in range(n)
    ]


def test_gate_risk_picks_the_largest_threshold_with_a_small_bound() -> None:
    cal = calibrate(gate_examples(), risk=0.05, confidence=0.9, model="m")
    risk = cal.risk
    assert risk is not None and cal.method == "risk"
    # zero harmful passes below the first wrong answer (0.20); one harmful pass breaks the bound
    assert cal.tau == pytest.approx(0.19) and risk.threshold == pytest.approx(0.19)
    assert risk.harmful == 0 and risk.exits == 20
    assert risk.upper_bound == pytest.approx(1 - 0.1 ** (1 / 60))
    assert clopper_pearson_upper(1, 60, 0.9) > 0.05
    assert risk.saved_fraction == pytest.approx(20 / 60) and risk.savings_of == "extended steps"
    assert "threshold 0.1900 bits" in risk.detail
    policy = ExitPolicy.from_calibration(cal, allow_weak=True)
    assert policy.threshold == pytest.approx(0.19)


def test_a_pass_whose_extended_answer_is_wrong_too_is_not_harmful() -> None:
    cal = calibrate(gate_examples(extended_wrong=frozenset({20})), risk=0.05, confidence=0.9)
    assert cal.tau == pytest.approx(0.34)
    assert cal.risk is not None and cal.risk.harmful == 0


def test_too_few_examples_say_how_many_are_needed() -> None:
    cal = calibrate(gate_examples(30), risk=0.05, confidence=0.9, model="m")
    assert cal.risk is not None
    assert cal.risk.threshold is None and cal.risk.needed == 45
    assert "about 45 examples" in cal.risk.detail
    assert not cal.usable
    with pytest.raises(PolicyError, match="no threshold"):
        ExitPolicy.from_calibration(cal, allow_weak=True)
    assert "risk-controlled tau: n/a" in cal.summary(power=False)


def test_risk_arguments_are_checked() -> None:
    with pytest.raises(PolicyError, match="risk"):
        calibrate(gate_examples(), risk=1.5)
    with pytest.raises(PolicyError, match="confidence"):
        calibrate(gate_examples(), risk=0.05, confidence=1.0)


# --- streaming ------------------------------------------------------------------------------------


def tok(text: str, p: float, phase: Phase = Phase.ANSWER) -> TokenLogprob:
    return TokenLogprob(text, math.log(p), (text, "~"), (math.log(p), math.log(1 - p)), phase)


def random_trace(rng: random.Random, length: int) -> list[TokenLogprob]:
    tokens = []
    reasoning = rng.random() < 0.5
    for index in range(length):
        phase = Phase.REASONING if reasoning and index < length // 2 else Phase.ANSWER
        if rng.random() < 0.05:
            tokens.append(TokenLogprob(" ?", None, (), (), phase))  # unknown
            continue
        text = str(rng.randint(0, 99)) if rng.random() < 0.15 else " w"
        tokens.append(tok(text, rng.choice([0.55, 0.8, 0.95, 0.995, 0.9995]), phase))
    return tokens


def monitor_stop(tokens: list[TokenLogprob], policy: ExitPolicy) -> int | None:
    monitor = EntropyMonitor(policy)
    for index, token in enumerate(tokens):
        if monitor.observe(token).should_exit:
            stop = live_stop_index(tokens, index)
            return stop if stop < len(tokens) - 1 else None
    return None


@pytest.mark.parametrize(
    "shape",
    [
        {"aggregation": "window", "window": 8, "min_tokens": 8},
        {"aggregation": "window", "window": 4, "min_tokens": 10, "patience": 3},
        {"aggregation": "ema", "window": 6, "min_tokens": 4},
        {"aggregation": "mean", "min_tokens": 4, "phase": "answer"},
        {"aggregation": "window", "window": 5, "min_tokens": 5, "phase": "reasoning", "patience": 2},
    ],
)
def test_stop_points_for_many_thresholds_equal_the_monitor_run_per_threshold(shape: dict) -> None:
    rng = random.Random(5)
    thresholds = [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
    checked = 0
    for _ in range(40):
        tokens = random_trace(rng, rng.randint(5, 60))
        policy = ExitPolicy(threshold=0.0, **shape)
        got = stream_stop_indices(tokens, policy, thresholds)
        for tau, stop in zip(thresholds, got):
            expected = monitor_stop(tokens, ExitPolicy(threshold=tau, **shape))
            assert stop == expected, (shape, tau)
            checked += stop is not None
    assert checked > 20  # many of the cases really exit


def convergent_trace(rng: random.Random, answer_at: int, early_calm: bool) -> list[TokenLogprob]:
    """Unsure reasoning, a calm stretch (sometimes too early, before the answer), the answer."""
    tokens = [tok(" r", rng.choice([0.5, 0.6, 0.7])) for _ in range(answer_at)]
    if early_calm:  # the model is sure of a wrong intermediate step 8 tokens in
        for index in range(8, 20):
            tokens[index] = tok(" s", 0.995)
    tokens.append(tok(" The answer is", 0.99))
    tokens += [tok(" x", 0.9999) for _ in range(20)]  # surer after the answer than ever before
    return tokens


def stream_population(n: int = 80, seed: int = 1):
    rng = random.Random(seed)
    traces, answer_at = [], []
    for index in range(n):
        at = rng.randint(30, 60)
        calm = index % 10 == 0
        traces.append(convergent_trace(rng, at, calm))
        answer_at.append(at)
    correct = [index % 4 != 3 for index in range(n)]
    return traces, answer_at, correct


SHAPE = {"aggregation": "window", "window": 6, "min_tokens": 6}


def harmful_at(tau: float, traces, answer_at, correct) -> int:
    """Harmful exits, computed with the real monitor: a right full run cut before its answer."""
    harmful = 0
    for tokens, at, right in zip(traces, answer_at, correct):
        stop = monitor_stop(tokens, ExitPolicy(threshold=tau, **SHAPE))
        harmful += right and stop is not None and stop < at
    return harmful


def test_stream_calibration_bounds_the_harm_it_measures() -> None:
    traces, answer_at, correct = stream_population()
    asked: list[tuple[int, int]] = []

    def resolve(pairs):
        asked.extend(pairs)
        # the forced answer is right once the reasoning reached the answer
        return {(i, s): ExitAnswer(s >= answer_at[i], 3) for i, s in pairs}

    examples = [StreamExample(t, c) for t, c in zip(traces, correct)]
    cal = calibrate_stream(examples, ExitPolicy(threshold=0.0, **SHAPE), resolve, risk=0.05, model="m")
    risk = cal.risk
    assert risk is not None and risk.threshold is not None
    assert cal.kind == "stream" and cal.tau == risk.threshold
    # the bound holds on the harm the monitor really causes at that threshold
    assert harmful_at(cal.tau, traces, answer_at, correct) == risk.harmful
    assert clopper_pearson_upper(risk.harmful, 80, 0.9) == pytest.approx(risk.upper_bound)
    assert risk.upper_bound is not None and risk.upper_bound <= 0.05
    # the sequence stopped at the next threshold because its bound failed
    tested = [row[0] for row in risk.table]
    following = tested[tested.index(risk.threshold) + 1]
    assert clopper_pearson_upper(harmful_at(following, traces, answer_at, correct), 80, 0.9) > 0.05
    # answers were asked once each, and only where a full run was right (wrong ones cannot be harmed)
    assert len(asked) == len(set(asked)) and all(correct[i] for i, _ in asked)
    assert risk.exits and risk.exits > 0 and risk.saved_fraction and risk.saved_fraction > 0.1
    # the policy is the calibrated shape; another shape is refused
    policy = ExitPolicy.from_calibration(cal)
    assert (policy.aggregation, policy.window, policy.min_tokens, policy.threshold) == (
        "window",
        6,
        6,
        cal.tau,
    )
    with pytest.raises(PolicyError, match="window=16"):
        ExitPolicy.from_calibration(cal, window=16)
    with pytest.raises(PolicyError, match="aggregation='mean'"):
        ExitPolicy.from_calibration(cal, aggregation="mean")
    with pytest.raises(PolicyError, match="streaming policy"):
        EntropyGate(cal)
    text = cal.summary(power=False)
    assert "threshold for: the streaming policy aggregation=window, window=6, min_tokens=6" in text


def test_stream_profile_round_trip(tmp_path) -> None:
    traces, answer_at, correct = stream_population(40)
    cal = calibrate_stream(
        list(zip(traces, correct)),
        ExitPolicy(threshold=0.0, **SHAPE),
        lambda pairs: {(i, s): ExitAnswer(s >= answer_at[i]) for i, s in pairs},
        risk=0.1,
    )
    assert Calibration.load(cal.save(tmp_path / "p.json")) == cal


def test_unknown_answers_count_as_harmful() -> None:
    traces, _, correct = stream_population()
    cal = calibrate_stream(
        list(zip(traces, correct)),
        ExitPolicy(threshold=0.0, **SHAPE),
        lambda pairs: {},  # no forced answer available anywhere
        risk=0.05,
    )
    risk = cal.risk
    assert risk is not None
    first = risk.table[0]
    right_exits = sum(
        c and monitor_stop(t, ExitPolicy(threshold=first[0], **SHAPE)) is not None
        for t, c in zip(traces, correct)
    )
    assert first[2] == right_exits  # every exit of a right run, answer unknown, is harmful
    assert risk.unknown == risk.harmful  # every harmful exit here is an unknown answer
    if risk.threshold is None:
        assert "without a known answer" in risk.detail
    else:
        assert risk.upper_bound is not None and risk.upper_bound <= 0.05
