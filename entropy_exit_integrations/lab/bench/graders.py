"""Answer extraction and grading: GSM8K (numeric) and MATH (LaTeX normalisation).

``grade(kind, response, reference)`` is the one entry point; ``kind`` is ``"numeric"`` (GSM8K,
the arithmetic set) or ``"math"`` (MATH-500, AIME). Extraction looks for ``\\boxed{...}`` first,
then an "answer is" / "Final answer:" phrase, then the last number (``core.answers``, which the
library's gate shares; re-exported here).
"""

from __future__ import annotations

import re
from fractions import Fraction

from entropy_exit_integrations.core.answers import extract_math_answer, last_boxed, last_number

__all__ = [
    "extract_math_answer",
    "grade",
    "grade_math",
    "grade_numeric",
    "last_boxed",
    "last_number",
    "math_equal",
    "normalize_math",
    "parse_number",
]


def parse_number(text: str) -> Fraction | None:
    """A plain number, ``a/b`` or ``\\frac{a}{b}`` (signed) as an exact fraction, else None."""
    s = text.strip().replace(" ", "")
    sign = 1
    if s.startswith("-"):
        sign, s = -1, s[1:]
    m = re.fullmatch(r"\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s) or re.fullmatch(r"(-?[\d.]+)/(-?[\d.]+)", s)
    try:
        if m:
            den = Fraction(m.group(2))
            return None if den == 0 else sign * Fraction(m.group(1)) / den
        if re.fullmatch(r"\d+(?:\.\d+)?|\.\d+", s):
            return sign * Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def grade_numeric(response: str, reference: str) -> bool:
    """GSM8K rule: the last number of the response equals the reference numerically."""
    got = last_number(extract_math_answer(response) or response)
    want = last_number(reference)
    if got is None or want is None:
        return False
    return abs(float(got) - float(want)) < 1e-6 * max(1.0, abs(float(want)))


_UNIT_WORDS = (
    r"degrees?|cents?|dollars?|units?|inches|inch|feet|foot|ft|cm|mm|km|meters?|m|miles?|"
    r"hours?|minutes?|seconds?|days?|years?|pounds?|square|sq|cubic|mph|points?|percent"
)


def _unwrap_text(s: str) -> str:
    return re.sub(r"\\(?:text|textbf|textit|mbox|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", s)


def _fix_fracs(s: str) -> str:
    """Brace bare arguments: ``\\frac12``, ``\\frac{270}7``, ``\\frac9{19}``, ``\\sqrt2``."""
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\{[^{}]*\})(\w)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\frac(\w)(\{)", r"\\frac{\1}\2", s)
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def normalize_math(answer: str) -> str:
    """Canonical string form of a LaTeX answer (see the module docstring for the rules)."""
    s = answer.strip()
    s = s.replace("\n", " ").replace("\\!", "").replace("\\,", "").replace("\\;", "")
    s = s.replace("\\:", "").replace("\\ ", " ").replace("\\$", "").replace("$", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{?\\circ\}?|°|\\degree", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _unwrap_text(s)
    s = re.sub(rf"(?<=[\d}}])\s*(?:{_UNIT_WORDS})(?:\s*\^\s*\{{?[23]\}}?)?\s*$", "", s)
    s = re.sub(r"^\s*[a-zA-Z]\s*(?:=|\\in)\s*", "", s)  # "x = 5", "x \in [-2,7]"
    s = _fix_fracs(s)
    s = s.replace(" ", "").rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"\(([A-Ea-e])\)", s):
        s = s[1].upper()
    if re.fullmatch(r"[A-Za-z ]+", s) and len(s) > 1:
        s = s.lower()
    return s


def _split_top(s: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _equal_atoms(a: str, b: str) -> bool:
    x, y = parse_number(a), parse_number(b)
    if x is not None and y is not None:
        return abs(float(x) - float(y)) <= 1e-6 * max(1.0, abs(float(y)))
    return a == b


def math_equal(got: str, want: str) -> bool:
    """Equivalence of two normalised answers: numbers as fractions, tuples/intervals by parts."""
    if _equal_atoms(got, want):
        return True
    if len(got) > 1 and len(want) > 1 and got[0] + got[-1] == want[0] + want[-1] and got[0] in "([{":
        a, b = _split_top(got[1:-1]), _split_top(want[1:-1])
        return len(a) == len(b) > 1 and all(map(_equal_atoms, a, b))
    a, b = _split_top(got), _split_top(want)
    if len(a) == len(b) > 1:  # an unbracketed list of solutions: order does not matter
        return all(any(_equal_atoms(x, y) for y in b) for x in a) and all(
            any(_equal_atoms(y, x) for x in a) for y in b
        )
    return False


def grade_math(response: str, reference: str) -> bool:
    """MATH rule: extracted answer equals the reference after LaTeX normalisation."""
    got = extract_math_answer(response)
    if got is None:
        return False
    return math_equal(normalize_math(got), normalize_math(reference))


def grade(kind: str, response: str, reference: str) -> bool:
    """Grade one response: ``kind`` is ``"numeric"`` or ``"math"``."""
    if kind == "numeric":
        return grade_numeric(response, reference)
    if kind == "math":
        return grade_math(response, reference)
    raise ValueError(f"unknown grader kind {kind!r} (numeric, math)")
