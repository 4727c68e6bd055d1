"""The nsr-arith quickstart: a smoke run with tiny settings in the default suite, the full run marked slow."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from negalign.evaluation.claims import check_claims

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"base", "psr", "nsr", "w_reinforce", "grpo", "nft"}
TINY = ("--high", "6", "--test-size", "8", "--sft-epochs", "2", "--sft-copies", "2", "--steps", "1",
        "--prompts-per-step", "2", "--generations", "4", "--updates-per-rollout", "2", "--n", "4")


def _run(out: Path, *extra: str, timeout: int) -> tuple[dict, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "negalign", "quickstart", "nsr-arith", "--output-dir", str(out),
                           *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), wall


def _check_layout(res: dict, out: Path, n: int, names=NAMES) -> None:
    assert set(res["methods"]) == names
    keys = [str(2**i) for i in range(n.bit_length()) if 2**i <= n]
    for name in names:
        curve = res["methods"][name]["pass_at_k"]
        assert list(curve) == keys
        assert all(0.0 <= v <= 1.0 for v in curve.values())
        assert all(curve[a] <= curve[b] + 1e-12 for a, b in zip(keys, keys[1:]))  # pass@k grows with k
    assert (out / "passk.png").stat().st_size > 1000
    assert (out / "table.md").read_text().startswith("| model | pass@1")
    check_claims(res["claims"])  # SPEC §8: {claim, difference, ci_low, ci_high, verdict, n_items, seeds}


def test_quickstart_smoke(tmp_path):
    """Tiny settings, every method, every artefact, the claims (well under 90 s on an idle 2-core CPU)."""
    out = tmp_path / "qs"
    res, wall = _run(out, *TINY, timeout=600)
    _check_layout(res, out, 4)
    assert res["metrics"]["wall_time_s"] > 0 and res["metrics"]["user_cpu_s"] > 0
    claims = {c["claim"]: c for c in res["claims"]}
    # SPEC §3's claims at k = 1 and the largest k (n = 4 here), each on the 8 held-out problems of the one seed
    assert {"PSR pass@1 > base pass@1", "PSR pass@4 < base pass@4", "NSR pass@4 ≥ base pass@4",
            "W-REINFORCE pass@4 ≥ GRPO pass@4"} <= set(claims)
    assert all(c["n_items"] == 8 and c["seeds"] == [0] for c in claims.values())
    assert "| claim | difference | 95% CI | verdict |" in (out / "table.md").read_text()


def test_ops_reach_every_split():
    """``--ops`` sets the operation of the SFT data, the RL train split and the held-out split alike (a base model
    trained on a*b but tested on a+b would measure nothing)."""
    import argparse

    from negalign.quickstarts import nsr_arith

    p = argparse.ArgumentParser()
    nsr_arith.add_arguments(p)
    args = p.parse_args(["--output-dir", "x", "--ops", "*"])
    assert nsr_arith.sft_recipe(args, Path("x"))["data"]["ops"] == "*"
    assert nsr_arith.rl_recipe(args, "nsr", "base", Path("x"))["data"]["ops"] == "*"
    assert nsr_arith._data(args, "test")["ops"] == "*"


def test_quickstart_base_only(tmp_path):
    """``--base-only``: the SFT base model and its pass@k, no RL run and so no claim (the sizing run)."""
    out = tmp_path / "qs"
    res, _ = _run(out, *TINY, "--base-only", "--ops", "*", timeout=300)
    _check_layout(res, out, 4, names={"base"})
    assert res["claims"] == [] and not (out / "psr").exists()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # two runs: ~40 s on an idle 2-core CPU, 137 s under load 7
def test_quickstart_same_seed_same_run(tmp_path):
    """Two runs with the same seeds and one thread: bit-identical base and RL weights, the same per-problem counts
    and the same table; a second seed is a different run (the seeds reach training and sampling)."""
    args = (*TINY, "--methods", "nsr", "--seeds", "2", "--sft-epochs", "1")
    a, _ = _run(tmp_path / "a", *args, timeout=600)
    b, _ = _run(tmp_path / "b", *args, timeout=600)
    for rel in ("sft/model.safetensors", "nsr/model.safetensors", "nsr-seed1/model.safetensors"):
        assert _sha(tmp_path / "a" / rel) == _sha(tmp_path / "b" / rel), rel
    assert _sha(tmp_path / "a" / "nsr/model.safetensors") != _sha(tmp_path / "a" / "nsr-seed1/model.safetensors")
    for name in ("base", "nsr"):
        assert a["methods"][name]["correct_counts"] == b["methods"][name]["correct_counts"]
    assert (tmp_path / "a" / "table.md").read_text() == (tmp_path / "b" / "table.md").read_text()
    assert a["claims"] == b["claims"] and all(c["seeds"] == [0, 1] for c in a["claims"])


def _shown_answers(**kw) -> dict[str, tuple[int, list[int]]]:
    from negalign.data.math import ArithmeticData

    d = ArithmeticData(split="all", high=9, ops="+", test_size=10, copies=8, **kw)
    out = {}
    for row in d.examples():
        gold, shown = out.setdefault(row["prompt"][0]["content"], (int(row["answer"]), []))
        shown.append(int(row["completion"][0]["content"]))
    return out


def test_fixed_near_miss_is_one_misconception_per_problem():
    """``near_miss: fixed``: every noisy label of a problem is the same wrong answer (gold ± 1 / 2 / 10), and with
    ``max_noise_share: 1`` some problems are shown only that wrong answer (how nsr-arith's base gets problems it
    rarely solves); the default stays one independent near miss per label, capped at 95 % noise."""
    fixed = _shown_answers(label_noise=0.6, near_miss="fixed", max_noise_share=1.0)
    assert len(fixed) == 100
    for gold, shown in fixed.values():
        wrong = {s for s in shown if s != gold}
        assert len(wrong) <= 1 and all(s - gold in (-10, -2, -1, 1, 2, 10) for s in wrong)
    # shares are uniform on [0, 1.2] capped at 1: about 1/6 of 100 problems see no right answer at all
    assert sum(gold not in shown for gold, shown in fixed.values()) >= 10
    spread = _shown_answers(label_noise=0.6)
    assert max(len({s for s in shown if s != gold}) for gold, shown in spread.values()) >= 3


@pytest.mark.slow
def test_quickstart_full(tmp_path):
    """The documented run: base / psr / nsr / w_reinforce / grpo / nft, pass@1 … pass@128, within 15 minutes."""
    out = tmp_path / "qs"
    res, wall = _run(out, timeout=3600)
    _check_layout(res, out, 128)
    assert wall < 15 * 60
    base = res["methods"]["base"]["pass_at_k"]
    # headroom (issue #15): partially right at k = 1 and well short of 1 at k = 128 (a*b: 0.108 / 0.760 measured;
    # a+b gave 0.305 / 0.943, the older design 0.98-1.00 at k = 64)
    assert 0.05 < base["1"] and base["128"] < 0.85
    assert {c["n_items"] for c in res["claims"]} == {192}
