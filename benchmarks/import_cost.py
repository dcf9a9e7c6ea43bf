"""Import cost of ``entropy_exit_integrations.langchain`` against LangChain's own core imports.

Issue 22's bound: ``import entropy_exit_integrations.langchain`` costs at most 1.3x
``import langchain_core.language_models, langchain_core.callbacks``. Each import runs in a fresh
interpreter ``--runs`` times (timed inside the process with ``time.perf_counter`` around the import
statement, so interpreter start-up is left out); the medians are printed side by side with their
ratio. Then the top-level packages the library's import loads beyond the baseline, each with its
cumulative time from one ``python -X importtime`` run, name what is imported eagerly.

Run: ``.venv/bin/python benchmarks/import_cost.py [--runs 10] [--limit 1.3]``; the exit status is 1
when the ratio is over the limit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

OURS = "import entropy_exit_integrations.langchain"
BASELINE = "import langchain_core.language_models, langchain_core.callbacks"
#: Packages an integration should import only on use.
_EAGER_WATCH = (
    "langchain_openai",
    "openai",
    "langchain",
    "langgraph",
    "llama_index",
    "tiktoken",
    "httpx",
    "langsmith",
    "numpy",
    "opentelemetry",
)

_TIMED = """
import sys, time, json
t = time.perf_counter()
{statement}
elapsed = time.perf_counter() - t
print(json.dumps({{"s": elapsed, "top": sorted({{m.split(".")[0] for m in sys.modules}})}}))
"""


def _run(statement: str) -> tuple[float, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _TIMED.format(statement=statement)],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return float(data["s"]), set(data["top"])


class _Node:
    def __init__(self, depth: int, self_us: int, cumulative_us: int, name: str) -> None:
        self.depth, self.self_us, self.cumulative_us, self.name = depth, self_us, cumulative_us, name
        self.children: list[_Node] = []


def _import_tree(statement: str) -> list[_Node]:
    """Every module of one ``python -X importtime`` run, children attached (the output is post-order)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True, check=True
    )
    nodes: list[_Node] = []
    stack: list[_Node] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|")
        if not self_us.strip().isdigit():  # the header line
            continue
        depth = (len(name) - len(name.lstrip())) // 2
        node = _Node(depth, int(self_us), int(cumulative_us), name.strip())
        while stack and stack[-1].depth > depth:
            node.children.insert(0, stack.pop())
        stack.append(node)
        nodes.append(node)
    return nodes


def _self_by_package(nodes: list[_Node]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for node in nodes:
        top = node.name.split(".")[0]
        totals[top] = totals.get(top, 0) + node.self_us
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="fresh interpreters per import (default 10)")
    parser.add_argument("--limit", type=float, default=1.3, help="largest ratio accepted (default 1.3)")
    args = parser.parse_args(argv)

    ours, base = [], []
    ours_top: set[str] = set()
    base_top: set[str] = set()
    for _ in range(args.runs):  # interleaved, so that a busy machine slows both alike
        seconds, ours_top = _run(OURS)
        ours.append(seconds)
        seconds, base_top = _run(BASELINE)
        base.append(seconds)
    ours_ms, base_ms = statistics.median(ours) * 1e3, statistics.median(base) * 1e3
    ratio = ours_ms / base_ms
    width = max(len(OURS), len(BASELINE))
    print(f"median of {args.runs} fresh interpreters (import statement only):")
    print(f"  {BASELINE:<{width}}  {base_ms:7.1f} ms  (min {min(base) * 1e3:.1f}, max {max(base) * 1e3:.1f})")
    print(f"  {OURS:<{width}}  {ours_ms:7.1f} ms  (min {min(ours) * 1e3:.1f}, max {max(ours) * 1e3:.1f})")
    verdict = "within" if ratio <= args.limit else "OVER"
    print(f"  ratio {ratio:.2f}x ({verdict} the {args.limit}x limit)")

    ours_tree, base_tree = _import_tree(OURS), _import_tree(BASELINE)
    ours_pkg, base_pkg = _self_by_package(ours_tree), _self_by_package(base_tree)
    print("self time by top-level package, one -X importtime run each (ms; * = not loaded by the baseline):")
    print(f"  {'package':<28} {'ours':>7} {'baseline':>9}")
    for name in sorted(ours_pkg, key=lambda n: -ours_pkg[n])[:15]:
        mark = "" if name in base_top else " *"
        print(f"  {name:<28} {ours_pkg[name] / 1e3:7.1f} {base_pkg.get(name, 0) / 1e3:9.1f}{mark}")
    print("where the package's modules pull the rest in (cumulative ms; direct imports of 10 ms or more):")
    for node in ours_tree:
        if node.name.startswith("entropy_exit_integrations") and node.cumulative_us >= 10_000:
            heavy = [c for c in node.children if c.cumulative_us >= 10_000]
            print(f"  {node.name} {node.cumulative_us / 1e3:.1f}")
            for child in heavy:
                print(f"    <- {child.name} {child.cumulative_us / 1e3:.1f}")
    eager = [m for m in _EAGER_WATCH if m in ours_top]
    print(
        f"loaded by the import (watched): {', '.join(eager) or 'none'}; "
        f"not loaded: {', '.join(m for m in _EAGER_WATCH if m not in ours_top) or 'none'}"
    )
    return 0 if ratio <= args.limit else 1


if __name__ == "__main__":
    raise SystemExit(main())
