"""Serve Qwen2.5-Coder-0.5B-Instruct and record greedy GSM8K traces incrementally (issue 14).

Two subcommands, meant to run as separate background processes:

* ``serve``: fetch and verify the GGUF (``bench.models.fetch_qwen_coder_05b``), start
  ``LocalServer`` with it and write ``{"base_url", "model"}`` to ``--url-file``; serve until killed.
* ``record``: read the URL file, record one full greedy generation per question (top-20 logprobs,
  temperature 0, ``--max-tokens``, the package's GSM8K prompt) with ``--concurrency`` streams and
  append each finished trace to ``--out`` (trace JSONL, schema ``entropy-exit-trace``) at once, so
  a partial run is usable; questions already in the file are skipped (resume). Progress and
  tokens/s go to stdout.

    python benchmarks/qwen_record.py serve --url-file run/url.json --threads 2 --parallel 3 &
    python benchmarks/qwen_record.py record --url-file run/url.json --split train --n 32 --out run/train.jsonl
    python benchmarks/qwen_record.py record --url-file run/url.json --split test --n 200 --out run/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def serve(args: argparse.Namespace) -> None:
    from entropy_exit_integrations.lab.bench.models import QWEN_CODER_05B_SHA256, fetch_qwen_coder_05b
    from entropy_exit_integrations.lab.local.pins import cache_dir
    from entropy_exit_integrations.lab.local.server import LocalServer

    path = Path(args.model_file) if args.model_file else fetch_qwen_coder_05b(cache_dir() / "models")
    server = LocalServer(
        model_path=path,
        model_sha256=None if args.model_file else QWEN_CODER_05B_SHA256,
        threads=args.threads,
        parallel=args.parallel,
        ctx_size=args.ctx_size,
        log_path=args.log,
        alias="qwen2.5-coder-0.5b-instruct",
    )
    with server:
        Path(args.url_file).write_text(json.dumps({"base_url": server.base_url, "model": server.model}))
        print(f"serving {path} at {server.base_url}", flush=True)
        while True:
            time.sleep(3600)


def record(args: argparse.Namespace) -> None:
    from openai import OpenAI

    from entropy_exit_integrations.lab.bench.datasets import load_dataset
    from entropy_exit_integrations.lab.bench.runner import RunConfig, record_traces

    url = json.loads(Path(args.url_file).read_text())
    client = OpenAI(base_url=url["base_url"], api_key="sk-no-key", timeout=600)
    problems = load_dataset("gsm8k", split=args.split, n=args.n, offset=args.offset)
    out = Path(args.out)
    done: set[str] = set()
    if out.exists():
        done = {json.loads(line)["problem_id"] for line in out.read_text().splitlines() if line.strip()}
    todo = [p for p in problems if p.id not in done]
    print(f"{len(problems)} questions, {len(done)} already recorded, {len(todo)} to go", flush=True)
    config = RunConfig(model=url["model"], max_tokens=args.max_tokens, concurrency=1, progress=False)
    lock = threading.Lock()
    started = time.perf_counter()
    counts = {"n": 0, "tokens": 0, "correct": 0}

    def one(problem):  # type: ignore[no-untyped-def]
        (trace,) = record_traces(client, [problem], config)
        with lock, out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(trace.to_json()) + "\n")
            counts["n"] += 1
            counts["tokens"] += len(trace.tokens)
            counts["correct"] += trace.correct
            elapsed = time.perf_counter() - started
            print(
                f"{counts['n']}/{len(todo)} {problem.id} {len(trace.tokens)} tok "
                f"{trace.wall_time_s:.1f}s correct={trace.correct} | total {counts['tokens']} tok "
                f"{elapsed:.0f}s {counts['tokens'] / elapsed:.1f} tok/s "
                f"acc {counts['correct']}/{counts['n']}",
                flush=True,
            )

    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(one, todo))
    print(f"done in {time.perf_counter() - started:.0f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--url-file", required=True)
    s.add_argument("--model-file")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--parallel", type=int, default=3)
    s.add_argument("--ctx-size", type=int, default=2048)
    s.add_argument("--log")
    r = sub.add_parser("record")
    r.add_argument("--url-file", required=True)
    r.add_argument("--split", default="test")
    r.add_argument("--n", type=int, default=200)
    r.add_argument("--offset", type=int, default=0)
    r.add_argument("--max-tokens", type=int, default=400)
    r.add_argument("--concurrency", type=int, default=2)
    r.add_argument("--out", required=True)
    args = parser.parse_args()
    serve(args) if args.command == "serve" else record(args)


if __name__ == "__main__":
    main()
