import json
import math
import warnings

import pytest

from entropy_exit_integrations import EntropyMonitor, ExitPolicy, Phase, TokenLogprob
from entropy_exit_integrations.core.tokens import token_from_candidates
from entropy_exit_integrations.errors import EntropyExitWarning, PolicyError

SURE = TokenLogprob("a", -0.001, ("a", "b"), (-0.001, -9.0))  # ~0.002 bits
UNSURE = TokenLogprob("a", math.log(0.5), ("a", "b"), (math.log(0.5), math.log(0.5)))  # 1 bit
UNKNOWN = TokenLogprob("a", None, (), ())


def as_phase(token: TokenLogprob, phase: Phase) -> TokenLogprob:
    return TokenLogprob(token.token, token.logprob, token.top_tokens, token.top_logprobs, phase)


def run(policy: ExitPolicy, tokens: list[TokenLogprob]) -> list[bool]:
    monitor = EntropyMonitor(policy)
    return [monitor.observe(t).should_exit for t in tokens]


def first_exit(policy: ExitPolicy, tokens: list[TokenLogprob]) -> int | None:
    flags = run(policy, tokens)
    return flags.index(True) if True in flags else None


def test_mean_aggregation_exits_when_sequence_mean_drops() -> None:
    policy = ExitPolicy(threshold=0.5, aggregation="mean", min_tokens=1)
    # mean after 1 unsure + n sure tokens: 1/(n+1) < 0.5 first at n=2 (index 2 is 1/3).
    assert first_exit(policy, [UNSURE] + [SURE] * 5) == 2


def test_window_aggregation_needs_a_full_window() -> None:
    policy = ExitPolicy(threshold=0.5, aggregation="window", window=4, min_tokens=0)
    assert first_exit(policy, [SURE] * 6) == 3
    # A window with three unsure tokens is not confident; it becomes so when they slide out.
    tokens = [UNSURE] * 3 + [SURE] * 6
    assert first_exit(policy, tokens) == 5  # window [U, S, S, S] has mean ~0.25 at index 5


def test_ema_aggregation() -> None:
    policy = ExitPolicy(threshold=0.3, aggregation="ema", window=3, min_tokens=1)  # alpha 0.5
    # ema: 1, 0.5, 0.25 -> first below 0.3 at index 2.
    assert first_exit(policy, [UNSURE, SURE, SURE, SURE]) == 2


def test_min_tokens_and_patience() -> None:
    assert first_exit(ExitPolicy(threshold=0.5, min_tokens=5), [SURE] * 10) == 4
    assert first_exit(ExitPolicy(threshold=0.5, min_tokens=1, patience=3), [SURE] * 10) == 2
    # Patience counts consecutive confident tokens: an unsure one resets the streak.
    policy = ExitPolicy(threshold=0.6, aggregation="window", window=1, min_tokens=1, patience=2)
    assert first_exit(policy, [SURE, UNSURE, SURE, SURE]) == 3


def test_threshold_zero_never_exits() -> None:
    zero = TokenLogprob("a", 0.0, ("a",), (0.0,))
    assert first_exit(ExitPolicy(threshold=0.0, min_tokens=0, top_k=1, tail_aware=True), [zero] * 50) is None


def test_unknown_tokens_never_trigger_an_exit_and_are_counted() -> None:
    policy = ExitPolicy(threshold=0.5, min_tokens=0, aggregation="window", window=2)
    monitor = EntropyMonitor(policy)
    decisions = [monitor.observe(UNKNOWN) for _ in range(20)]
    assert not any(d.should_exit for d in decisions)
    assert {d.reason for d in decisions} == {"unknown"}
    assert monitor.unknown_tokens == 20
    # Unknown counts as maximally uncertain: it raises the aggregate, never lowers it.
    monitor = EntropyMonitor(ExitPolicy(threshold=0.001, min_tokens=0))
    assert monitor.observe(SURE).reason == "uncertain"
    after_unknown = monitor.observe(UNKNOWN).entropy
    assert after_unknown is not None and after_unknown > 2.0


