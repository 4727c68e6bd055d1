#!/usr/bin/env bash
# One-time set-up, safe to re-run: creates .venv, installs torch FIRST (the CPU build on a machine without a GPU, so
# nothing pulls a multi-GB CUDA build), then negalign with its pinned dependencies. Skips work already done.
#   bash scripts/setup.sh            # CPU or GPU machine; picks the torch build itself
#   NEGALIGN_VENV=/path bash ...     # put the venv elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NEGALIGN_VENV:-.venv}"
PY="${PYTHON:-python3}"
stamp="$VENV/.negalign-setup"
want="$(cat pyproject.toml scripts/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import negalign, torch, trl" 2>/dev/null; then
  exit 0
fi
echo "[setup] creating $VENV and installing (about a minute) ..."
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip >/dev/null
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] GPU found: installing the default (CUDA) torch build"
  pip install "torch==2.13.0" || pip install torch
  extras="dev,deepspeed"
else
  # On a machine without a GPU, the default Linux torch wheel is a CUDA build of several GB. This installs the CPU
  # build: from a local wheel folder (pip's find-links, as on negalign's CI machines), or from PyTorch's CPU wheel
  # index when you point TORCH_INDEX_URL at it.
  if [ -n "${TORCH_INDEX_URL:-}" ]; then pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"; fi
  pip install "torch==2.13.0"
  extras="dev,deepspeed"
fi
pip install -c scripts/constraints.txt -e ".[$extras]"
echo "$want" > "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, trl, transformers; print("torch", torch.__version__, "| trl", trl.__version__, "| transformers", transformers.__version__)')"
