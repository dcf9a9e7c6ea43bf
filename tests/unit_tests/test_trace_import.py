"""Trace import: per-token top-k lists and OpenAI/vLLM responses into the trace format.

Each shape converts (plain and gzip, through the library and the CLI), and each bad input is
refused with one line that names the file, the line and the fix (exit code 2 from the CLI).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import pytest

from entropy_exit_integrations.core.tokens import Phase
from entropy_exit_integrations.errors import EntropyExitError
from entropy_exit_integrations.lab.bench.datasets import Problem
from entropy_exit_integrations.lab.bench.replay import load_traces
from entropy_exit_integrations.lab.bench.traces import (
    convert_chunks,
    convert_file,
    convert_responses,
    convert_topk,
)
from entropy_exit_integrations.lab.cli import main

RECORDINGS = Path(__file__).resolve().parent.parent / "data" / "recordings"
PIECES = ["The", " answer", " is", " 7", "."]


def entry(text: str, logprob: Any = -0.1, alt: Any = -2.4) -> dict[str, Any]:
    return {
        "token": text,
        "logprob": logprob,
        "bytes": list(text.encode()),
        "top_logprobs": [{"token": text, "logprob": logprob}, {"token": "x", "logprob": alt}],
    }


def topk_row(**change: Any) -> dict[str, Any]:
    row = {
        "problem_id": "q1",
        "question": "3 + 4?",
        "reference": "7",
        "correct": True,
        "text": "The answer is 7.",
        "tokens": [entry(t) for t in PIECES],
    }
    row.update(change)
    return row


def response(content: str = "The answer is 7.", reasoning: str | None = None, **change: Any) -> dict:
    pieces = ([reasoning] if reasoning else []) + PIECES
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "qwq-32b",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": {"content": [entry(t) for t in pieces]},
                "finish_reason": "stop",
            }
        ],
    }
    body.update(change)
    return body


def write(path: Path, rows: list[Any]) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def test_topk_objects_convert(tmp_path: Path) -> None:
    (trace,) = convert_topk(write(tmp_path / "t.jsonl", [topk_row()]))
    assert [t.token for t in trace.tokens] == PIECES
    assert trace.tokens[0].top_tokens == ("The", "x") and trace.tokens[0].top_logprobs == (-0.1, -2.4)
    assert trace.correct is True and trace.problem_id == "q1" and trace.reference == "7"
    assert trace.k == 2 and trace.text == "The answer is 7."


def test_topk_lists_with_phases_and_gzip(tmp_path: Path) -> None:
    tokens = [["3", -0.5, ["3", "4"], [-0.5, -1.0], "reasoning"]] + [
        [t, -0.1, [t, "x"], [-0.1, -2.4]] for t in PIECES
    ]
    row = topk_row(tokens=tokens, problem_id=5, reference=7, reasoning="3")
    del row["correct"]  # graded against the reference
    converted = convert_file(write(tmp_path / "t.jsonl.gz", [row]))
    assert converted.shape == "topk" and converted.graded == 1
    (trace,) = converted.traces
    assert trace.tokens[0].phase is Phase.REASONING and trace.tokens[1].phase is Phase.ANSWER
    assert trace.problem_id == "5" and trace.reference == "7" and trace.correct is True


def test_topk_inline_think_and_text_from_tokens(tmp_path: Path) -> None:
    pieces = ["<think>", "3+4", "</think>", *PIECES]
    row = topk_row(tokens=[entry(t) for t in pieces], text="<think>3+4</think>The answer is 7.")
    (trace,) = convert_topk(write(tmp_path / "t.jsonl", [row]))
    assert [t.phase for t in trace.tokens[:3]] == [Phase.REASONING] * 3
    assert trace.text == "The answer is 7." and trace.reasoning == "3+4"
    no_text = topk_row()
    del no_text["text"]
    (trace,) = convert_topk(write(tmp_path / "u.jsonl", [no_text]))
    assert trace.text == "The answer is 7."


def test_topk_rows_pair_with_problems_in_order(tmp_path: Path) -> None:
    rows = [{"tokens": [entry(t) for t in PIECES], "text": "The answer is 7."}] * 2
    problems = [Problem("a", "3 + 4?", "7", "numeric"), Problem("b", "2 + 2?", "4", "numeric")]
    first, second = convert_topk(write(tmp_path / "t.jsonl", rows), problems)
    assert (first.problem_id, first.correct) == ("a", True)
    assert (second.problem_id, second.question, second.correct) == ("b", "2 + 2?", False)
    with pytest.raises(EntropyExitError, match="2 rows but only 1 problems"):
        convert_topk(tmp_path / "t.jsonl", problems[:1])


def test_openai_response_with_reasoning_field(tmp_path: Path) -> None:
    body = response(reasoning="Adding 3 and 4 gives 7. ")
    path = write(tmp_path / "r.jsonl", [{"response": body, "problem_id": "q1", "reference": "7"}])
    converted = convert_file(path)
    assert converted.shape == "openai"
    (trace,) = converted.traces
    assert trace.tokens[0].phase is Phase.REASONING
    assert all(t.phase is Phase.ANSWER for t in trace.tokens[1:])
    assert trace.text == "The answer is 7." and trace.reasoning == "Adding 3 and 4 gives 7. "
    assert trace.correct is True and trace.model == "qwq-32b" and trace.finish_reason == "stop"


def test_openai_response_one_document_and_vllm_reasoning(tmp_path: Path) -> None:
    body = response()
    body["choices"][0]["message"]["reasoning"] = "short"  # logprobs cover the content only
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"response": body, "correct": False}, indent=2))
    (trace,) = convert_responses(path)
    assert all(t.phase is Phase.ANSWER for t in trace.tokens) and trace.reasoning == "short"
    assert trace.correct is False and trace.problem_id == "chatcmpl-1"
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"response": body, "correct": True}] * 2, indent=1))
    assert len(convert_responses(listed)) == 2


def test_chunks_still_convert_through_convert_file() -> None:
    converted = convert_file(RECORDINGS / "llamacpp_chat_top20.jsonl")
    assert converted.shape == "chunks"
    assert converted.traces == convert_chunks(RECORDINGS / "llamacpp_chat_top20.jsonl")


def test_non_finite_logprobs_are_kept_unknown_and_counted(tmp_path: Path) -> None:
    tokens = [entry(t) for t in PIECES]
    tokens[1] = entry(" answer", logprob=float("nan"))
    tokens[2] = entry(" is", alt=float("-inf"))
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(topk_row(tokens=tokens)) + "\n")  # json writes NaN, -Infinity
    converted = convert_file(path)
    assert converted.non_finite == 2
    (trace,) = converted.traces
    assert trace.tokens[1].top_logprobs == () and trace.tokens[1].logprob is None
    assert all(math.isfinite(v) for t in trace.tokens for v in t.top_logprobs)
    assert "2 tokens had non-finite logprobs" in converted.describe()
    everything = [entry(t, logprob=float("nan")) for t in PIECES]
    path.write_text(json.dumps(topk_row(tokens=everything)) + "\n")
    with pytest.raises(EntropyExitError, match="no token has finite logprobs"):
        convert_file(path)


BAD_TOPK = [
    ({"correct": "no"}, "correct must be true or false \\(a JSON boolean\\), got 'no'"),
    ({"correct": 1}, "correct must be true or false .*got 1"),
    ({"correct": None}, "correct must be true or false .*got None"),
    ({"tokens": []}, "tokens must be a non-empty list"),
    ({"tokens": "abc"}, "tokens must be a non-empty list"),
    ({"tokens": [entry("a", logprob="-0.1")]}, "tokens\\[0\\] logprob must be a number, got '-0.1'"),
    ({"tokens": [entry("a", logprob=True)]}, "logprob must be a number, got True"),
    ({"tokens": [entry("a", logprob=0.9, alt=0.1)]}, "is positive: logprobs are natural logs"),
    ({"tokens": [["a", -0.1, ["a", "b"], [-0.1]]]}, "2 top tokens but 1 top logprobs"),
    ({"tokens": [["a", -0.1]]}, "must be .* or \\[text, logprob, \\[top tokens\\], \\[top logprobs\\]\\]"),
    ({"tokens": [{"logprob": -0.1}]}, "tokens\\[0\\] has no token field"),
    (
        {"tokens": [{"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "a"}]}]},
        "needs token and logprob",
    ),
    ({"tokens": [["a", -0.1, ["a"], [-0.1], "thinking"]]}, 'phase must be "reasoning" or "answer"'),
    ({"problem_id": ["x"]}, "problem_id must be a string or a whole number"),
    ({"reference": True}, "reference must be a string or a number"),
    ({"kind": "code"}, 'kind must be "numeric" or "math"'),
    ({"text": 7}, "text must be a string"),
    ({"wall_time_s": -1}, "wall_time_s must be a finite number"),
]


@pytest.mark.parametrize(("change", "message"), BAD_TOPK)
def test_bad_topk_rows_name_file_line_and_fix(tmp_path: Path, change: dict, message: str) -> None:
    path = write(tmp_path / "t.jsonl", [topk_row(), topk_row(**change)])
    with pytest.raises(EntropyExitError, match=message) as caught:
        convert_file(path, "topk")
    assert str(caught.value).startswith(f"{path}:2: ") and "\n" not in str(caught.value)
    assert "a row is" in str(caught.value)  # the fix


def test_neither_correct_nor_reference_is_refused(tmp_path: Path) -> None:
    row = topk_row()
    del row["correct"], row["reference"]
    with pytest.raises(EntropyExitError, match=r":1: neither correct nor reference: add correct"):
        convert_file(write(tmp_path / "t.jsonl", [row]))


def _no_logprobs() -> dict:
    body = response()
    body["choices"][0]["logprobs"] = None
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"choices": []}, "no choices: expected a chat.completion response"),
        ({"choices": [{"index": 0, "logprobs": {"content": []}}]}, "message is missing: a streamed response"),
        (_no_logprobs(), "logprobs.content is empty: request logprobs=true and top_logprobs"),
        (response(content=3), "message.content must be a string"),
    ],
)
def test_bad_responses_name_file_line_and_fix(tmp_path: Path, body: dict, message: str) -> None:
    path = write(tmp_path / "r.jsonl", [{"response": body, "correct": True}])
    with pytest.raises(EntropyExitError, match=message) as caught:
        convert_file(path, "openai")
    assert str(caught.value).startswith(f"{path}:1: ") and "a row is a chat.completion" in str(caught.value)


def test_unknown_shape_and_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", [{"question": "what?"}])
    with pytest.raises(EntropyExitError, match=":1: cannot tell the shape .* --from chunks\\|topk\\|openai"):
        convert_file(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(EntropyExitError, match="no rows"):
        convert_file(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(topk_row()) + "\n{oops\n")
    with pytest.raises(EntropyExitError, match=f"{broken}:2: not JSON"):
        convert_file(broken)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_convert_each_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sources = {
        "topk": write(tmp_path / "topk.jsonl.gz", [topk_row(), topk_row(problem_id="q2", correct=False)]),
        "openai": write(
            tmp_path / "r.jsonl", [{"response": response(), "problem_id": "q1", "correct": True}]
        ),
        "chunks": RECORDINGS / "llamacpp_chat_top20.jsonl",
    }
    for shape, source in sources.items():
        out = tmp_path / f"{shape}.traces.jsonl"
        code, printed, err = run(["convert", str(source), "--out", str(out)], capsys)
        assert code == 0, err
        assert f"read as {shape}" in printed and load_traces(out)
    code, printed, _ = run(["convert", "--from", "topk", str(sources["topk"]), "--out", str(out)], capsys)
    assert code == 0 and "2 traces (10 tokens, 1 correct) read as topk" in printed


def test_cli_convert_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path / "t.jsonl", [topk_row(correct="yes")])
    code, _, err = run(["convert", str(bad), "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"entropy-exit convert: error: {bad}:1: correct must be true or false" in err
    missing = tmp_path / "missing.jsonl"
    code, _, err = run(["convert", str(missing), "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and f"input file {missing}: no such file" in err
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "--from", "xml", str(bad), "--out", "o"])
    assert exit_.value.code == 2
    capsys.readouterr()
