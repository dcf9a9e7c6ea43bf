#!/usr/bin/env bash
# Rebuild a committed bench table offline, through the CLI, from its artifacts in
# benchmarks/results/<name>/ (gunzipped into a temp dir), and diff it against that folder's
# table.md. Exit 0 when every table named is identical; asks no model (--offline).
#   bash benchmarks/reproduce_table.sh                  (every results folder with a table.md)
#   bash benchmarks/reproduce_table.sh qwen15_gsm8k     (one: qwen_gsm8k = 0.5B, qwen15_gsm8k = 1.5B)
# About 10 s a table on 2 cores. The runs used the same flags, the ones below.
# ENTROPY_EXIT (default: .venv/bin/entropy-exit, else entropy-exit on PATH) picks the command.
set -euo pipefail
cd "$(dirname "$0")/.."
cli=${ENTROPY_EXIT:-}
if [ -z "$cli" ]; then
  if [ -x .venv/bin/entropy-exit ]; then cli=.venv/bin/entropy-exit; else cli=entropy-exit; fi
fi
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for table in benchmarks/results/*/table.md; do names+=("$(basename "$(dirname "$table")")"); done
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for name in "${names[@]}"; do
  results=benchmarks/results/$name
  if [ ! -f "$results/table.md" ]; then
    echo "error: $results/table.md not found: name one of $(ls benchmarks/results | tr '\n' ' ')" >&2
    exit 2
  fi
  mkdir -p "$work/$name"
  for f in test_traces.jsonl train_traces.jsonl test.forced.json; do
    gunzip -c "$results/$f.gz" > "$work/$name/$f"
  done
  started=$(date +%s.%N)
  "$cli" bench --table --offline --no-progress \
    --traces "$work/$name/test_traces.jsonl" --train-traces "$work/$name/train_traces.jsonl" \
    --profile "$results/profile_window.json" --seq-profile "$results/profile_seq.json" \
    --gate-extended "$results/gate_extended.json" --forced-cache "$work/$name/test.forced.json" \
    --budgets 64,128,192,256 --length-quantiles none --periods 32,64 \
    --out "$work/$name/bench" > "$work/$name/log.txt" 2>&1 || { cat "$work/$name/log.txt" >&2; exit 1; }
  took=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
  if diff -u "$results/table.md" "$work/$name/bench/table.md"; then
    echo "identical: $results/table.md rebuilt through the CLI in ${took} s"
    sed -n '/^## Headroom/,$p' "$work/$name/bench/headroom.md"
  else
    echo "DIFFERENT: the rebuilt table (above, +) differs from $results/table.md (-)" >&2
    exit 1
  fi
done