def test_single_candidate_is_unknown_for_the_renormalised_estimator() -> None:
    lone = TokenLogprob("a", -2.0, ("a",), (-2.0,))
    monitor = EntropyMonitor(ExitPolicy(threshold=1.0, min_tokens=0))
    assert [monitor.observe(lone).should_exit for _ in range(10)] == [False] * 10
    assert monitor.unknown_tokens == 10
    # Tail-aware: p = e^-2 = 0.135 and a tail of 0.865 give 0.571 bits.
    tail = EntropyMonitor(ExitPolicy(threshold=0.5, min_tokens=0, tail_aware=True))
    decision = tail.observe(lone)
    assert decision.reason == "uncertain" and decision.entropy == pytest.approx(0.5713, abs=1e-3)
    assert tail.unknown_tokens == 0


def test_phase_auto_watches_reasoning_then_ignores_the_answer() -> None:
    policy = ExitPolicy(threshold=0.5, min_tokens=3)
    monitor = EntropyMonitor(policy)
    reasoning = [as_phase(UNSURE, Phase.REASONING)] * 3
    answer = [as_phase(SURE, Phase.ANSWER)] * 10
    decisions = [monitor.observe(t) for t in reasoning + answer]
    assert not any(d.should_exit for d in decisions)
    assert decisions[-1].reason == "not_watched"


def test_phase_auto_falls_back_to_answer_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert first_exit(ExitPolicy(threshold=0.5, min_tokens=2), [SURE] * 4) == 1


def test_phase_reasoning_warns_once_then_watches_the_answer() -> None:
    monitor = EntropyMonitor(ExitPolicy(threshold=0.5, min_tokens=2, phase="reasoning"))
    with pytest.warns(EntropyExitWarning, match="no reasoning tokens") as caught:
        flags = [monitor.observe(SURE).should_exit for _ in range(4)]
    assert len(caught) == 1
    assert flags == [False, True, True, True]


def test_phase_answer_ignores_reasoning_and_both_watches_all() -> None:
    tokens = [as_phase(SURE, Phase.REASONING)] * 5 + [as_phase(UNSURE, Phase.ANSWER)] * 5
    assert first_exit(ExitPolicy(threshold=0.5, min_tokens=1, phase="answer"), tokens) is None
    assert first_exit(ExitPolicy(threshold=0.5, min_tokens=1, phase="both"), tokens) == 0


def test_decision_is_sticky_and_reset_forgets() -> None:
    monitor = EntropyMonitor(ExitPolicy(threshold=0.5, min_tokens=1))
    assert monitor.observe(SURE).should_exit
    assert monitor.observe(UNSURE).should_exit
    assert monitor.tokens_seen == 2 and len(monitor.trace) == 2
    monitor.reset()
    assert monitor.tokens_seen == 0 and not monitor.exited and len(monitor.trace) == 0


def test_trace_records_unknown_as_nan() -> None:
    monitor = EntropyMonitor(ExitPolicy(threshold=0.1))
    for token in (SURE, UNKNOWN, UNSURE):
        monitor.observe(token)
    assert monitor.trace[0] < 0.01 and math.isnan(monitor.trace[1]) and monitor.trace[2] == pytest.approx(1.0)


def test_policy_validation_messages() -> None:
    with pytest.raises(PolicyError, match="threshold"):
        ExitPolicy(threshold=-1)
    with pytest.raises(PolicyError, match="threshold"):
        ExitPolicy(threshold=math.nan)
    with pytest.raises(PolicyError, match="aggregation"):
        ExitPolicy(threshold=1, aggregation="median")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="window"):
        ExitPolicy(threshold=1, window=0)
    with pytest.raises(PolicyError, match="top_k must be <= 20"):
        ExitPolicy(threshold=1, top_k=21)
    with pytest.raises(PolicyError, match="phase"):
        ExitPolicy(threshold=1, phase="thinking")  # type: ignore[arg-type]


