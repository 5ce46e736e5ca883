#!/usr/bin/env bash
# Set up (if needed), then train a prompt on the bundled customer messages with an offline model (by default
# the encoder all-MiniLM-L6-v2 with a classification head; --route causal-lm: SmolLM2-135M-Instruct), print its
# accuracy on held-out messages, and classify eight new ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/softprompt demo "$@"
