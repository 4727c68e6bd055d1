"""Every trainer on the real pretrained model (``offline:smollm2-135m-instruct``), two optimizer steps each.

What a kit model could hide: SmolLM2's ChatML template (a default system prompt; EOS = PAD = ``<|im_end|>``), its tied
LM head / embedding matrix and its 49k vocabulary. Each run takes two steps through its recipe keys and checks that
both losses are finite, that a weight moved, that the saved model still ties ``lm_head`` to ``embed_tokens`` (LoRA: the
adapter leaves them untouched), and, once per family, where the prompt/answer boundary and the EOS land in what the
trainer actually trained on (captured from the trainer after the run). Fixtures and helpers come from
``tests/test_realmodel.py``; ``-m realmodel`` selects both files, ``-m "realmodel and not slow"`` the default part."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from negalign.config import load_recipe
from negalign.train import run
from tests.test_realmodel import NAME, TINY, _assert_two_finite_steps, _tensor, smollm2, tokenizer  # noqa: F401

pytestmark = pytest.mark.realmodel
Q = "model.layers.0.self_attn.q_proj.weight"
EMB = "model.embed_tokens.weight"
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
SLOW = pytest.mark.slow


@pytest.fixture()
def trainers(monkeypatch):
    """The trainers ``run`` builds, captured as their ``train()`` is called (their datasets are then inspectable)."""
    from transformers import Trainer

    seen, train = [], Trainer.train

    def capture(self, *args, **kwargs):
        seen.append(self)
        return train(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", capture)
    return seen


@pytest.fixture()
def rollouts(monkeypatch):
    """What TRL's GRPO generation step returns (prompt / completion ids and the completion mask), per call."""
    from trl import GRPOTrainer

    seen, orig = [], GRPOTrainer._generate_and_score_completions

    def capture(self, inputs):
        out = orig(self, inputs)
        seen.append({k: out[k].detach().cpu() for k in ("prompt_ids", "prompt_mask", "completion_ids",
                                                        "completion_mask")})
        return out

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", capture)
    return seen


def _train(out, model: dict | None = None, **sections) -> dict:
    training = {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-5, **TINY,
                **sections.pop("training", {})}
    return run(load_recipe(data={"model": model or {"name_or_path": NAME, "dtype": "float32"}, **sections,
                                 "training": training, "output": {"dir": str(out)}}))


def _assert_moved_and_tied(out, base, keys=(Q, EMB)):
    """The full-weight run moved ``keys`` and saved a model whose LM head is its embedding matrix."""
    from transformers import AutoConfig

    for key in keys:
        after = _tensor(out, key)
        assert torch.isfinite(after).all() and not torch.equal(after, _tensor(base, key)), key
    assert AutoConfig.from_pretrained(out).tie_word_embeddings
    from safetensors import safe_open

    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        if "lm_head.weight" in f.keys():  # saved untied would be a bug; saved both, they must be one matrix
            assert torch.equal(f.get_tensor("lm_head.weight"), f.get_tensor(EMB))


