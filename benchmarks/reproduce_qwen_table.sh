#!/usr/bin/env bash
# Rebuild the README's Qwen2.5-Coder-0.5B / GSM8K table offline, through the CLI, from the
# committed artifacts in benchmarks/results/qwen_gsm8k/ (gunzipped into a temp dir), and diff it
# against the committed table.md. Exit 0 when identical; asks no model (--offline).
#   bash benchmarks/reproduce_qwen_table.sh            (about 10 s on 2 cores)
# ENTROPY_EXIT (default: .venv/bin/entropy-exit, else entropy-exit on PATH) picks the command.
set -euo pipefail
cd "$(dirname "$0")/.."
results=benchmarks/results/qwen_gsm8k
cli=${ENTROPY_EXIT:-}
if [ -z "$cli" ]; then
  if [ -x .venv/bin/entropy-exit ]; then cli=.venv/bin/entropy-exit; else cli=entropy-exit; fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for f in test_traces.jsonl train_traces.jsonl test.forced.json; do
  gunzip -c "$results/$f.gz" > "$work/$f"
done
started=$(date +%s.%N)
"$cli" bench --table --offline --no-progress \
  --traces "$work/test_traces.jsonl" --train-traces "$work/train_traces.jsonl" \
  --profile "$results/profile_window.json" --seq-profile "$results/profile_seq.json" \
  --gate-extended "$results/gate_extended.json" --forced-cache "$work/test.forced.json" \
  --budgets 64,128,192,256 --length-quantiles none --periods 32,64 \
  --out "$work/bench" > "$work/log.txt" 2>&1 || { cat "$work/log.txt" >&2; exit 1; }
took=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
if diff -u "$results/table.md" "$work/bench/table.md"; then
  echo "identical: $results/table.md rebuilt through the CLI in ${took} s"
  sed -n '/^## Headroom/,$p' "$work/bench/headroom.md"
else
  echo "DIFFERENT: the rebuilt table (above, +) differs from $results/table.md (-)" >&2
  exit 1
fi
