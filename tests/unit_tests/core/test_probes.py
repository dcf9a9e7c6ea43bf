"""ProbeRule / ProbeState: when a probe is due, when answers agree."""

from __future__ import annotations

import doctest

import pytest

from entropy_exit_integrations.core import probes
from entropy_exit_integrations.core.monitor import Decision
from entropy_exit_integrations.core.probes import ProbeRule, ProbeState, answer_key, same_answer
from entropy_exit_integrations.errors import PolicyError

UNSURE = Decision(False, "uncertain", 0, 3.0)
LOW = Decision(False, "uncertain", 0, 0.4)
SURE = Decision(True, "confident", 0, 0.1)


def test_doctests() -> None:
    assert doctest.testmod(probes).failed == 0


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("42", "The answer is 42.", True),
        ("1,000", "1000", True),
        ("$18", "18.0", True),
        ("-3", "3", False),
        ("Paris.", " paris", True),
        ("", "", False),
        ("41", "42", False),
    ],
)
def test_answers_agree_on_their_last_number_else_their_text(a: str, b: str, same: bool) -> None:
    assert same_answer(a, b) is same
    assert answer_key("so 3 then 4") == "4"


def test_periodic_probes_every_n_tokens() -> None:
    state = ProbeState(ProbeRule(every=32, agree=3, min_tokens=0))
    due = [i for i in range(200) if state.due(i, UNSURE)]
    assert due == [31, 63, 95, 127, 159, 191]


def test_gated_probes_wait_for_confidence_or_the_gate_and_keep_a_gap() -> None:
    rule = ProbeRule(gate=0.5, agree=2, min_tokens=8, min_gap=10)
    state = ProbeState(rule)
    assert not state.due(20, UNSURE)  # uncertain: no probe
    assert not state.due(5, SURE)  # before min_tokens
    assert state.due(20, LOW)  # under the gate
    assert not state.record(20, "12")
    assert not state.due(25, SURE)  # within min_gap of the last probe
    assert state.due(30, SURE)
    assert state.record(30, "it is 12") and state.agreed == "it is 12"
    assert not state.due(50, SURE)  # agreed: no more probes
    assert ProbeState(ProbeRule(agree=2)).due(20, LOW) is False  # no gate: only "confident" probes


def test_disagreement_resets_and_max_probes_stops_probing() -> None:
    state = ProbeState(ProbeRule(every=1, agree=2, min_tokens=0, max_probes=3))
    assert not state.record(0, "1") and not state.record(1, "2") and not state.record(2, "3")
    assert state.probes == 3 and not state.due(3, SURE) and state.agreed is None


def test_one_probe_needs_an_answer_to_stop() -> None:
    state = ProbeState(ProbeRule(every=1, agree=1, min_tokens=0))
    assert not state.record(0, "   ") and state.record(1, "7")


@pytest.mark.parametrize(
    "kwargs", [{"agree": 0}, {"every": 0}, {"gate": -1.0}, {"max_tokens": True}, {"min_gap": 0}]
)
def test_bad_rules_fail_at_construction(kwargs: dict) -> None:
    with pytest.raises(PolicyError):
        ProbeRule(**kwargs)


def test_require_number_makes_answers_without_digits_agree_with_nothing() -> None:
    echo = "The answer is N."
    loose = ProbeState(ProbeRule(every=1, agree=2, min_tokens=0))
    assert not loose.record(0, echo) and loose.record(1, echo)  # the template "agrees" with itself
    strict = ProbeState(ProbeRule(every=1, agree=2, min_tokens=0, require_number=True))
    assert not strict.record(0, echo) and not strict.record(1, echo)
    assert not strict.record(2, "12") and strict.record(3, "it is 12")
