"""NSR / PSR / W-REINFORCE / REINFORCE and the GRPO baseline on a real kit model.

Fixed rollouts come from TRL's ``rollout_func`` hook so that different trainers see exactly the same batch; the
rewards come from ordinary TRL reward functions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ROOT = Path(__file__).resolve().parents[1]
G = 4  # generations per prompt in these tests
# completions by position inside a group; the reward functions below read their first character
GROUP_COMPLETIONS = ["1", "2 2", "1 1 1", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


@pytest.fixture(scope="session")
def arith_kit(tmp_path_factory) -> str:
    from negalign.data.math import ArithmeticData
    from negalign.models import build_kit_model

    texts = ArithmeticData(high=20, test_size=50).texts()
    return build_kit_model(tmp_path_factory.mktemp("arith-kit") / "qwen2-tiny", texts, size="tiny", vocab_size=300)


def load_kit(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def tiny_dataset(kinds=("mixed", "mixed", "mixed", "mixed")):
    from datasets import Dataset

    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"{i}+{i}="}], "answer": str(2 * i), "kind": kind}
        for i, kind in enumerate(kinds)
    ])


def fixed_rollout(prompts, trainer):
    """TRL rollout_func: the i-th completion of each group is GROUP_COMPLETIONS[i % G] (+ EOS)."""
    tok = trainer.processing_class
    prompt_ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True) for p in prompts]
    prompt_ids = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompt_ids]
    completion_ids = [tok(GROUP_COMPLETIONS[i % G], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                      for i in range(len(prompts))]
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def kind_reward(completions, kind, **kwargs):
    """easy: always right; hard: always wrong; mixed: right when the completion starts with '1' (half the group)."""
    out = []
    for c, k in zip(completions, kind):
        text = c if isinstance(c, str) else c[-1]["content"]
        out.append(1.0 if k == "easy" else 0.0 if k == "hard" else float(text.strip().startswith("1")))
    return out


def base_args(tmp_path, **kw):
    args = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=G, max_completion_length=8,
                learning_rate=1e-2, use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
                seed=0)
    args.update(kw)
    return args


def make_trainer(cls, config_cls, kit_path, tmp_path, dataset=None, rollout=True, reward=kind_reward, **kw):
    model, tok = load_kit(kit_path)
    args = config_cls(**base_args(tmp_path, **kw))
    trainer = cls(model=model, reward_funcs=[reward], args=args, train_dataset=dataset or tiny_dataset(),
                  processing_class=tok, rollout_func=fixed_rollout if rollout else None)
    trainer.model.train()
    if not hasattr(trainer, "current_gradient_accumulation_steps"):
        trainer.current_gradient_accumulation_steps = 1
    return trainer


def batch_inputs(dataset, prompt_indices):
    return [dict(dataset[i]) for i in prompt_indices for _ in range(G)]


def loss_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def grad_norm(grads) -> float:
    return float(sum(g.pow(2).sum() for g in grads.values()) ** 0.5) if grads else 0.0


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, expect_zero", [("psr", True), ("nsr", False), ("w_reinforce", False),
                                               ("reinforce", False)])
def test_all_wrong_group_teaches_nsr_but_not_grpo(arith_kit, tmp_path, mode, expect_zero):
    from negalign.trainers.nsr import GRPOBaselineTrainer, NSRConfig, NSRTrainer

    ds = tiny_dataset(("hard", "hard"))
    nsr = make_trainer(NSRTrainer, NSRConfig, arith_kit, tmp_path / mode, ds, mode=mode, entropy_coef=0.0)
    batch = nsr._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    kept = batch.get("rlvr_keep", torch.ones(len(batch["advantages"]))).bool()
    # no baseline, no std; PSR drops every (wrong) response: one zero-weight filler row keeps the step's shape
    assert batch["advantages"][kept].tolist() == ([] if mode == "psr" else [-1.0] * (2 * G))
    _, grads = loss_grads(nsr, batch)
    assert (grad_norm(grads) == 0.0) == expect_zero

    grpo = make_trainer(GRPOBaselineTrainer, NSRConfig, arith_kit, tmp_path / "grpo", ds, mode="grpo",
                        entropy_coef=0.0)
    gbatch = grpo._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    assert torch.all(gbatch["advantages"] == 0)
    _, ggrads = loss_grads(grpo, gbatch)
    assert grad_norm(ggrads) == 0.0


def test_nsr_loss_is_token_mean_policy_gradient_with_constant_advantages(arith_kit, tmp_path):
    """On-policy the W-REINFORCE loss gradient equals the hand-built -Σ_t A·∇log π(y_t) / (number of tokens), with
    A = +λ for correct and -1 for incorrect responses (log-probs recomputed independently by negalign.logprobs)."""
    from negalign.logprobs import token_logps
    from negalign.trainers.nsr import NSRConfig, NSRTrainer

    ds = tiny_dataset(("mixed", "mixed"))
    tr = make_trainer(NSRTrainer, NSRConfig, arith_kit, tmp_path, ds, mode="w_reinforce", lam=0.1, entropy_coef=0.0)
    batch = tr._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    expected_adv = [0.1 if GROUP_COMPLETIONS[i % G].startswith("1") else -1.0 for i in range(2 * G)]
    assert batch["advantages"].tolist() == pytest.approx(expected_adv)
    _, grads = loss_grads(tr, batch)

    model = tr.model
    model.zero_grad()
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    am = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    resp = torch.cat([torch.zeros_like(batch["prompt_mask"]), batch["completion_mask"]], 1)
    lp = token_logps(model, ids, am, resp)
    adv = torch.tensor(expected_adv).unsqueeze(1)
    manual = -(adv * lp * resp).sum() / resp.sum()
    manual.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6)


def test_entropy_bonus_changes_the_gradient(arith_kit, tmp_path):
    from negalign.trainers.nsr import NSRConfig, NSRTrainer

    ds = tiny_dataset(("mixed",))
    grads = []
    for coef in (0.0, 0.5):
        tr = make_trainer(NSRTrainer, NSRConfig, arith_kit, tmp_path / str(coef), ds, mode="nsr", entropy_coef=coef,
                          per_device_train_batch_size=4)
        batch = tr._generate_and_score_completions(batch_inputs(ds, [0]))
        grads.append(loss_grads(tr, batch)[1])
    name = next(iter(grads[0]))
    assert not torch.allclose(grads[0][name], grads[1][name])


@pytest.mark.parametrize("method", ["psr", "nsr", "w_reinforce", "reinforce", "grpo"])
def test_a_few_real_steps_change_the_weights(arith_kit, tmp_path, method):
    """Real HF generation, a real verifier-like reward, two optimizer steps: the weights move."""
    from negalign.trainers.nsr import GRPOBaselineTrainer, NSRConfig, NSRTrainer

    def parity_reward(completions, **kwargs):  # about half of random completions are "right"
        return [float(len(c if isinstance(c, str) else c[-1]["content"]) % 2 == 0) for c in completions]

    cls = GRPOBaselineTrainer if method == "grpo" else NSRTrainer
    tr = make_trainer(cls, NSRConfig, arith_kit, tmp_path, rollout=False, reward=parity_reward, mode=method,
                      max_steps=2, max_completion_length=6)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    moved = sum(not torch.equal(before[n], p.detach()) for n, p in tr.model.named_parameters())
    assert moved > 0
    logs = tr.state.log_history
    assert any("timing/generation_share" in h for h in logs)
    share = [h["timing/generation_share"] for h in logs if "timing/generation_share" in h]
    assert all(0.0 < s <= 1.0 for s in share)


def test_config_validation_and_method_defaults():
    from negalign.trainers.nsr import METHOD_DEFAULTS, NSRConfig

    assert METHOD_DEFAULTS["w_reinforce"]["mode"] == "w_reinforce"
    cfg = NSRConfig(output_dir="/tmp/x", use_cpu=True, mode="w_reinforce")
    assert (cfg.lam, cfg.epsilon, cfg.entropy_coef, cfg.beta) == (0.1, 0.2, 0.001, 0.0)
    with pytest.raises(ValueError, match="mode"):
        NSRConfig(output_dir="/tmp/x", use_cpu=True, mode="bogus")
    with pytest.raises(ValueError, match="no KL"):
        NSRConfig(output_dir="/tmp/x", use_cpu=True, mode="nsr", beta=0.04)


def test_trl_version_guard(monkeypatch):
    import trl

    from negalign.trainers import nsr

    monkeypatch.setattr(trl, "__version__", "1.18.0")
    monkeypatch.delenv("NEGALIGN_ALLOW_UNTESTED_TRL", raising=False)
    with pytest.raises(ImportError, match="tested with trl>=1.16.0,<1.17.0"):
        nsr.check_trl_version()
    monkeypatch.setenv("NEGALIGN_ALLOW_UNTESTED_TRL", "1")
    nsr.check_trl_version()


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml")
                                          if p.stem.split("_")[0] in ("nsr", "psr", "w", "nft", "grpo", "reinforce")))
def test_rlvr_recipes_dry_run(recipe, capsys, monkeypatch):
    """Every RLVR recipe validates and resolves into its config without downloading anything (`--dry-run`)."""
    from negalign.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    assert main(["train", recipe, "--dry-run"]) == 0
    assert "resolved into" in capsys.readouterr().out
