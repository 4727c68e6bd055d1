"""Benchmarks run and write their ratios (smoke-sized; their numbers are reported, never asserted, here)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CASES = {
    "logprob-memory": ["--batch-size", "2", "--seq-len", "64", "--vocab", "4096", "--size", "tiny"],
    "rollout": ["--prompts", "2", "--n", "2", "--max-new-tokens", "4", "--size", "tiny"],
    "rl-step": ["--size", "tiny", "--prompts", "2", "--num-generations", "2", "--max-completion-length", "8",
                "--rounds", "1"],
}
RATIOS = {
    "logprob-memory": {"chunked_over_naive", "chunked_time_over_naive", "logprob_overhead_chunked_over_naive"},
    "rollout": set(),  # vllm_over_hf_tokens_per_s only where vLLM runs
    "rl-step": {"nsr_over_grpo", "nft_over_grpo", "generation_share_grpo"},
    "step-cost": {"npo_rt_over_sft", "per_step_ref_over_cached"},
}


def _bench(name, out, args):
    res = subprocess.run([sys.executable, "-m", "negalign", "bench", name, "--output-dir", str(out), *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ratios" in res.stdout
    payload = json.loads((out / "results.json").read_text())
    assert RATIOS[name] <= set(payload["ratios"]) and payload["benchmark"] == name
    return payload


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_writes_ratios(name, tmp_path):
    _bench(name, tmp_path, CASES[name])


def test_step_cost_runs(shared_data, tmp_path):
    _bench("step-cost", tmp_path, ["--size", "tiny", "--batch-size", "2", "--rounds", "1", "--steps-per-round", "1",
                                   "--tofu", str(shared_data / "tofu")])
