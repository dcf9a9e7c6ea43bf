"""Issue 14's benchmark: every rule, probe rules included, on the same recorded GSM8K traces.

Reads trace files recorded by ``benchmarks/qwen_record.py`` (or ``entropy-exit bench``), a
streaming calibration profile (``entropy-exit calibrate --traces TRAIN --aggregation window``)
and optionally a sequence profile (the paper's tau), then builds these rows, all on the same
questions (the traces' intersection, in file order):

* no exit (the full greedy generation);
* the calibrated streaming exit (sliding window), with forced answers;
* the entropy-gated probe rule (``core.probes.ProbeRule(gate=...)``), two settings;
* periodic probes (Dynasor-CoT style) every 32 and 64 tokens with k = 2 and 3;
* DeepConf online (keep 0.9 and 0.1), budget cuts, the fixed 0.15-bit threshold, with forced
  answers;
* the paper's gate when ``--gate-extended`` is given (a file of extended-step results);

and the headroom in hindsight (``bench.probes.headroom``): what a perfect stop could save on the
questions the model gets right.

Every answer that needs the model (a probe or a forced answer at an exit point) is asked from
``--url-file``'s server once and cached in ``--cache`` (per question, trace and tokens kept), so a
rerun with everything cached asks nothing (``--offline`` refuses to ask). Writes ``results.json``,
``table.md`` and ``savings_vs_accuracy.png`` into ``--out``.

    python benchmarks/qwen_probe_bench.py --traces run/test.jsonl --profile run/profile_window.json \
        --url-file run/url.json --cache run/test.forced.json --out run/bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def load_all(paths: list[str], n: int | None) -> list[Any]:
    from entropy_exit_integrations.lab.bench.replay import load_traces

    traces = [t for p in paths if Path(p).exists() for t in load_traces(p)]
    seen: dict[str, Any] = {}
    for t in traces:
        seen.setdefault(t.problem_id, t)

    def order(pid: str) -> int:
        return int(pid.rsplit("-", 1)[1])

    ordered = sorted(seen.values(), key=lambda t: order(t.problem_id))
    return ordered[:n] if n else ordered


def fill(args: argparse.Namespace, answers: Any) -> None:
    """Ask the periodic probes (every 32 and 64 tokens, up to 3 agreeing) for every trace as the
    trace files grow, until they stop growing for ``--fill-idle`` seconds (cache filling only)."""
    from entropy_exit_integrations.core.probes import ProbeRule
    from entropy_exit_integrations.lab.bench.probes import replay_probes

    rules = [ProbeRule(every=e, agree=3, max_probes=64, max_tokens=16) for e in (32, 64)]
    done: set[str] = set()
    idle = time.perf_counter()
    while time.perf_counter() - idle < args.fill_idle:
        shard, shards = (int(v) for v in args.shard.split("/"))
        todo = [
            t
            for t in load_all(args.traces, args.n)
            if t.problem_id not in done and int(t.problem_id.rsplit("-", 1)[1]) % shards == shard
        ]
        if not todo:
            time.sleep(5)
            continue
        for trace in todo:
            for rule in rules:
                replay_probes(rule, trace, answers)
            done.add(trace.problem_id)
            answers.save()
            print(f"filled {trace.problem_id}: {answers.requests} requests, {answers.hits} hits", flush=True)
        idle = time.perf_counter()


def gate_extend(args: argparse.Namespace, client: Any, config: Any) -> None:
    """The paper's gate needs its extended step (Refine) on every question whose first-pass entropy
    is above tau[mean] of ``--seq-profile``; run it and write ``--gate-extended`` (resumable)."""
    from entropy_exit_integrations.core.calibration import Calibration
    from entropy_exit_integrations.gate import EntropyGate, Refine
    from entropy_exit_integrations.lab.bench.gating import run_extended
    from entropy_exit_integrations.lab.bench.runner import RunConfig
    from entropy_exit_integrations.lab.bench.traces import problems_of

    tau = Calibration.load(args.seq_profile).tau
    path = Path(args.gate_extended)
    done = json.loads(path.read_text()) if path.exists() else {}
    shard, shards = (int(v) for v in args.shard.split("/"))
    traces = [
        t
        for t in load_all(args.traces, args.n)
        if int(t.problem_id.rsplit("-", 1)[1]) % shards == shard
        and t.problem_id not in done
        and (t.entropy or 0.0) > tau
    ]
    print(f"tau[mean] {tau:.4f}: {len(traces)} questions need the extended step", flush=True)
    run = RunConfig(model=config.model, max_tokens=traces[0].max_tokens or 400, concurrency=1, progress=False)
    gate = EntropyGate(tau, Refine())
    for trace in traces:
        (ext,) = run_extended(client, problems_of([trace]), [trace], gate, run)
        done[trace.problem_id] = {
            "correct": ext.correct,
            "tokens": ext.tokens,
            "wall_s": round(ext.wall_time_s, 3),
        }
        path.write_text(json.dumps(done, indent=1))
        print(
            f"extended {trace.problem_id}: {ext.tokens} tok {ext.wall_time_s:.1f}s {ext.correct}", flush=True
        )


def main() -> None:
    from openai import OpenAI

    from entropy_exit_integrations.core.calibration import Calibration
    from entropy_exit_integrations.lab.bench.plots import savings_vs_accuracy_ci
    from entropy_exit_integrations.lab.bench.probes import (
        ProbeAnswers,
        bench_rows,
        gate_row,
        headline_table,
        headroom,
    )
    from entropy_exit_integrations.lab.bench.report import write_results
    from entropy_exit_integrations.lab.bench.runner import RunConfig
    from entropy_exit_integrations.lab.bench.traces import ForcedCache

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", nargs="+", required=True)
    parser.add_argument("--train-traces", nargs="*", default=[])
    parser.add_argument("--n", type=int)
    parser.add_argument("--contiguous", action="store_true", help="only the first run of consecutive ids")
    parser.add_argument("--profile")
    parser.add_argument("--seq-profile", help="sequence profile: tau[mean] for the gate row")
    parser.add_argument("--gate-extended", help="JSON {problem_id: {correct, tokens, wall_s}}")
    parser.add_argument("--url-file")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--offline", action="store_true")
    parser.add_argument("--merge-caches", nargs="*", default=[], help="more cache files to read in")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--out")
    parser.add_argument("--title", default="")
    parser.add_argument("--fill", action="store_true", help="only fill the cache with periodic probes")
    parser.add_argument("--fill-idle", type=float, default=300.0)
    parser.add_argument(
        "--shard",
        default="0/1",
        help="i/n: only questions whose number is i mod n (to fill caches in parallel)",
    )
    parser.add_argument("--extend", action="store_true", help="only run the gate's extended step")
    args = parser.parse_args()
    started = time.perf_counter()
    traces = load_all(args.traces, args.n)
    train = load_all(args.train_traces, None) if args.train_traces else None
    client = config = None
    if args.url_file and not args.offline:
        url = json.loads(Path(args.url_file).read_text())
        client = OpenAI(base_url=url["base_url"], api_key="sk-no-key", timeout=600, max_retries=0)
        config = RunConfig(model=url["model"], max_tokens=16, concurrency=args.concurrency, progress=False)
    cache = ForcedCache(args.cache)
    for extra in args.merge_caches:  # shards filled by parallel --fill runs
        if Path(extra).exists():
            before = len(cache.entries)
            cache.entries.update(
                {k: v for k, v in ForcedCache(extra).entries.items() if k not in cache.entries}
            )
            cache._dirty = cache._dirty or len(cache.entries) > before
    answers = ProbeAnswers(cache, client=client, config=config)
    if args.fill:
        fill(args, answers)
        return
    if args.extend:
        gate_extend(args, client, config)
        return
    profile = Calibration.load(args.profile)
    shard, shards = (int(v) for v in args.shard.split("/"))
    if shards > 1:  # fill the cache for a part of the questions (merge the caches for the table)
        traces = [t for t in traces if int(t.problem_id.rsplit("-", 1)[1]) % shards == shard]
    print(f"{len(traces)} test traces, {len(train or [])} train traces, {len(cache.entries)} cached answers")
    rows, per_question = bench_rows(
        traces, profile=profile, answers=answers, train_traces=train, concurrency=args.concurrency
    )
    if args.seq_profile and args.gate_extended and Path(args.gate_extended).exists():
        seq = Calibration.load(args.seq_profile)
        extended = json.loads(Path(args.gate_extended).read_text())
        if all(t.problem_id in extended or (t.entropy or 0) <= seq.tau for t in traces):
            row, outcomes = gate_row(traces, seq.tau, extended)
            rows.insert(1, row)
            per_question[row.rule] = [
                {"id": o.problem_id, "correct": o.correct, "tokens": o.tokens_used + o.forced_tokens}
                for o in outcomes
            ]
        else:
            print("gate row skipped: extended step missing for some questions")
    ids = [t.problem_id for t in traces]
    assert all([q["id"] for q in v] == ids for v in per_question.values()), "rows on different questions"
    room = headroom(traces, answers)
    answers.save()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    took = time.perf_counter() - started
    meta = {
        "model": traces[0].model,
        "n": len(traces),
        "questions": f"{ids[0]} .. {ids[-1]}",
        "max_tokens": traces[0].max_tokens,
        "k": traces[0].k,
        "live probe/forced requests this run": answers.requests + 0,
        "cache hits this run": answers.hits,
        "wall time s (this replay)": round(took, 1),
        "headroom (hindsight, right answers only)": room,
    }
    write_results(out, rows, meta=meta, extra={"per_question": per_question})
    (out / "table.md").write_text(headline_table(rows))
    savings_vs_accuracy_ci(rows, out / "savings_vs_accuracy.png", title=args.title)
    print(headline_table(rows))
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
