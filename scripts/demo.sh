#!/usr/bin/env bash
# Set up (if needed), then train a prompt-tuning adapter on the bundled demo data with the offline
# default model (SmolLM2-135M), print dev accuracy, and classify two new messages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/softprompt demo "$@"
