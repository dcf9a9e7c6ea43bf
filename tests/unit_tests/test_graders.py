"""Graders on tricky real answers: MATH-500 references (read from the package data) and GSM8K."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_exit_integrations.lab.bench.datasets import find_data_dir
from entropy_exit_integrations.lab.bench.graders import (
    extract_math_answer,
    grade,
    grade_math,
    grade_numeric,
    last_boxed,
    normalize_math,
)

# (reference exactly as in math500_test.jsonl, an equivalent answer a model might give)
MATH500_EQUIVALENT = [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})"),
    ("\\text{Evelyn}", "Evelyn"),
    ("90^\\circ", "90"),
    ("x=5", "5"),
    ("11\\sqrt2", "11\\sqrt{2}"),
    ("\\frac43", "\\frac{4}{3}"),
    ("\\frac43", "4/3"),
    ("\\dfrac{17}{50}", "0.34"),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
    ("10,\\!080", "10080"),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
    ("\\text{(C)}", "C"),
    ("\\$32,\\!348", "32348"),
    ("864 \\mbox{ inches}^2", "864"),
    ("5.4 \\text{ cents}", "5.4"),
    ("\\frac9{19}", "\\frac{9}{19}"),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, \\frac{8}{3}]"),
    ("1,-2", "-2, 1"),
    ("y = 2x + 3", "2x+3"),
    ("x \\in [-2,7]", "[-2, 7]"),
    ("\\$18.90", "18.9"),
    ("15\\mbox{ cm}^2", "15"),
    ("\\text{ellipse}", "\\text{Ellipse}"),
]

MATH500_DIFFERENT = [
    ("(3,4]", "(3,4)"),
    ("\\frac43", "\\frac34"),
    ("90^\\circ", "45"),
    ("1 \\pm \\sqrt{19}", "1 + \\sqrt{19}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(\\frac{\\pi}{2}, 3)"),
]


def test_references_come_from_math500() -> None:
    rows = [json.loads(line) for line in (find_data_dir() / "math500_test.jsonl").open()]
    answers = {row["answer"] for row in rows}
    for reference, _ in MATH500_EQUIVALENT + MATH500_DIFFERENT:
        assert reference in answers, reference


@pytest.mark.parametrize(("reference", "given"), MATH500_EQUIVALENT)
def test_equivalent_math_answers(reference: str, given: str) -> None:
    assert grade_math(f"So the answer is $\\boxed{{{given}}}$.", reference)


@pytest.mark.parametrize(("reference", "given"), MATH500_DIFFERENT)
def test_different_math_answers(reference: str, given: str) -> None:
    assert not grade_math(f"\\boxed{{{given}}}", reference)


def test_every_math500_reference_grades_itself_and_its_solution() -> None:
    rows = [json.loads(line) for line in (find_data_dir() / "math500_test.jsonl").open()]
    own = [grade_math(f"\\boxed{{{r['answer']}}}", r["answer"]) for r in rows]
    assert all(own)
    solved = sum(grade_math(r["solution"], r["answer"]) for r in rows)
    assert solved >= 0.97 * len(rows)  # the reference solutions box their answers


def test_boxed_extraction_is_balanced_and_last() -> None:
    text = "first \\boxed{1} then \\boxed{\\frac{\\sqrt{3}}{2}} done"
    assert last_boxed(text) == "\\frac{\\sqrt{3}}{2}"
    assert last_boxed("no box") is None
    assert extract_math_answer("The final answer is $\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert extract_math_answer("we get 3 and then 7") == "7"


def test_normalisation_rules() -> None:
    assert normalize_math("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalize_math("\\tfrac12") == "\\frac{1}{2}"
    assert normalize_math("x = \\dfrac{1}{2}") == "\\frac{1}{2}"
    assert normalize_math("45^{\\circ}") == "45"


def test_gsm8k_numeric() -> None:
    assert grade_numeric("She makes 9 * 2 = $18 every day.\nThe answer is $18.", "18")
    assert grade_numeric("Total: 1,234 apples", "1234")
    assert grade_numeric("#### 72", "Natalia sold ... \n#### 72")
    assert grade_numeric("It is 10.00 dollars", "10")
    assert not grade_numeric("I think 17, no wait", "18")
    assert not grade_numeric("no number here", "18")
    assert grade("numeric", "12", "12") and not grade("numeric", "-12", "12")
    with pytest.raises(ValueError):
        grade("essay", "a", "b")


def test_find_data_dir_exists() -> None:
    assert isinstance(find_data_dir(), Path)


def _modules_after_import(statement: str, prefix: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(sorted(m for m in sys.modules if m.startswith({prefix!r})))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return ast.literal_eval(done.stdout.strip())


def test_the_library_gate_imports_no_lab_module() -> None:
    """The gate reads answers with core.answers; bench.graders re-exports the same functions."""
    from entropy_exit_integrations.core import answers
    from entropy_exit_integrations.lab.bench import graders

    assert graders.extract_math_answer is answers.extract_math_answer
    assert graders.last_number is answers.last_number and graders.last_boxed is answers.last_boxed
    statement = (
        "import entropy_exit_integrations.gate as gate\n"
        "assert gate._default_extract('so \\\\boxed{12}') == '12'"
    )
    lab = [
        m
        for m in _modules_after_import(statement, "entropy_exit_integrations.")
        if m.split(".")[1] in ("bench", "local", "cli", "demo")
    ]
    assert lab == []


def test_plots_and_probes_do_not_import_the_commands() -> None:
    """No circle bench.commands -> plots -> probes -> commands: shared pieces live below them."""
    loaded = _modules_after_import(
        "import entropy_exit_integrations.lab.bench.plots, entropy_exit_integrations.lab.bench.probes",
        "entropy_exit_integrations.lab.bench.",
    )
    assert "entropy_exit_integrations.lab.bench.commands" not in loaded
    assert (
        "entropy_exit_integrations.lab.bench.answers" in loaded
        and "entropy_exit_integrations.lab.bench.policies" in loaded
    )
