"""D²O trainer: the loss equals TRL's DPO at K=1, α=β; the anchors and reference log-probs are computed once; bad
input fails clearly; real steps move the policy the claimed way; the online option re-samples anchors."""

import copy
import json
import math

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from negalign.data import DataError, NegativesData, format_prompt
from negalign.generation import GenerationError
from negalign.logprobs import sequence_logps, token_logps
from negalign.trainers.d2o import D2OConfig, D2OTrainer
from tests.conftest import BAD, GOOD, QUESTIONS, perturbed


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", max_length=128,
                per_device_train_batch_size=3, gradient_checkpointing=False, disable_dropout=True, seed=0,
                save_strategy="no", logging_steps=1, disable_tqdm=True, anchor_max_new_tokens=8, anchor_batch_size=4)
    base.update(kw)
    return D2OConfig(**base)


def _batch(trainer, n):
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))


def test_k1_alpha_eq_beta_equals_trl_dpo_loss_and_gradient(kit, tmp_path):
    model, tok = kit
    prompts = [format_prompt(q, tok) for q in QUESTIONS[:4]]
    ref = model.eval()
    pol_a, pol_b = perturbed(model), perturbed(model)
    d2o_data = Dataset.from_dict({"prompt": prompts, "rejected": BAD[:4], "anchors": [[g] for g in GOOD[:4]]})
    dpo_data = Dataset.from_dict({"prompt": prompts, "chosen": GOOD[:4], "rejected": BAD[:4]})
    d2o = D2OTrainer(pol_a, ref_model=copy.deepcopy(ref), args=_cfg(tmp_path, num_anchors=1, alpha=0.1, beta=0.1),
                     train_dataset=d2o_data, processing_class=tok)
    dpo_args = DPOConfig(output_dir=str(tmp_path / "dpo"), use_cpu=True, bf16=False, report_to="none", max_length=128,
                         beta=0.1, gradient_checkpointing=False, disable_dropout=True)
    dpo = DPOTrainer(pol_b, ref_model=copy.deepcopy(ref), args=dpo_args, train_dataset=dpo_data, processing_class=tok)

    loss_d2o = d2o.compute_loss(d2o.model, _batch(d2o, 4))
    loss_dpo = dpo.compute_loss(dpo.model, _batch(dpo, 4))
    assert abs(loss_dpo.item() - math.log(2)) > 1e-3  # policy ≠ reference: a non-trivial comparison
    torch.testing.assert_close(loss_d2o, loss_dpo, rtol=1e-5, atol=1e-6)
    loss_d2o.backward()
    loss_dpo.backward()
    ga = torch.cat([p.grad.flatten() for p in d2o.model.parameters() if p.grad is not None])
    gb = torch.cat([p.grad.flatten() for p in dpo.model.parameters() if p.grad is not None])
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)


def test_k3_loss_is_the_spec_formula(kit, tmp_path):
    """K=3, α≠β: the trainer's loss equals SPEC §2 written out by hand over independently computed log-probs."""
    model, tok = kit
    prompts = [format_prompt(q, tok) for q in QUESTIONS[:3]]
    anchors = [[GOOD[i], GOOD[(i + 1) % 6], BAD[(i + 2) % 6]] for i in range(3)]
    data = Dataset.from_dict({"prompt": prompts, "rejected": BAD[:3], "anchors": anchors})
    ref = model.eval()
    pol = perturbed(model, seed=1)
    beta, alpha = 0.3, 0.05
    tr = D2OTrainer(pol, ref_model=copy.deepcopy(ref), args=_cfg(tmp_path, num_anchors=3, beta=beta, alpha=alpha),
                    train_dataset=data, processing_class=tok)
    loss = tr.compute_loss(tr.model, _batch(tr, 3))

    def seq_logp(m, prompt, resp):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        full = tok(prompt + resp + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([full])
        mask = torch.tensor([[0] * len(p) + [1] * (len(full) - len(p))])
        with torch.no_grad():
            return sequence_logps(token_logps(m, ids, torch.ones_like(ids), mask), mask).item()

    expected = []
    for i in range(3):
        pos = sum(seq_logp(pol, prompts[i], a) - seq_logp(ref, prompts[i], a) for a in anchors[i]) * beta / 3
        neg = alpha * (seq_logp(pol, prompts[i], BAD[i]) - seq_logp(ref, prompts[i], BAD[i]))
        expected.append(-math.log(1 / (1 + math.exp(-(pos - neg)))))
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-4, abs=1e-5)


