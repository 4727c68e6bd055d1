"""The nsr-arith quickstart: a smoke run with tiny settings in the default suite, the full run marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"base", "psr", "nsr", "w_reinforce", "grpo", "nft"}


def _run(out: Path, *extra: str, timeout: int) -> tuple[dict, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "negalign", "quickstart", "nsr-arith", "--output-dir", str(out),
                           *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), wall


def _check_layout(res: dict, out: Path, n: int) -> None:
    assert set(res["methods"]) == NAMES
    keys = [str(2**i) for i in range(n.bit_length()) if 2**i <= n]
    for name in NAMES:
        curve = res["methods"][name]["pass_at_k"]
        assert list(curve) == keys
        assert all(0.0 <= v <= 1.0 for v in curve.values())
        assert all(curve[a] <= curve[b] + 1e-12 for a, b in zip(keys, keys[1:]))  # pass@k grows with k
    assert (out / "passk.png").stat().st_size > 1000
    assert (out / "table.md").read_text().startswith("| model | pass@1")


def test_quickstart_smoke(tmp_path):
    """Tiny settings, every method, every artefact (well under 90 s on an idle 2-core CPU)."""
    out = tmp_path / "qs"
    res, wall = _run(out, "--high", "6", "--test-size", "8", "--sft-epochs", "2", "--sft-copies", "2", "--steps", "1",
                     "--prompts-per-step", "2", "--generations", "4", "--n", "4", timeout=600)
    _check_layout(res, out, 4)
    assert res["metrics"]["wall_time_s"] > 0


@pytest.mark.slow
def test_quickstart_full(tmp_path):
    """The documented run: base / psr / nsr / w_reinforce / grpo / nft, pass@1 … pass@64, within 20 minutes."""
    out = tmp_path / "qs"
    res, wall = _run(out, timeout=3600)
    _check_layout(res, out, 64)
    assert wall < 20 * 60
    base = res["methods"]["base"]["pass_at_k"]
    assert 0.05 < base["1"] < 0.95  # the SFT model is partially right, so there is something to learn
