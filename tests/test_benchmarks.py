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
    "step-cost": {"npo_rt_over_sft", "per_step_ref_over_cached", "head_alternative_over_default", "npo_rt_peak_over_sft",
                  "per_step_ref_peak_over_cached", "npo_rt_step_peak_over_sft", "head_alternative_step_peak_over_default",
                  "npo_rt_over_sft_cpu", "per_step_ref_over_cached_cpu"},
}
RATIOS["logprob-memory"] |= {"chunked_kept_over_chunked", "chunked_kept_time_over_chunked",
                             "chunked_cpu_time_over_naive", "chunked_kept_cpu_time_over_chunked"}  # on CPU


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


def test_step_cost_runs_on_a_model_folder(shared_data, tmp_path, kit_path):
    """``--model`` takes any Hugging Face folder (here the session's kit folder; ``offline:smollm2-135m-instruct``
    resolves to one): every arm is timed and has its profiled memory, and the peak-memory ratios are written."""
    payload = _bench("step-cost", tmp_path, ["--model", kit_path, "--batch-size", "2", "--rounds", "1",
                                             "--steps-per-round", "1", "--threads", "1",
                                             "--tofu", str(shared_data / "tofu")])
    arms = {"npo_rt", "npo_rt_head_recompute", "sft", "per_step_ref"}  # default auto; the other arm: always
    metrics, mem = payload["metrics"], payload["metrics"]["memory"]
    assert payload["settings"]["model"] == kit_path and set(metrics["median_step_seconds"]) == arms
    assert set(mem) == arms and all(m["peak_mib"] > m["resident_mib"] > 0 for m in mem.values())
    # the open-unlearning layout keeps a frozen reference copy resident: its resident memory is the others' plus the
    # copy's weights, a third of (weights + two AdamW moments; AdamW's scalar step counters are negligible)
    assert mem["per_step_ref"]["resident_mib"] == pytest.approx(mem["npo_rt"]["resident_mib"] * 4 / 3, rel=1e-3)


def test_logprob_memory_runs_on_a_model_folder(tmp_path, kit_path):
    payload = _bench("logprob-memory", tmp_path, ["--model", kit_path, "--batch-size", "2", "--seq-len", "32",
                                                  "--threads", "1"])
    from transformers import AutoConfig

    assert payload["settings"]["vocab"] == AutoConfig.from_pretrained(kit_path).vocab_size  # the model's own
    assert set(payload["metrics"]["variants"]) == {"decoder", "naive", "chunked", "chunked_kept"}