def test_anchors_generated_once_and_reference_logps_cached_once(kit, tmp_path):
    model, tok = kit
    prompts = [format_prompt(q, tok) for q in QUESTIONS]
    data = Dataset.from_dict({"prompt": prompts, "rejected": BAD})
    args = _cfg(tmp_path, num_anchors=2, max_steps=3, learning_rate=1e-3)
    untrained = copy.deepcopy(model)  # the anchors' source; training below changes ``model`` in place
    tr = D2OTrainer(model, args=args, train_dataset=data, processing_class=tok)
    assert tr.anchor_generation_calls == 1
    rows = [json.loads(line) for line in open(tmp_path / "out" / "anchors.jsonl") if '"id"' in line]
    assert len(rows) == 6 and all(len(r["completions"]) == 2 for r in rows)
    assert tr.ref_logp_batches == 2  # 6 prompts / batch of 3: two reference passes, before training
    cols = tr.train_dataset.column_names
    assert "ref_anchor_logps" in cols and "ref_rejected_logps" in cols
    calls = {"n": 0}
    real = tr.compute_ref_log_probs

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    tr.compute_ref_log_probs = counting
    tr.train()
    assert calls["n"] == 0 and tr.ref_logp_batches == 2  # no reference forward inside the training steps
    # a second run with the same anchors file reads it instead of sampling again
    tr2 = D2OTrainer(copy.deepcopy(untrained), args=args, train_dataset=data, processing_class=tok)
    assert tr2.anchor_generation_calls == 0
    assert tr2.train_dataset["anchors"] == [r["completions"] for r in rows]


def test_complete_anchors_file_of_another_model_or_prompts_is_refused(kit, tmp_path):
    """issue #13: a complete anchors file is read without ``generate``, so its header's model and prompts are
    checked there too; before, a file sampled from another reference was used as this one's anchors."""
    model, tok = kit
    prompts = [format_prompt(q, tok) for q in QUESTIONS[:3]]
    data = Dataset.from_dict({"prompt": prompts, "rejected": BAD[:3]})
    args = _cfg(tmp_path, num_anchors=1)
    D2OTrainer(copy.deepcopy(model), args=args, train_dataset=data, processing_class=tok)  # writes the anchors
    other = perturbed(model)  # another reference: same architecture and name, other weights
    with pytest.raises(GenerationError, match="different model"):
        D2OTrainer(other, args=args, train_dataset=data, processing_class=tok)
    # the same file for other prompts (the header's prompt hash differs; the rows' prompts are ours, edited)
    path = tmp_path / "out" / "anchors.jsonl"
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["prompts"] = "0" * 16
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with pytest.raises(GenerationError, match="different prompts"):
        D2OTrainer(copy.deepcopy(model), args=args, train_dataset=data, processing_class=tok)


def test_bad_input_is_a_clear_error(kit, tmp_path):
    model, tok = kit
    path = tmp_path / "neg.jsonl"
    path.write_text(json.dumps({"prompt": "a", "rejected": "b"}) + "\n" + json.dumps({"prompt": "c", "rejected": ""}) + "\n")
    with pytest.raises(DataError, match="row 1 has no negative"):
        NegativesData(path=str(path)).load(tok)
    path.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['rejected'\]"):
        NegativesData(path=str(path)).load(tok)
    # K larger than the samples on file
    prompts = [format_prompt(q, tok) for q in QUESTIONS[:2]]
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text("".join(json.dumps({"id": i, "prompt": p, "completions": ["x", "y"]}) + "\n"
                               for i, p in enumerate(prompts)))
    data = Dataset.from_dict({"prompt": prompts, "rejected": BAD[:2]})
    with pytest.raises(DataError, match="K=3 anchors requested but the anchors file .* holds only 2"):
        D2OTrainer(model, args=_cfg(tmp_path, num_anchors=3, anchors_path=str(anchors)), train_dataset=data,
                   processing_class=tok)
    with pytest.raises(DataError, match="K=3 anchors requested but data row 0 holds only 1"):
        D2OTrainer(model, args=_cfg(tmp_path, num_anchors=3), processing_class=tok,
                   train_dataset=data.add_column("anchors", [["x"], ["y"]]))
    with pytest.raises(DataError, match="lacks column 'rejected'"):
        D2OTrainer(model, args=_cfg(tmp_path), train_dataset=Dataset.from_dict({"prompt": prompts}),
                   processing_class=tok)