def _assert_adapter_trained(out, base):
    """LoRA: only the adapter is saved, every B matrix moved from zero, and the base's tied matrix is untouched."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = load_file(os.path.join(out, "adapter_model.safetensors"))
    assert not os.path.exists(os.path.join(out, "model.safetensors"))
    b = [v for k, v in adapter.items() if "lora_B" in k]
    assert b and all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in b)
    assert not any("embed_tokens" in k or "lm_head" in k for k in adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).merge_and_unload()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.model.embed_tokens.weight, _tensor(base, EMB))


# ------------------------------------------------------------------------------------------------ unlearning (TOFU)

TOFU_METHODS = {  # each method's own keys from its recipe (recipes/<method>_tofu.yaml), at TOFU's settings
    "ga": {},
    "grad_diff": {"gamma": 1.0, "alpha": 1.0},
    "npo": {"beta": 0.1},
    "npo_kl": {"beta": 0.1, "gamma": 1.0, "alpha": 1.0},
    "simnpo": {"beta": 4.5, "simnpo_gamma": 0.0, "gamma": 0.125, "alpha": 1.0},
    "idk_dpo": {"beta": 0.1, "gamma": 1.0, "alpha": 1.0},
}


def _tofu(shared_data, method: str, peft=None, **training) -> dict:
    sections = {
        "data": {"name": "tofu", "path": str(shared_data / "tofu"), "forget_split": "forget01",
                 "retain_split": "retain99", "max_forget": 4, "max_retain": 8},
        "method": {"name": method, "max_length": 96, **TOFU_METHODS[method]},
        "training": training,
    }
    if peft:
        sections["peft"] = peft
    return sections


# Cost: one thread, ~10-25 CPU seconds per test (2026-12-03, shared 2-core machine). About one cheap run per family
# (simnpo, simnpo + LoRA, w_reinforce, nft, madpo, perstep_awr: 10-26 s each, ~100 s in all) stays in the default
# suite; the rest are slow.
CHEAP_TOFU = ("simnpo",)


@pytest.mark.parametrize("method", [pytest.param(m, marks=() if m in CHEAP_TOFU else SLOW)
                                    for m in TOFU_METHODS if m != "idk_dpo"])  # idk_dpo: the test after this one
def test_unlearning_method_two_steps_full_weights(smollm2, shared_data, tmp_path, method, one_thread):
    out = tmp_path / method
    metrics = _train(out, **_tofu(shared_data, method))
    _assert_two_finite_steps(metrics)
    _assert_moved_and_tied(out, smollm2)


@pytest.mark.slow
def test_idk_dpo_refusals_are_labelled_after_the_assistant_header_with_one_eos(smollm2, tokenizer, shared_data,
                                                                               tmp_path, trainers, one_thread):
    """IdkDPO's preferred side (a refusal from idontknow.jsonl) is encoded under the real template like the forget
    answer it replaces: the mask starts right after ``<|im_start|>assistant\\n`` and ends with one ``<|im_end|>``."""
    out = tmp_path / "idk"
    _assert_two_finite_steps(_train(out, **_tofu(shared_data, "idk_dpo")))
    _assert_moved_and_tied(out, smollm2)
    (trainer,) = trainers
    refusals = {json.loads(x)["text"].strip() if x.startswith("{") else x.strip()
                for x in (shared_data / "tofu" / "idontknow.jsonl").read_text().splitlines() if x.strip()}
    pool = trainer.pools["alternate"]
    assert len(pool) >= len(trainer.train_dataset)
    for ids, mask in pool:
        first = mask.index(1)
        assert all(mask[first:]) and not any(mask[:first])
        assert tokenizer.decode(ids[:first]).endswith(ASSISTANT)
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in ids[first:-1]
        assert tokenizer.decode(ids[first:-1]).strip() in refusals


LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.mark.parametrize("method", ["simnpo", pytest.param("ga", marks=SLOW)])
def test_unlearning_with_lora_keeps_the_tied_matrix(smollm2, shared_data, tmp_path, method, one_thread):
    """LoRA beyond NPO+RT (tests/test_realmodel.py, which covers the adapter-disabled reference): SimNPO is
    reference-free and has a retain term, GA neither; LoRA wrapping is method-independent otherwise."""
    out = tmp_path / method
    _assert_two_finite_steps(_train(out, **_tofu(shared_data, method, peft=LORA, learning_rate=1e-4)))
    _assert_adapter_trained(out, smollm2)


# ------------------------------------------------------------------------------------------------ RLVR (GSM8K, arith)

RLVR = {  # method -> (data, method keys); the RLVR trainers generate with HF generate, 16 tokens
    "w_reinforce": ({"name": "gsm8k", "max_samples": 4}, {"lam": 0.1, "epsilon": 0.2, "entropy_coef": 0.0}),
    "grpo": ({"name": "gsm8k", "max_samples": 4}, {}),
    # easy sums, so that some answers are right and NFT's groups are mixed; no dynamic refill on a 2-core CPU
    "nft": ({"name": "arith", "low": 1, "high": 9, "ops": "+", "test_size": 10, "max_samples": 4},
            {"dynamic_filtering": False}),
}


@pytest.mark.parametrize("method", [pytest.param(m, marks=SLOW if m == "grpo" else ()) for m in RLVR])
def test_rlvr_two_steps_and_the_completion_mask_under_chatml(smollm2, tokenizer, shared_data, tmp_path, method,
                                                             rollouts, one_thread):
    """Two steps of each RLVR trainer on its own samples. The prompts TRL renders end at the assistant header, and
    the completion mask covers each completion up to and including its first ``<|im_end|>`` (EOS = PAD here, so a
    mask built by token id would drop it) and nothing after."""
    data, keys = RLVR[method]
    if data["name"] == "gsm8k":
        data = {**data, "path": str(shared_data / "gsm8k")}
    out = tmp_path / method
    metrics = _train(out, data=data, method={"name": method, **keys},
                     training={"num_generations": 2, "max_completion_length": 16, "temperature": 1.0})
    _assert_two_finite_steps(metrics)
    _assert_moved_and_tied(out, smollm2)
    assert rollouts
    eos = tokenizer.eos_token_id
    if data["name"] == "arith":  # short answers: some completions stop before 16 tokens, so the EOS case is exercised
        assert any((r["completion_ids"] == eos).any() for r in rollouts)
    for r in rollouts:
        for ids, mask in zip(r["prompt_ids"], r["prompt_mask"]):
            text = tokenizer.decode(ids[mask.bool()])
            assert text.startswith("<|im_start|>system\n") and text.endswith(ASSISTANT), text
        for ids, mask in zip(r["completion_ids"], r["completion_mask"]):
            hits = (ids == eos).nonzero()
            end = int(hits[0]) + 1 if len(hits) else len(ids)
            assert mask[:end].all() and not mask[end:].any(), (ids, mask)


# ------------------------------------------------------------------------------------------------ MADPO

def _pairs(tmp_path):
    rows = [{"prompt": f"Write one sentence about the film number {i}.",
             "chosen": "It was wonderful" + " and moving" * (i % 3) + ".",
             "rejected": "It was dull" + " and long" * (i % 2 + 1) + "."} for i in range(4)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"name": "preference", "path": str(path), "chat": True}, rows


def test_madpo_reward_model_then_dpo_step(smollm2, tokenizer, tmp_path, trainers, one_thread):
    """Step 1 (TRL's RewardTrainer, a sequence-classification head on SmolLM2) and step 2 (MADPO's weighted DPO with
    margins from step 1), two steps each. Under the chat template the DPO prompt ends at the assistant header and
    each response carries one ``<|im_end|>``; the reward model scores prompt + response + EOS alike."""
    data, rows = _pairs(tmp_path)
    rm = tmp_path / "rm"
    _assert_two_finite_steps(_train(rm, data=data, method={"name": "madpo_reward"},
                                    training={"max_length": 96, "learning_rate": 1e-4}))
    _assert_moved_and_tied(rm, smollm2, keys=(Q,))
    assert any("score" in k for k in _keys(rm))
    reward_trainer = trainers.pop()
    from negalign.trainers.madpo import _pair_ids

    for ex, row in zip(reward_trainer.train_dataset, rows):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                               add_generation_prompt=True)
        for side in ("chosen", "rejected"):
            ids = ex[f"{side}_ids"]  # the whole ChatML prompt (its turns end with <|im_end|> too), answer, EOS
            assert tokenizer.decode(ids) == f"{prompt}{row[side]}<|im_end|>"
            assert ids == _pair_ids(tokenizer, prompt, row[side])  # step 2 scores the pairs as step 1 trained on them

    out = tmp_path / "madpo"
    metrics = _train(out, data=data, method={"name": "madpo", "reward_model": str(rm), "reward_batch_size": 2},
                     training={"max_length": 96})
    _assert_two_finite_steps(metrics)
    _assert_moved_and_tied(out, smollm2)
    (dpo,) = trainers
    eos = tokenizer.eos_token_id
    for ex, row in zip(dpo.train_dataset, rows):
        assert tokenizer.decode(ex["prompt_ids"]).endswith(f"{row['prompt']}{ASSISTANT}")
        for side in ("chosen", "rejected"):
            ids = ex[f"{side}_ids"]
            assert ids[-1] == eos and eos not in ids[:-1]
            assert tokenizer.decode(ids[:-1]) == row[side]


def _keys(folder) -> list[str]:
    from safetensors import safe_open

    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        return list(f.keys())


# ------------------------------------------------------------------------------------------------ per-step

def _perstep(tmp_path, method, cache, **extra):
    return {
        "data": {"name": "steparith", "num_problems": 2, "num_steps": 2, "test_size": 10},
        "method": {"name": method, "samples_per_prompt": 2, "num_continuations": 2, "max_new_tokens": 24,
                   "generation_backend": "hf", "generation_batch_size": 2, "cache_dir": str(cache),
                   # the step advantages may all be 0 (SmolLM2's continuations all wrong, or all right, at every
                   # step: awr/mean_weight 0 when measured), so AWR's NLL term on the dataset's solutions is switched
                   # on to keep a gradient
                   **({"awr_positive_weight": 1.0} if method == "perstep_awr" else {}), **extra},
        "training": {"max_length": 128, "precompute_ref_log_probs": method == "perstep_dpo"},
    }


@pytest.mark.parametrize("method", [pytest.param("perstep_dpo", marks=SLOW), "perstep_awr"])
def test_perstep_sampling_values_and_training(smollm2, tokenizer, tmp_path, method, trainers, one_thread):
    """The per-step pipeline on SmolLM2: solutions sampled from it, Monte-Carlo step values from its continuations
    (negalign.stepvalues), then two steps of the trainer. Under the real template the trained text starts after the
    assistant header; a whole solution ends with one ``<|im_end|>``, a rejected prefix (first pit) with none."""
    cache = tmp_path / "cache"
    out = tmp_path / method
    metrics = _train(out, **_perstep(tmp_path, method, cache))
    _assert_two_finite_steps(metrics)
    _assert_moved_and_tied(out, smollm2)
    stats = metrics["perstep"]
    assert stats, metrics.keys()
    assert list(cache.rglob("*.jsonl"))  # samples and step values cached
    (trainer,) = trainers
    eos = tokenizer.eos_token_id
    rows = trainer.train_dataset
    assert len(rows) >= 1
    for ex in rows:
        if method == "perstep_dpo":
            assert tokenizer.decode(ex["prompt_ids"]).endswith(ASSISTANT)
            chosen, rejected = ex["chosen_ids"], ex["rejected_ids"]
            assert chosen[-1] == eos and eos not in chosen[:-1]
            assert eos not in rejected[:-1]
        else:
            ids, m = ex["input_ids"], ex["response_mask"]
            first = m.index(1) if 1 in m else None
            assert first is not None and tokenizer.decode(ids[:first]).endswith(ASSISTANT)
            assert ids[-1] == eos and eos not in ids[first:-1]  # a solution (own or the dataset's) + one EOS


# ------------------------------------------------------------------------------------------------ ZeRO, 2 processes

@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero3"])
def test_tied_embeddings_survive_zero_on_two_processes(smollm2, shared_data, tmp_path, config):
    """NPO+RT on SmolLM2 under DeepSpeed ZeRO over gloo, 2 CPU processes (tests/test_distributed.py's launcher),
    float32, 2 steps: finite losses, and the consolidated saved model still has one matrix for LM head and
    embedding, moved by training."""
    import subprocess

    import yaml

    from tests.test_distributed import ACCELERATE, FP32, ROOT

    recipe = tmp_path / "npo_rt.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name_or_path": NAME, "dtype": "float32"},
        **_tofu(shared_data, "npo"),
        "method": {"name": "npo_rt", "beta": 0.1, "max_length": 64},
        "training": {"max_steps": 2, "per_device_train_batch_size": 1, "learning_rate": 1e-5, **TINY},
    }))
    out = tmp_path / "out"
    cmd = [*ACCELERATE, "--config_file", f"recipes/accelerate/{config}.yaml", "--num_processes", "2", *FP32,
           "-m", "negalign", "train", str(recipe), f"output_dir={out}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    m = json.loads((out / "results.json").read_text())["metrics"]
    assert m["world_size"] == 2 and m["deepspeed_zero_stage"] == int(config[-1])
    losses = [h["loss"] for h in m["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    _assert_moved_and_tied(out, smollm2)
