"""The unlearning trainer (negalign.trainers.unlearn) on the offline kit model: real forwards and optimizer steps."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset

from negalign import logprobs as lp
from negalign.data import DataError
from negalign.data.core import format_prompt
from negalign.losses import nll_loss, npo_loss
from negalign.trainers.unlearn import METHOD_DEFAULTS, UnlearnConfig, UnlearnTrainer, pad_rows

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


FORGET_QA = [(f"What did author {i} write?", f"Author {i} wrote {i % 7 + 2} novels about the river and the sea.")
             for i in range(8)]
RETAIN_QA = [(f"What did author {i} write?", f"Author {i} wrote {i % 7 + 2} novels about the stars and the sea.")
             for i in range(100, 112)]


def datasets(tok, draws: int = 3):
    end = tok.eos_token
    forget = Dataset.from_list([
        {"prompt": format_prompt(q, tok), "completion": a + end, "retain_index": [(i + k * 5) % len(RETAIN_QA) for k in range(draws)]}
        for i, (q, a) in enumerate(FORGET_QA)
    ])
    retain = Dataset.from_list([{"prompt": format_prompt(q, tok), "completion": a + end} for q, a in RETAIN_QA])
    return forget, retain


def config(tmp_path, method="npo", **kw):
    base = dict(METHOD_DEFAULTS[method])
    base.update(dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", learning_rate=1e-2,
                     per_device_train_batch_size=2, max_steps=3, logging_steps=1, save_strategy="no", seed=0,
                     gradient_checkpointing=False, lr_scheduler_type="constant", disable_tqdm=True))
    base.update(kw)
    return UnlearnConfig(**base)


def forget_logps(model, trainer) -> torch.Tensor:
    ds = trainer.train_dataset
    ids, am, cm = pad_rows(list(zip(list(ds["input_ids"]), list(ds["completion_mask"]))), trainer.pad_id)
    with torch.no_grad():
        return lp.sequence_logps(lp.token_logps(model, ids, am, cm), cm)


# SimNPO at its paper β = 4.5 is saturated on a random kit model: per-token log-probs near -6.3 give
# σ(-(β/|y|)·log π) ≈ σ(28) ≈ 1, so its loss and gradient vanish (correctly: SimNPO only pushes on answers the model
# finds likely). On this untrained model we check its direction at β = 0.05, where the sigmoid is not saturated.
@pytest.mark.parametrize("method,extra", [("ga", {}), ("npo_rt", {}), ("simnpo", {"beta": 0.05, "retain_loss": "none"})])
def test_unlearning_steps_lower_forget_logp_and_change_weights(kit, tmp_path, method, extra):
    model, tok = kit
    before_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    forget, retain = datasets(tok)
    trainer = UnlearnTrainer(model, config(tmp_path, method, **extra), forget, retain, processing_class=tok)
    before = forget_logps(model, trainer)
    trainer.train()
    after = forget_logps(model, trainer)
    # 3 descent steps on L_forget (which increases in log π_θ for every method) must lower the mean forget log-prob
    assert after.mean() < before.mean() - 1.0, (before.mean(), after.mean())
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before_weights[n])]
    assert len(changed) == len(before_weights)
    logs = [h for h in trainer.state.log_history if "forget/logps" in h]
    assert len(logs) == 3 and all("forget/loss" in h for h in logs)
    if trainer.args.retain_loss != "none":
        assert all("retain/loss" in h for h in logs)


def test_cached_reference_equals_fresh_forward_and_is_never_recomputed(kit, tmp_path):
    model, tok = kit
    fresh = copy.deepcopy(model)
    forget, retain = datasets(tok)
    trainer = UnlearnTrainer(model, config(tmp_path, "npo"), forget, retain, processing_class=tok)
    cached = torch.tensor(trainer.train_dataset["ref_forget_logps"])
    # a fresh forward of an untouched copy of the starting model, one example at a time (no padding at all)
    expected = []
    for ids, cm in zip(trainer.train_dataset["input_ids"], trainer.train_dataset["completion_mask"]):
        ids_t, cm_t = torch.tensor([ids]), torch.tensor([cm])
        with torch.no_grad():
            expected.append(lp.sequence_logps(lp.naive_token_logps(fresh, ids_t, torch.ones_like(ids_t), cm_t), cm_t).item())
    torch.testing.assert_close(cached, torch.tensor(expected), atol=1e-4, rtol=1e-5)
    # training never runs a reference pass: the column is read from the batch
    calls = []
    trainer.compute_reference_logps = lambda *a, **k: calls.append(1)  # noqa: E731
    trainer.train()
    assert calls == []
    logged = [h["forget/ref_logps"] for h in trainer.state.log_history if "forget/ref_logps" in h]
    assert len(logged) == 3
    # the saved cache is reused by a new trainer on the same model and data (e.g. on resume): no reference pass
    saved = json.loads((tmp_path / "ref_forget_logps.json").read_text())
    torch.testing.assert_close(torch.tensor(saved["logps"]), cached)
    again = UnlearnTrainer(fresh, config(tmp_path, "npo"), forget, retain, processing_class=tok)
    torch.testing.assert_close(torch.tensor(again.train_dataset["ref_forget_logps"]), cached)


@pytest.mark.parametrize("method", ["npo_rt", "npo_kl"])
def test_one_forward_equals_separate_forwards(kit, tmp_path, method):
    model, tok = kit
    forget, retain = datasets(tok)
    trainer = UnlearnTrainer(model, config(tmp_path, method, beta=0.5), forget, retain, processing_class=tok)
    # perturb the policy so that policy != reference (otherwise KL = 0 and w = 1 trivially)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = trainer.collate([trainer.train_dataset[i] for i in range(3)])
    decoder = model.get_decoder()
    calls = []
    handle = decoder.register_forward_hook(lambda *a: calls.append(1))
    model.zero_grad()
    terms = trainer.compute_terms(model, batch)
    terms["loss"].backward()
    handle.remove()
    assert len(calls) == 1  # the policy decoder ran once for forget + retain rows together
    grad_one = {n: p.grad.clone() for n, p in model.named_parameters()}

    # separate forwards: forget rows alone, retain rows alone
    model.zero_grad()
    f_tok = lp.token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    f_seq = lp.sequence_logps(f_tok, batch["completion_mask"])
    forget_term = npo_loss(f_seq, batch["ref_forget_logps"], 0.5).mean()
    r_ids, r_am, r_cm = pad_rows(trainer.retain_rows(batch["retain_index"]), trainer.pad_id)
    if method == "npo_rt":
        retain_term = nll_loss(lp.token_logps(model, r_ids, r_am, r_cm), r_cm).mean()
    else:
        retain_term = lp.chunked_token_kl(model, trainer.ref_model, r_ids, r_am, r_cm).mean()
        assert retain_term.item() > 0
    loss = forget_term + retain_term
    loss.backward()
    torch.testing.assert_close(terms["forget_loss"], forget_term, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["retain_loss"], retain_term, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grad_one[n], p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["npo_rt", "npo_kl"])
def test_lora_path_uses_adapter_disabled_base_as_reference(kit, tmp_path, method):
    from peft import LoraConfig

    model, tok = kit
    base_copy = copy.deepcopy(model)
    forget, retain = datasets(tok)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = UnlearnTrainer(model, config(tmp_path, method), forget, retain, processing_class=tok, peft_config=lora)
    assert trainer.ref_model is None  # no second copy of the model: the reference is the adapter-disabled base
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    ref_before = forget_logps(base_copy, trainer)
    torch.testing.assert_close(torch.tensor(trainer.train_dataset["ref_forget_logps"]), ref_before, atol=1e-4, rtol=1e-5)
    pol_before = forget_logps(trainer.model, trainer)
    trainer.train()
    pol_after = forget_logps(trainer.model, trainer)
    assert pol_after.mean() < pol_before.mean()
    for n, p in trainer.model.named_parameters():
        if "lora_" in n:
            continue
        assert torch.equal(p.detach(), base_before[n]), n  # base weights frozen
    assert any(not torch.equal(p.detach(), lora_before[n]) for n, p in trainer.model.named_parameters() if "lora_" in n)
    # with the adapter disabled the model is still the reference
    with trainer.model.disable_adapter():
        torch.testing.assert_close(forget_logps(trainer.model, trainer), ref_before, atol=1e-4, rtol=1e-5)
    if method == "npo_kl":
        assert all(h["retain/loss"] >= 0 for h in trainer.state.log_history if "retain/loss" in h)


def test_resume_from_checkpoint_gives_the_uninterrupted_state(kit_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(kit_path)
    forget, retain = datasets(tok)

    def fresh():
        return AutoModelForCausalLM.from_pretrained(kit_path, dtype=torch.float32)

    # 6 steps of 2 forget examples over 8 examples: crosses an epoch, so the retain partners switch to draw 1
    kw = dict(max_steps=6, save_strategy="steps", save_steps=3, learning_rate=5e-3, lr_scheduler_type="linear")
    full = UnlearnTrainer(fresh(), config(tmp_path / "a", "npo_rt", **kw), forget, retain, processing_class=tok)
    full.train()
    full_state = {n: p.detach().clone() for n, p in full.model.named_parameters()}

    resumed = UnlearnTrainer(fresh(), config(tmp_path / "b", "npo_rt", **kw), forget, retain, processing_class=tok)
    torch.testing.assert_close(torch.tensor(resumed.train_dataset["ref_forget_logps"]),
                               torch.tensor(full.train_dataset["ref_forget_logps"]))  # recomputed identically
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    for n, p in resumed.model.named_parameters():
        torch.testing.assert_close(p.detach(), full_state[n], atol=1e-6, rtol=1e-5)
    # the resumed state carries the checkpoint's first 3 logs; steps 4-6 (retain draw 1 from step 5 on) must match
    losses_a = [h["loss"] for h in full.state.log_history if "loss" in h]
    losses_b = [h["loss"] for h in resumed.state.log_history if "loss" in h]
    assert len(losses_a) == len(losses_b) == 6
    assert losses_b == pytest.approx(losses_a, rel=1e-5)
    assert "NPO+RT" in (tmp_path / "a" / "README.md").read_text()  # TRL-style model card, written at each save


def test_trainer_rejects_bad_datasets_before_training(kit, tmp_path):
    model, tok = kit
    forget, retain = datasets(tok)
    with pytest.raises(DataError, match="lacks column"):
        UnlearnTrainer(model, config(tmp_path), forget.remove_columns(["completion"]), retain, processing_class=tok)
    with pytest.raises(DataError, match="empty"):
        UnlearnTrainer(model, config(tmp_path), forget.select([]), retain, processing_class=tok)
    with pytest.raises(DataError, match="retain"):
        UnlearnTrainer(model, config(tmp_path, "npo_rt"), forget, retain.select([]), processing_class=tok)
    with pytest.raises(ValueError, match="forget_loss"):
        config(tmp_path, forget_loss="dpo")


class _HeadHidingWrapper(torch.nn.Module):
    """Stands in for DDP: exposes only forward(), so the trainer must go through it (and get full logits)."""

    def __init__(self, inner):
        super().__init__()
        self.module = inner

    def forward(self, **kw):
        return self.module(**kw)


def test_wrapped_model_path_matches_the_split_head_path(kit, tmp_path):
    model, tok = kit
    forget, retain = datasets(tok)
    trainer = UnlearnTrainer(model, config(tmp_path, "npo_kl", beta=0.5), forget, retain, processing_class=tok)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = trainer.collate([trainer.train_dataset[i] for i in range(3)])
    direct = trainer.compute_terms(model, batch)
    wrapped = trainer.compute_terms(_HeadHidingWrapper(model), batch)
    for key in ("loss", "forget_loss", "retain_loss"):
        torch.testing.assert_close(wrapped[key], direct[key], atol=1e-5, rtol=1e-5)