def test_steps_lower_the_negative_relative_to_the_anchors(kit, tmp_path):
    model, tok = kit
    prompts = [format_prompt(q, tok) for q in QUESTIONS]
    data = Dataset.from_dict({"prompt": prompts, "rejected": BAD, "anchors": [[g, g] for g in GOOD]})
    tr = D2OTrainer(model, args=_cfg(tmp_path, num_anchors=2, max_steps=8, learning_rate=3e-3, beta=0.5, alpha=0.5),
                    train_dataset=data, processing_class=tok)
    before = tr.train_dataset["ref_rejected_logps"]
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert logs[-1]["loss"] < logs[0]["loss"]
    tr.model.eval()
    batch = _batch(tr, 6)
    with torch.no_grad():
        tr.compute_loss(tr.model, batch)
    # the negative's log-probability fell below the reference, the anchors' rose relative to it
    assert tr._metrics["eval"]["rewards/negative"][-1] < 0
    assert tr._metrics["eval"]["rewards/margins"][-1] > 0.1
    assert before == tr.train_dataset["ref_rejected_logps"]


def test_online_refresh_resamples_from_the_policy(kit, tmp_path):
    model, tok = kit
    prompts = [format_prompt(q, tok) for q in QUESTIONS]
    data = Dataset.from_dict({"prompt": prompts, "rejected": BAD})
    tr = D2OTrainer(model, args=_cfg(tmp_path, num_anchors=2, max_steps=4, learning_rate=1e-3, online_refresh_steps=2),
                    train_dataset=data, processing_class=tok)
    assert tr.ref_model is not None  # a frozen copy of the initial model serves as π_ref after training starts
    first = tr.train_dataset["anchor_ids"]
    tr.train()
    assert tr.anchor_refreshes == 1  # at step 2 (not after the last step)
    assert tr.ref_logp_batches == 2 + 2  # initial anchors+negatives, then the new anchors only
    assert sorted(tr._anchor_store) == list(range(6))
    new = [tr._anchor_store[i][0] for i in range(6)]
    assert new != first and all(len(a) == 2 and len(tr._anchor_store[i][1]) == 2 for i, a in enumerate(new))


def test_recipe_run_writes_results(tmp_path):
    """`negalign train` path: negatives loader (chat-formatted), kit model, anchors sampled into OUTPUT/anchors.jsonl."""
    from negalign.config import load_recipe
    from negalign.train import run

    data = tmp_path / "neg.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "rejected": b}) + "\n" for q, b in zip(QUESTIONS, BAD)))
    recipe = load_recipe(data={
        "model": {"kit": {"dir": str(tmp_path / "kit"), "arch": "qwen2", "size": "tiny", "vocab_size": 512}},
        "data": {"name": "negatives", "path": str(data)},
        "method": {"name": "d2o", "num_anchors": 2, "anchor_max_new_tokens": 6},
        "training": {"max_steps": 2, "per_device_train_batch_size": 3, "learning_rate": 1e-3, "save_strategy": "no",
                     "gradient_checkpointing": False, "max_length": 96, "disable_tqdm": True, "logging_steps": 1},
        "output": {"dir": str(tmp_path / "out")},
    })
    metrics = run(recipe)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["method"] == "d2o" and res["metrics"]["num_anchors"] == 2 and res["metrics"]["num_prompts"] == 6
    assert res["metrics"]["reference_logp_batches"] == 2 and res["metrics"]["anchor_refreshes"] == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "anchors.jsonl").read_text().splitlines()]
    assert rows[1]["prompt"].startswith("<|im_start|>user\n") and len(rows[1]["completions"]) == 2
    assert "rewards/margins" in metrics["log_history"][0]


def test_lora_reference_is_the_adapter_disabled_model(kit, tmp_path):
    """With LoRA no reference copy is held (π_ref = adapters off), also for the online refresh."""
    from peft import LoraConfig

    model, tok = kit
    data = Dataset.from_dict({"prompt": [format_prompt(q, tok) for q in QUESTIONS], "rejected": BAD})
    tr = D2OTrainer(model, args=_cfg(tmp_path, num_anchors=2, max_steps=4, learning_rate=5e-3, online_refresh_steps=2),
                    train_dataset=data, processing_class=tok,
                    peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    assert tr.ref_model is None and tr.ref_logp_batches == 2
    tr.train()
    assert tr.anchor_refreshes == 1 and tr.ref_logp_batches == 4
    logs = [h for h in tr.state.log_history if "rewards/margins" in h]
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
