"""Benchmark questions: GSM8K, MATH-500, AIME-24 (shipped as package data), any JSONL, and
generated arithmetic.

The files live in ``entropy_exit_integrations/lab/bench/data`` with their licences and sources
(``SOURCES.md`` there: GSM8K MIT, MATH MIT, AIME 2024 problems without a stated licence); set
``ENTROPY_EXIT_DATA`` to read them from another directory.

``arithmetic`` is a deterministic generator for small models: SmolLM2-135M-Instruct, the embedded
default, solves none of GSM8K, so its demos and tests need questions it can sometimes get right
("What is 7 + 5?"). It mixes easy and harder items so that both classes appear.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from entropy_exit_integrations.errors import EntropyExitError

from .files import json_lines

DATASETS = ("arithmetic", "gsm8k", "math500", "aime24")
_FILES = {
    ("gsm8k", "train"): "gsm8k_train_head200.jsonl",
    ("gsm8k", "test"): "gsm8k_test.jsonl",
    ("math500", "test"): "math500_test.jsonl",
    ("aime24", "test"): "aime24_test.jsonl",
}


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer and the grader kind (``numeric`` or ``math``)."""

    id: str
    question: str
    answer: str
    kind: str


def find_data_dir() -> Path:
    """The directory holding the dataset files: ``$ENTROPY_EXIT_DATA``, else the package's own."""
    override = os.environ.get("ENTROPY_EXIT_DATA")
    path = Path(override) if override else Path(str(resources.files(__package__) / "data"))
    if not (path / "gsm8k_test.jsonl").is_file():
        where = "ENTROPY_EXIT_DATA" if override else "the installed package"
        raise EntropyExitError(
            f"dataset files not found in {path} ({where}): expected gsm8k_test.jsonl, "
            "math500_test.jsonl and aime24_test.jsonl"
        )
    return path


def _gsm8k_answer(text: str) -> str:
    return text.split("####")[-1].strip().replace(",", "")


def read_jsonl(path: str | Path, *, kind: str | None = None, prefix: str | None = None) -> list[Problem]:
    """Problems from a JSONL file (plain or gzip) with ``question``/``problem`` and ``answer`` fields."""
    path = Path(path)
    problems = []
    for line_number, row in json_lines(path):
        number = line_number - 1
        question = row.get("question", row.get("problem")) if isinstance(row, dict) else None
        if question is None or "answer" not in row:
            raise EntropyExitError(f"{path}:{number + 1}: needs question (or problem) and answer")
        answer = str(row["answer"])
        guess = kind or ("numeric" if "####" in answer or _is_number(answer) else "math")
        if "####" in answer:
            answer = _gsm8k_answer(answer)
        problems.append(
            Problem(
                f"{prefix or path.stem}-{row.get('id', row.get('unique_id', number))}",
                str(question),
                answer,
                guess,
            )
        )
    return problems


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def arithmetic(n: int, *, seed: int = 0) -> list[Problem]:
    """``n`` generated questions: single-digit sums, two-digit sums and differences, products."""
    rng = random.Random(seed)
    problems = []
    for index in range(n):
        form = index % 4
        if form == 0:
            a, b, op = rng.randint(1, 9), rng.randint(1, 9), "+"
        elif form == 1:
            a, b, op = rng.randint(10, 99), rng.randint(10, 99), "+"
        elif form == 2:
            a, b = sorted((rng.randint(10, 99), rng.randint(1, 99)), reverse=True)
            op = "-"
        else:
            a, b, op = rng.randint(2, 9), rng.randint(2, 12), "*"
        value = a + b if op == "+" else a - b if op == "-" else a * b
        shown = "x" if op == "*" else op
        problems.append(Problem(f"arith-{seed}-{index}", f"What is {a} {shown} {b}?", str(value), "numeric"))
    return problems


def load_dataset(
    name: str, *, split: str = "test", n: int | None = None, seed: int = 0, offset: int = 0
) -> list[Problem]:
    """Load ``name`` (a built-in name or a JSONL path); the first ``n`` rows after ``offset``.

    ``split="train"`` uses the GSM8K train head where it exists (for calibration) and falls back to
    the test split elsewhere; arithmetic uses a different seed per split so they never overlap.
    """
    if name == "arithmetic":
        count = (n or 100) + offset
        return arithmetic(count, seed=seed + (1000 if split == "train" else 0))[offset:]
    if name in DATASETS:
        file = _FILES.get((name, split)) or _FILES[(name, "test")]
        kind = "numeric" if name == "gsm8k" else "math"
        problems = read_jsonl(find_data_dir() / file, kind=kind, prefix=f"{name}-{split}")
    elif Path(name).exists():
        problems = read_jsonl(name)
    else:
        raise EntropyExitError(f"unknown dataset {name!r}: use one of {DATASETS} or a JSONL path")
    problems = problems[offset:]
    return problems if n is None else problems[:n]


SYSTEM_PROMPTS = {
    "numeric": "Solve the problem. Think briefly, then end with 'The answer is N.' where N is a number.",
    "math": "Solve the problem step by step. Put the final answer in \\boxed{}.",
}


def messages_for(problem: Problem, system_prompt: str | None = None) -> list[dict[str, str]]:
    """Chat messages for a problem: the kind's system prompt, then the question."""
    return [
        {"role": "system", "content": system_prompt or SYSTEM_PROMPTS[problem.kind]},
        {"role": "user", "content": problem.question},
    ]
