"""Multi-process training on CPU: accelerate + DeepSpeed ZeRO-3 over gloo with 2 processes (real launches)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tolerances import assert_tofu_evals_match

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


NPO_TINY = "recipes/quickstart/npo_tofu_tiny.yaml"


def _launch(tmp_path, name, nproc, *overrides, config="zero3", recipe=NPO_TINY, extra_launch=()):
    """``accelerate launch`` a recipe with ``recipes/accelerate/<config>.yaml``; its output goes to ``tmp_path/name``
    and its kit model to ``tmp_path/kit``. Returns the run's metrics from results.json."""
    out = tmp_path / name
    cmd = [*ACCELERATE, "--config_file", f"recipes/accelerate/{config}.yaml", "--num_processes", str(nproc),
           *extra_launch, "-m", "negalign", "train", str(recipe), f"output_dir={out}",
           f"model.kit.dir={tmp_path / 'kit'}", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    if res.returncode != 0:  # the first traceback names the failing rank's error; the rest is the others' teardown
        lines = res.stderr.splitlines()
        first = next((i for i, x in enumerate(lines) if "Traceback" in x), max(len(lines) - 60, 0))
        pytest.fail("\n".join(lines[first : first + 80]) + "\n...\n" + res.stderr[-1500:])
    return json.loads((out / "results.json").read_text())["metrics"]


FP32 = ("--mixed_precision", "no")


def _file_recipe(tmp_path, method: dict, data: dict, rows: list[dict], **training) -> Path:
    """A recipe over a JSONL data file written from ``rows`` (D²O negatives, preference pairs) and a tiny kit model."""
    import yaml

    path = tmp_path / f"{data['name']}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / f"{method['name']}.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"kit": {"dir": str(tmp_path / "kit"), "arch": "qwen2", "size": "tiny", "vocab_size": 512}},
        "data": {**data, "path": str(path)},
        "method": method,
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "save_strategy": "no",
                     "gradient_checkpointing": False, "max_length": 96, "logging_steps": 1, "seed": 0, **training},
    }))
    return recipe


def _d2o_recipe(tmp_path, copies: int = 1, **method) -> Path:
    from tests.conftest import BAD, QUESTIONS

    rows = [{"prompt": q, "rejected": b} for q, b in zip(QUESTIONS * copies, BAD * copies)]
    method = {"name": "d2o", "num_anchors": 2, "anchor_max_new_tokens": 6, "anchor_batch_size": 2, **method}
    return _file_recipe(tmp_path, method, {"name": "negatives"}, rows)


def _madpo_recipe(tmp_path, **method) -> Path:
    # pairs of different lengths, so that padding and per-process batches matter
    rows = [{"prompt": f"Review {i}: the film was", "chosen": " wonderful" + " and moving" * (i % 3) + ".",
             "rejected": " dull" + " and long" * (i % 4) + "."} for i in range(12)]
    return _file_recipe(tmp_path, {"name": "madpo", **method}, {"name": "preference"}, rows, max_steps=3,
                        max_length=64)


