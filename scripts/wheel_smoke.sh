#!/usr/bin/env bash
# The pip path, as a user meets it: build the wheel from a clean copy of the source, install it with
# the extras [langchain,llama-index,lab] into a fresh venv outside the checkout, run
# `entropy-exit setup` from that venv (it installs the model package there and must reuse the cached
# llama-server build: a rebuild fails this script), import every integration, then run the README's
# openai snippet against `entropy-exit serve` started from that venv on a free port, and stop it.
# Run after scripts/setup.sh (CI: .ci/run, once pytest has passed). Everything lives in one temp dir,
# removed at exit. PYTHON picks the interpreter of the fresh venv (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PYTHON="${PYTHON:-python3}"
started=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/entropy-exit-wheel.XXXXXX")
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf 'wheel smoke [%3ds] %s\n' "$((SECONDS - started))" "$*"; }

step "copying the source (tracked and unignored files) to $work/src"
mkdir "$work/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do if [ -f "$f" ]; then printf '%s\0' "$f"; fi; done \
    | tar --null -T - -cf - | tar -C "$work/src" -xf -
else
  tar --exclude=./.venv --exclude=./build --exclude='*.egg-info' --exclude='*_cache' -cf - . \
    | tar -C "$work/src" -xf -
fi

step "building the wheel"
"$repo/.venv/bin/python" -m pip wheel --quiet --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/entropy_exit_integrations-*.whl)
step "built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KB)"
"$repo/.venv/bin/python" - "$wheel" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
needed = [
    "entropy_exit_integrations/py.typed",
    "entropy_exit_integrations/lab/cli.py",
    "entropy_exit_integrations/lab/bench/data/gsm8k_test.jsonl",
    "entropy_exit_integrations/lab/bench/data/SOURCES.md",
    "entropy_exit_integrations/lab/local/templates/chatml_thinking.jinja",
]
missing = [n for n in needed if n not in names]
stray = sorted({n.split("/")[0] for n in names} - {"entropy_exit_integrations", *[n.split("/")[0] for n in names if ".dist-info/" in n]})
if missing or stray:
    sys.exit(f"wheel: missing {missing}, stray top-level entries {stray}")
EOF

step "creating a fresh venv outside the checkout ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m venv "$work/venv"
venv="$work/venv/bin"
# (pip's warnings about configured find-links folders that do not exist are left out)
"$venv/python" -m pip install --quiet "${wheel}[langchain,llama-index,lab]" 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
step "installed: $("$venv/python" -m pip list 2>/dev/null | wc -l) distributions"

cd "$work"   # nothing below may import from the checkout
binary=$("$venv/python" -c "from entropy_exit_integrations.lab.local.pins import cached_server_path; print(cached_server_path())")
if [ ! -f "$binary" ]; then
  echo "wheel smoke: no cached llama-server at $binary (run scripts/setup.sh first): refusing to build it again" >&2
  exit 1
fi
before=$(stat -c %Y "$binary")
step "entropy-exit setup from the fresh venv (must reuse $binary)"
"$venv/entropy-exit" setup 2>&1 | tee "$work/setup.log"
if [ "$(stat -c %Y "$binary")" != "$before" ] || grep -qiE "compiling|building llama|cmake" "$work/setup.log"; then
  echo "wheel smoke: entropy-exit setup rebuilt llama-server instead of reusing the cached build" >&2
  exit 1
fi
"$venv/entropy-exit" --version

step "import smoke test"
"$venv/python" - "$repo" <<'EOF'
import sys
from pathlib import Path

import entropy_exit_integrations
import entropy_exit_integrations.langchain
import entropy_exit_integrations.llama_index
import entropy_exit_integrations.openai

where = Path(entropy_exit_integrations.__file__).resolve()
if Path(sys.argv[1]).resolve() in where.parents:
    sys.exit(f"imported from the checkout, not the wheel: {where}")
print(f"imported entropy_exit_integrations {entropy_exit_integrations.__version__} from {where.parent}")
EOF

port=$("$venv/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
step "entropy-exit serve --port $port"
"$venv/entropy-exit" serve --port "$port" >"$work/serve.log" 2>&1 &
server_pid=$!
"$venv/python" - "$port" "$server_pid" "$work/serve.log" <<'EOF'
import os, sys, time, urllib.request
port, pid, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 90
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            if response.status == 200:
                break
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("entropy-exit serve exited:\n" + open(log).read())
    if time.monotonic() > deadline:
        sys.exit("entropy-exit serve not healthy after 90 s:\n" + open(log).read())
    time.sleep(0.5)
EOF
step "serving; running the README's openai snippet"
"$venv/python" - "$repo/README.md" "$port" <<'EOF'
import re, sys
readme, port = open(sys.argv[1]).read(), sys.argv[2]
blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S)
          if "entropy_exit_integrations.openai import stream_chat" in b and "openai.OpenAI(" in b]
if not blocks:
    sys.exit("README.md: no python block with `openai.OpenAI(` and `from entropy_exit_integrations.openai import stream_chat`")
snippet = blocks[0].replace("127.0.0.1:8080", f"127.0.0.1:{port}")
namespace = {"__name__": "__main__"}
exec(compile(snippet, "README.md (openai snippet)", "exec"), namespace)
result = namespace["result"]
assert result.text and result.report is not None, result
print(f"snippet ok: finish_reason={result.finish_reason}, {result.report.tokens_generated} tokens generated")
EOF

step "stopping the server"
kill -TERM "$server_pid"
wait "$server_pid" || true
server_pid=""
if ! grep -q "^stopped" "$work/serve.log"; then
  echo "wheel smoke: entropy-exit serve did not stop cleanly:" >&2
  cat "$work/serve.log" >&2
  exit 1
fi
step "passed"
