"""Reading the final answer out of a model's text: ``\\boxed{...}``, "the answer is ...", or the
last number.

The library needs this (the gate's entropy-weighted vote compares answers) and so does the lab
(``bench.graders`` grades with it), so it lives here, below both. Pure Python, no imports beyond
the standard library.
"""

from __future__ import annotations

import re

__all__ = ["extract_math_answer", "last_boxed", "last_number"]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_PHRASE = re.compile(r"(?:final answer(?: is)?|answer is|answer:)\s*[:=]?\s*(.+)", re.IGNORECASE)


def last_number(text: str) -> str | None:
    """The last number in the text, commas and currency removed (``"$1,234.50"`` -> ``"1234.50"``)."""
    found = _NUMBER.findall(text.replace("$", ""))
    if not found:
        return None
    value = found[-1].replace(",", "").rstrip(".")
    return value or None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, else None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        rest = text[start:].split(None, 1)  # "\boxed 5"
        return rest[1].split("$")[0].strip() if len(rest) > 1 else None
    depth = 0
    for index in range(brace, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : index]
    return None


def extract_math_answer(text: str) -> str | None:
    """The answer of a MATH-style response: last boxed, else after "answer is", else last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    phrases = _ANSWER_PHRASE.findall(text)
    if phrases:
        answer = phrases[-1].strip().split("\n")[0].strip()
        answer = re.sub(r"^\$+|\$+\.?$", "", answer).strip().rstrip(".").strip()
        if answer:
            return answer
    return last_number(text)