def test_readme_zero3_command_trains_on_two_processes(shared_data, tmp_path):
    # the exact command of the README (bf16 as the shipped ZeRO-3 config asks), with the data folder of this machine
    m = _launch(tmp_path, "zero3", 2, "max_steps=4", f"data.path={shared_data / 'tofu'}")
    assert m["world_size"] == 2 and m["deepspeed_zero_stage"] == 3
    losses = [h["loss"] for h in m["log_history"] if "loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0]  # NPO+RT on a random kit model: the forget term falls


def test_two_processes_match_one_process_at_same_global_batch(shared_data, tmp_path):
    # Same global batch (2 x 4 vs 1 x 8), float32, NPO without a retain term (retain partners are drawn per process
    # on purpose, so NPO+RT batches differ between layouts). DDP/ZeRO average the per-process mean losses and
    # gradients, which equals the 8-row mean: losses must agree up to float32 reduction-order noise.
    # The in-training TOFU evaluation (before step 1 and after step 3) runs sharded too: under ZeRO-3 each process
    # gathers the parameters and evaluates its slice of each split; the results must equal the 1-process ones.
    common = ("method.name=npo", "max_steps=3", f"data.path={shared_data / 'tofu'}", "tofu_eval_steps=[0,3]",
              "tofu_eval_max_items=6")
    two = _launch(tmp_path, "two", 2, "per_device_train_batch_size=4", *common, extra_launch=FP32)
    one = _launch(tmp_path, "one", 1, "per_device_train_batch_size=8", *common, extra_launch=FP32)
    for step in (0, 3):
        e2, e1 = (json.loads((tmp_path / run / "tofu_eval" / f"step-{step}" / "results.json").read_text())
                  for run in ("two", "one"))
        assert len(e2["items"]["forget"]) == len(e2["items"]["retain"]) == 6
        # per-item log-probs within float32 reduction-order noise, aggregates within the bound that follows from it
        # (a relative tolerance on an aggregate near 0, such as the truth-ratio score, is tighter than that noise)
        assert_tofu_evals_match(e1, e2)
    l2 = [h["loss"] for h in two["log_history"] if "loss" in h]
    l1 = [h["loss"] for h in one["log_history"] if "loss" in h]
    assert len(l1) == len(l2) == 3
    assert l1 == pytest.approx(l2, rel=1e-4)
    # before the first update π_θ = π_ref on every row, so NPO's loss is (2/β) ln 2 = 20 ln 2 at β = 0.1: this holds
    # only if the reference column, computed in slices by the two processes and gathered, lines up with its rows
    assert l2[0] == pytest.approx(20 * math.log(2), rel=1e-5)
    assert l1[-1] < l1[0]


@pytest.mark.parametrize("config, extra", [
    ("multi_gpu", ["peft.r=4", "peft.lora_alpha=8", "peft.target_modules=[q_proj,v_proj]"]),  # DDP + LoRA
    ("zero2", []),
])
def test_ddp_with_lora_and_zero2(shared_data, tmp_path, config, extra):
    m = _launch(tmp_path, config, 2, "max_steps=3", f"data.path={shared_data / 'tofu'}", *extra, config=config,
                extra_launch=FP32)
    assert m["world_size"] == 2
    assert m["deepspeed_zero_stage"] == (2 if config == "zero2" else None)
    losses = [h["loss"] for h in m["log_history"] if "loss" in h]
    assert len(losses) == 3 and losses[-1] < losses[0]
    if extra:  # LoRA: only the adapter is saved
        assert (tmp_path / config / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("config", ["multi_gpu", "zero2"])
def test_rlvr_trainer_on_two_processes(tmp_path, config):
    # W-REINFORCE through TRL's GRPO machinery (generation, reward gathering across processes) under DDP / ZeRO-2.
    # On a random kit model every sample is wrong: advantages are all -1 and the weights must still move (NSR's point).
    from safetensors.torch import load_file

    m = _launch(tmp_path, "out", 2, config=config, recipe="recipes/quickstart/nsr_arith_tiny.yaml", extra_launch=FP32)
    out, kit = tmp_path / "out", tmp_path / "kit"
    assert m["world_size"] == 2 and m["deepspeed_zero_stage"] == (2 if config == "zero2" else None)
    assert len([h for h in m["log_history"] if "loss" in h]) == 3
    before, after = load_file(kit / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_d2o_on_two_processes_samples_the_same_anchors(tmp_path):
    # D²O samples its K anchors from the reference before training. With 2 processes each samples half of the batches
    # and rank 0 merges: the anchor file must equal a 1-process run's, and both ranks must train on it.
    from tests.conftest import QUESTIONS

    recipe = _d2o_recipe(tmp_path)
    runs = {}
    for nproc in (1, 2):
        runs[nproc] = _launch(tmp_path, f"out{nproc}", nproc, config="multi_gpu", recipe=recipe, extra_launch=FP32)
        anchors = (tmp_path / f"out{nproc}" / "anchors.jsonl").read_text().splitlines()
        runs[nproc]["anchors"] = [json.loads(x) for x in anchors]
    assert runs[2]["world_size"] == 2 and runs[1]["world_size"] == 1
    assert runs[2]["anchors"] == runs[1]["anchors"]  # header + every prompt's K samples, in order
    assert len(runs[2]["anchors"]) == 1 + len(QUESTIONS)
    assert all("loss" in h for h in runs[2]["log_history"][:2])


def test_nft_refill_agrees_across_two_processes(tmp_path):
    # A random kit model gets every group wrong, so NFT's dynamic filter keeps refilling. The processes must agree on
    # the number of refill rounds (they gather the deficit each round; a disagreement deadlocks), stop at
    # max_refill_rounds = 2, and give the still-unfilled groups zero weight, hence a zero loss.
    m = _launch(tmp_path, "out", 2, config="multi_gpu", recipe="recipes/quickstart/nft_arith_tiny.yaml",
                extra_launch=FP32)
    steps = [h for h in m["log_history"] if "loss" in h]
    assert m["world_size"] == 2 and len(steps) == 3
    assert all(h["nft/refill_rounds"] == 2 and h["nft/unfilled_groups"] > 0 and h["loss"] == 0 for h in steps)


PERSTEP_TINY = "recipes/quickstart/perstep_arith_tiny.yaml"


@pytest.mark.parametrize("method", ["perstep_dpo", "perstep_awr"])
def test_perstep_two_processes_match_one_process(tmp_path, method):
    # The per-step pipeline under DDP: sampling and Monte-Carlo step values are sharded by generation batch (each
    # batch seeded alike in any layout), so the cached files must equal a 1-process run's; training at the same global
    # batch (2 x 2 vs 1 x 4) must then give the same losses. For perstep_awr this checks the token-mean normalization
    # over the whole optimizer batch: rows have different lengths, so averaging per-process token means would differ.
    from safetensors.torch import load_file

    keys = [f"method.name={method}"] + (["method.awr_positive_weight=1.0"] if method == "perstep_awr" else [])
    runs = {n: _launch(tmp_path, f"out{n}", n, *keys, f"training.per_device_train_batch_size={4 // n}",
                       config="multi_gpu", recipe=PERSTEP_TINY, extra_launch=FP32) for n in (2, 1)}
    assert runs[2]["world_size"] == 2 and runs[1]["world_size"] == 1
    assert runs[2]["perstep"] == runs[1]["perstep"]  # prompts, samples, step-value statistics, pairs / sequences
    for n in (1, 2):
        cache = tmp_path / f"out{n}" / "perstep_cache"
        runs[n]["cache"] = {p.relative_to(cache).as_posix(): p.read_text() for p in sorted(cache.rglob("*.jsonl"))}
    assert runs[1]["cache"] and runs[2]["cache"].keys() == runs[1]["cache"].keys()  # (the .shardRofW files aside)
    for name, text in runs[1]["cache"].items():
        assert runs[2]["cache"][name] == text, name
    l1, l2 = ([h["loss"] for h in runs[n]["log_history"] if "loss" in h] for n in (1, 2))
    assert len(l1) == 2 and l1 == pytest.approx(l2, rel=1e-4)
    before, after = (load_file(tmp_path / d / "model.safetensors") for d in ("kit", "out2"))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the 2-process run trained


def test_madpo_two_processes_match_one_process(tmp_path):
    # MADPO's margins come from one reward-model pass sharded across the processes (each scores half of the pairs,
    # all receive every margin); TRL's DPO precomputes the reference log-probs sharded too. At the same global batch
    # (2 x 2 vs 1 x 4) the weights and the losses must match the 1-process run.
    _launch(tmp_path, "rm", 1, "method.name=madpo_reward", config="multi_gpu", recipe=_madpo_recipe(tmp_path),
            extra_launch=FP32)
    recipe = _madpo_recipe(tmp_path, reward_model=str(tmp_path / "rm"), reward_batch_size=2)
    runs = {n: _launch(tmp_path, f"out{n}", n, f"training.per_device_train_batch_size={4 // n}", config="multi_gpu",
                       recipe=recipe, extra_launch=FP32) for n in (2, 1)}
    # 12 pairs in batches of 2: 6 reward-model forwards in one process, 3 on each of two
    assert runs[1]["reward_model_forwards"] == 6 and runs[2]["reward_model_forwards"] == 3
    w1, w2 = runs[1]["madpo_weights"], runs[2]["madpo_weights"]
    assert w1["margin_quantiles"] == pytest.approx(w2["margin_quantiles"], rel=1e-5, abs=1e-6)
    assert w1["weight_quantiles"] == pytest.approx(w2["weight_quantiles"], rel=1e-5)
    l1, l2 = ([h["loss"] for h in runs[n]["log_history"] if "loss" in h] for n in (1, 2))
    assert len(l1) == 3 and l1 == pytest.approx(l2, rel=1e-4)


def test_d2o_online_refresh_is_sharded_under_zero3(tmp_path):
    # Online D²O re-samples the anchors from the policy (weights gathered under ZeRO-3) after every step. With two
    # processes each samples half of the generation batches and scores half of the reference rows; the losses must
    # match a 1-process run at the same global batch, i.e. both layouts train on the same refreshed anchors.
    recipe = _d2o_recipe(tmp_path, copies=2, anchor_batch_size=3, online_refresh_steps=1)
    runs = {n: _launch(tmp_path, f"out{n}", n, f"training.per_device_train_batch_size={4 // n}", "max_steps=3",
                       recipe=recipe, extra_launch=FP32) for n in (2, 1)}
    assert runs[2]["deepspeed_zero_stage"] == 3 and runs[2]["world_size"] == 2
    assert runs[1]["anchor_refreshes"] == runs[2]["anchor_refreshes"] == 2  # after steps 1 and 2, not after the last
    # 12 prompts in 4 generation batches of 3: the main process samples batches 0 and 2 in each refresh
    assert runs[1]["anchor_refresh_prompts_sampled_by_main_process"] == 2 * 12
    assert runs[2]["anchor_refresh_prompts_sampled_by_main_process"] == 2 * 6
    l1, l2 = ([h["loss"] for h in runs[n]["log_history"] if "loss" in h] for n in (1, 2))
    assert len(l1) == 3 and l1 == pytest.approx(l2, rel=1e-4)


LORA = ("peft.r=4", "peft.lora_alpha=8", "peft.target_modules=[q_proj,v_proj]")


@pytest.mark.parametrize("method, config, peft", [
    ("sft", "zero3", False),
    ("nsr", "zero3", False),
    ("nft", "zero2", True),
    ("rft", "zero2", False),
    ("perstep_dpo", "zero3", True),
    ("d2o", "zero2", True),
    ("madpo", "zero3", False),
])
def test_trainer_under_another_layout(shared_data, tmp_path, method, config, peft):
    # Each trainer in a layout the tests above do not cover (every trainer then runs under DDP or ZeRO-2, and under
    # ZeRO-3 or with LoRA): it must train on 2 processes and change the trained weights (LoRA: the adapter).
    from safetensors.torch import load_file

    recipe, extra = {
        "sft": ("recipes/quickstart/sft_tofu_tiny.yaml", [f"data.path={shared_data / 'tofu'}", "max_samples=32",
                                                          "max_steps=2", "per_device_train_batch_size=4", "logging_steps=1"]),
        "nsr": ("recipes/quickstart/nsr_arith_tiny.yaml", ["method.name=nsr", "max_steps=2"]),
        "nft": ("recipes/quickstart/nft_arith_tiny.yaml", ["max_steps=2", "dynamic_filtering=false"]),
        "rft": (PERSTEP_TINY, ["method.name=rft"]),
        "perstep_dpo": (PERSTEP_TINY, ["training.per_device_train_batch_size=2"]),
        "d2o": (None, []),
        "madpo": (None, []),
    }[method]
    if method == "d2o":
        recipe = _d2o_recipe(tmp_path)
    elif method == "madpo":  # the reward model is trained first (DDP), then MADPO loads it whole on each process
        _launch(tmp_path, "rm", 2, "method.name=madpo_reward", config="multi_gpu", recipe=_madpo_recipe(tmp_path),
                extra_launch=FP32)
        recipe = _madpo_recipe(tmp_path, reward_model=str(tmp_path / "rm"))
    m = _launch(tmp_path, "out", 2, *extra, *(LORA if peft else ()), config=config, recipe=recipe, extra_launch=FP32)
    assert m["world_size"] == 2 and m["deepspeed_zero_stage"] == int(config[-1])
    losses = [h["loss"] for h in m["log_history"] if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    out = tmp_path / "out"
    if peft:  # LoRA's B matrices start at zero: a trained adapter has moved them
        adapter = load_file(out / "adapter_model.safetensors")
        assert any(k.endswith("lora_B.weight") and adapter[k].abs().max() > 0 for k in adapter)
    else:
        before, after = load_file(tmp_path / "kit" / "model.safetensors"), load_file(out / "model.safetensors")
        assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
