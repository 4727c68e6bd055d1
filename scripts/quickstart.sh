#!/usr/bin/env bash
# Set up (if needed) and run an offline quickstart (default: npo-tofu, the NPO-family unlearning miniature on TOFU).
#   bash scripts/quickstart.sh                       # -> runs/npo-tofu/results.json, table on stdout
#   bash scripts/quickstart.sh nsr-arith runs/nsr    # another quickstart, another folder
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
name="${1:-npo-tofu}"
exec "${NEGALIGN_VENV:-.venv}/bin/negalign" quickstart "$name" --output-dir "${2:-runs/$name}" "${@:3}"
