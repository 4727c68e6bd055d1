#!/usr/bin/env bash
# What a pip user gets: build negalign's wheel (not editable), check that every recipe and accelerate config of the
# checkout is inside it, install it into a NEW venv and run the shipped recipes from a directory outside the checkout.
#   bash scripts/check_wheel.sh                 # wheel contents only (seconds; also a default test: test_shipped.py)
#   bash scripts/check_wheel.sh --install       # + a fresh venv (torch first, as scripts/setup.sh), then the commands
#   CHECK_WHEEL_DIR=/tmp/x bash scripts/check_wheel.sh --install   # keep the venv and wheel there (default: mktemp)
# Offline: pip uses its configured index / find-links and cache; the recipe dry-runs need no network.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
WORK="${CHECK_WHEEL_DIR:-$(mktemp -d)}"
mkdir -p "$WORK/dist" "$WORK/user"

# 1. the wheel, built from a copy of the tracked tree (setuptools writes build/ into the tree it builds)
rm -rf "$WORK/src" "$WORK/dist"/*.whl
mkdir -p "$WORK/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$WORK/src"
"$PY" -m pip wheel --no-deps --no-build-isolation -q -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/negalign-*.whl)"
echo "[check_wheel] built $WHEEL"

# 2. its contents: every recipes/**/*.yaml as negalign/recipes/..., byte for byte
"$PY" - "$WHEEL" "$ROOT/recipes" <<'EOF'
import sys, zipfile
from pathlib import Path
wheel, recipes = zipfile.ZipFile(sys.argv[1]), Path(sys.argv[2])
names = set(wheel.namelist())
want = {"negalign/recipes/" + p.relative_to(recipes).as_posix(): p for p in sorted(recipes.rglob("*.yaml"))}
missing = sorted(n for n in want if n not in names)
differ = sorted(n for n, p in want.items() if n in names and wheel.read(n) != p.read_bytes())
print(f"[check_wheel] {len(want)} recipe/config files expected; "
      f"{sum(n.startswith('negalign/recipes/accelerate/') for n in want)} accelerate configs")
if missing or differ:
    sys.exit(f"[check_wheel] FAILED: missing {missing}, different {differ}")
print("[check_wheel] every recipe and accelerate config is in the wheel")
EOF
[ "${1:-}" = "--install" ] || exit 0

# 3. a new venv: torch first (the CPU build on a machine without a GPU; see scripts/setup.sh), then the wheel
VENV="$WORK/venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if [ -n "${TORCH_INDEX_URL:-}" ]; then pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"; fi
pip install "torch==2.13.0"
pip install -c scripts/constraints.txt --force-reinstall --no-deps "$WHEEL"
pip install -c scripts/constraints.txt "$WHEEL"

# 4. a pip user's first commands, from a directory outside the checkout
cd "$WORK/user"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
run() {  # the command's first lines (no pipe into head: a closed pipe would fail the command under pipefail)
  echo "\$ $*"; "$@" > "$WORK/out.txt" 2>&1 || { cat "$WORK/out.txt"; return 1; }; head -n 4 "$WORK/out.txt"; }
run "$VENV/bin/negalign" recipes
run "$VENV/bin/negalign" accelerate-config zero3
run "$VENV/bin/negalign" train npo_tofu --dry-run
run "$VENV/bin/negalign" train npo_tofu_tiny --accelerate_config multi_gpu --num_processes 2 --dry-run
case "$("$VENV/bin/python" -c 'import negalign, pathlib; print(pathlib.Path(negalign.__file__).parent)')" in
  "$ROOT"*) echo "[check_wheel] FAILED: the venv imports negalign from the checkout"; exit 1 ;;
esac
echo "[check_wheel] OK: the installed wheel lists and runs its shipped recipes from $PWD"