def test_policy_round_trips_through_json() -> None:
    policy = ExitPolicy(threshold=0.7, aggregation="ema", window=8, patience=2, calibrated_for="m")
    assert ExitPolicy.from_json(policy.to_json()) == policy
    assert json.loads(policy.to_json())["threshold"] == 0.7
    with pytest.raises(PolicyError, match="unknown ExitPolicy fields"):
        ExitPolicy.from_dict({"threshold": 1, "bogus": 2})


def test_candidates_dedupe_and_missing_sampled_token() -> None:
    token = token_from_candidates("x", -1.0, [("a", -0.5), ("a", -0.5), ("b", -2.0)])
    assert token.top_tokens == ("a", "b", "x")  # exact duplicate dropped, sampled token added
    assert token.top_logprobs == (-0.5, -2.0, -1.0)
    same_text = token_from_candidates("a", -0.5, [("a", -0.5), ("a", -3.0)])
    assert same_text.top_logprobs == (-0.5, -3.0)  # same text, other token id: kept
    assert token_from_candidates("x", -1.0, []).top_logprobs == ()  # no list: unknown stays unknown


@pytest.mark.parametrize("live", [-1.3394672349903213e-164, -1e-300, 0.0, -5.3, -588.59, -9998.0])
@pytest.mark.parametrize("dead", [-9999.0, -math.inf, -1e6])
def test_one_live_candidate_is_unknown_whatever_its_value(live: float, dead: float) -> None:
    """A lone live candidate reads 0 bits plus rounding noise (1.9e-164 bits for -1.3e-164)."""
    monitor = EntropyMonitor(ExitPolicy(threshold=1.0, min_tokens=0))
    decision = monitor.observe(TokenLogprob("a", live, ("a", "b", "c"), (live, dead, dead)))
    assert decision.reason == "unknown" and monitor.unknown_tokens == 1 and math.isnan(monitor.trace[0])


def test_two_live_candidates_read_near_zero_are_known() -> None:
    """The live-candidate count only runs below ONE_LIVE_BITS, and confirms a real certainty."""
    from entropy_exit_integrations.core.entropy import ONE_LIVE_BITS

    monitor = EntropyMonitor(ExitPolicy(threshold=1.0, min_tokens=0))
    for runner_up in (-30.0, -700.0, -800.0):  # -800 underflows to probability 0: still live
        decision = monitor.observe(TokenLogprob("a", 0.0, ("a", "b", "c"), (0.0, runner_up, -9999.0)))
        assert decision.should_exit and decision.entropy is not None and decision.entropy < ONE_LIVE_BITS
    assert monitor.unknown_tokens == 0


@pytest.mark.parametrize("sampled", [math.nan, 0.7])
def test_a_malformed_sampled_logprob_is_unknown_with_one_warning_per_monitor(sampled: float) -> None:
    """The README's promise: a NaN sampled logprob with a finite top list is an unknown token
    and one warning, however many such tokens follow."""
    bad = TokenLogprob("a", sampled, ("a", "b"), (-0.001, -9.0))
    monitor = EntropyMonitor(ExitPolicy(threshold=5.0, min_tokens=0))
    with pytest.warns(EntropyExitWarning, match="sampled token's logprob") as caught:
        decisions = [monitor.observe(bad) for _ in range(5)]
    assert len(caught) == 1 and monitor.malformed_tokens == 5 and monitor.unknown_tokens == 5
    assert not any(d.should_exit for d in decisions)
    monitor.reset()
    with pytest.warns(EntropyExitWarning):  # a new stream warns again
        monitor.observe(bad)
    # Within tolerance, a positive sampled logprob is rounding noise: the token is known.
    fresh = EntropyMonitor(ExitPolicy(threshold=5.0, min_tokens=0))
    assert fresh.observe(bad._replace(logprob=1e-6)).should_exit
