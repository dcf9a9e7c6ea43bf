"""The README's "Use it" section runs as written, in order, against the embedded server.

What is checked:

* ``test_use_it_blocks_are_complete`` (no server): the section is delimited by the markers
  ``<!-- readme-test: start`` and ``<!-- readme-test: end -->``; it holds the examples the README
  promises (the openai helper, ``ChatEntropyExit``, ``ChatDeepSeek``, the callback handler, the
  agent middleware with a ``@tool``, ``EntropyExitLLM`` with ``http_clients()``, the ledger, probes);
  every block compiles, none asks ``"..."``, and the first one points at
  ``entropy-exit serve --port 8080`` (``http://127.0.0.1:8080/v1``, model ``smollm2-135m-instruct``).
* ``test_use_it_blocks_run_in_order``: the blocks run, in README order, in ONE namespace, in a
  fresh interpreter (a subprocess started in a temporary directory, so every import is the
  installed package's and nothing is borrowed from the test process), against this session's
  ``llama_server``: ``http://127.0.0.1:8080/v1`` is rewritten to its ``base_url`` (and the model id
  to its model, should the fixture serve another). Exit code 0 means every block ran: a name a
  block uses without defining it (or a block it says it continues defining it) is a
  ``NameError``, a wrong argument a ``TypeError``. The output must also carry none of the
  package's own ``EntropyExitWarning`` s (e.g. ``EntropyExitLLM`` without the hooked clients, a
  logprob refusal run unmonitored): the README shows correct use.

Nothing is asserted about the tiny model's answers, entropies or whether an exit happened; the
blocks only print them. A failure names the README line (blocks are compiled with their README
line numbers, under the file name ``README.md``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
START = "<!-- readme-test: start"
END = "<!-- readme-test: end -->"
SERVE_URL = "http://127.0.0.1:8080/v1"
"""The URL ``entropy-exit serve --port 8080`` prints, as the README's blocks write it."""
SERVE_MODEL = "smollm2-135m-instruct"
TIMEOUT_S = 1200
"""Generous: about 20 s on an idle 2-core machine, but CI shares the cores with other servers."""

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)

#: Runs in the subprocess: exec each block, in order, in one namespace, with README line numbers.
RUNNER = """\
import json, sys
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__"}
for number, (line, source) in enumerate(blocks, 1):
    print(f"--- README block {number} (README.md line {line}) ---", flush=True)
    exec(compile("\\n" * (line - 1) + source, "README.md", "exec"), namespace)
print("--- all README blocks ran ---", flush=True)
"""


def use_it_blocks(text: str | None = None) -> list[tuple[int, str]]:
    """``(first code line, source)`` of every Python block between the markers, in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    start = text.index(START)
    end = text.index(END, start)
    blocks = []
    for match in _FENCE.finditer(text, start, end):
        line = text.count("\n", 0, match.start(1)) + 1
        blocks.append((line, match.group(1)))
    return blocks


def test_use_it_blocks_are_complete() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, "one start and one end marker"
    blocks = use_it_blocks(text)
    assert len(blocks) >= 7, f"only {len(blocks)} Python blocks in the README's 'Use it' section"
    joined = "\n".join(source for _, source in blocks)
    for needed in (
        "stream_chat(",
        "ChatEntropyExit(",
        "ChatDeepSeek(",
        "EntropyExitCallbackHandler(",
        "EntropyExitMiddleware(",
        "@tool",
        "EntropyExitLLM(",
        "http_clients()",
        "SavingsLedger()",
        "ProbeRule(",
    ):
        assert needed in joined, f"the 'Use it' blocks no longer show {needed}"
    assert '"..."' not in joined and "'...'" not in joined, "a block asks '...' instead of a question"
    first = blocks[0][1]
    assert SERVE_URL in first and SERVE_MODEL in first, "block 1 must point at entropy-exit serve --port 8080"
    for line, source in blocks:
        compile("\n" * (line - 1) + source, "README.md", "exec")  # a SyntaxError names the line


def test_use_it_blocks_run_in_order(llama_server: Any, tmp_path: Path) -> None:
    blocks = [
        (line, source.replace(SERVE_URL, llama_server.base_url).replace(SERVE_MODEL, llama_server.model))
        for line, source in use_it_blocks()
    ]
    (tmp_path / "blocks.json").write_text(json.dumps(blocks), encoding="utf-8")
    (tmp_path / "run_readme.py").write_text(RUNNER, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "run_readme.py", "blocks.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    shown = f"stdout (end):\n{done.stdout[-4000:]}\nstderr (end):\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"a README block failed (exit code {done.returncode}):\n{shown}"
    assert "--- all README blocks ran ---" in done.stdout, shown
    assert done.stdout.count("--- README block ") == len(blocks), shown
    assert "EntropyExitWarning" not in done.stderr, f"a README block misuses the package:\n{shown}"
