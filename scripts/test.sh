#!/usr/bin/env bash
# Set up (if needed) and run the test suite. This is the command the README gives and .ci/run calls.
#   bash scripts/test.sh                 # the default suite (no `slow` tests)
#   bash scripts/test.sh -m slow         # the long end-to-end runs
#   bash scripts/test.sh tests/test_losses.py -k npo
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
args=("$@")
if ! printf '%s\n' "${args[@]+"${args[@]}"}" | grep -qx -- '-m'; then args=(-m "not slow" "${args[@]+"${args[@]}"}"); fi
exec "${NEGALIGN_VENV:-.venv}/bin/python" -m pytest "${args[@]}"
