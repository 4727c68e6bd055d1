"""The RLVR trainers step for step with the authors' code (RLVR-Decomposed for PSR / NSR / GRPO, NVlabs NFT): the
batch subset, several updates per rollout, importance weights, the GRPO baseline, NFT's refill, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_nsr import (  # noqa: F401  (arith_kit is a fixture)
    G, GROUP_COMPLETIONS, arith_kit, batch_inputs, load_kit, loss_grads, make_trainer, tiny_dataset,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


def _token_logps_and_entropy(model, batch, rows):
    """Plain re-implementation: log-prob of each completion token and the entropy of the distribution it was drawn
    from, for the given rows, with the completion mask (prompts here have equal lengths: no left padding)."""
    ids = torch.cat([batch["prompt_ids"][rows], batch["completion_ids"][rows]], 1)
    am = torch.cat([batch["prompt_mask"][rows], batch["completion_mask"][rows]], 1)
    p = batch["prompt_ids"].size(1)
    logits = model(input_ids=ids, attention_mask=am).logits[:, p - 1 : -1].float()  # predicts the completion
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(-1, batch["completion_ids"][rows].unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent, batch["completion_mask"][rows].float()


@pytest.mark.parametrize("mode", ["psr", "nsr"])
def test_psr_nsr_drop_responses_from_the_batch(arith_kit, tmp_path, mode):
    """RLVR-Decomposed subsets the batch to the correct (PSR) or incorrect (NSR) responses before the update, so the
    token mean and the entropy bonus run over the kept responses only. The gradient on a fixed batch equals a plain
    -Σ_kept A·∇log π / (kept tokens) - coef·∇(mean entropy over kept tokens). (Before: dropped rows stayed with A = 0,
    in the denominator and in the entropy bonus.)"""
    from negalign.trainers.nsr import NSRConfig, NSRTrainer

    coef = 0.5  # large, so an entropy bonus over the wrong rows would show
    ds = tiny_dataset(("mixed", "mixed"))
    tr = make_trainer(NSRTrainer, NSRConfig, arith_kit, tmp_path, ds, mode=mode, entropy_coef=coef)
    batch = tr._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    # mixed groups: completions starting with "1" (positions 0 and 2 of each group) are right
    right = [GROUP_COMPLETIONS[i % G].startswith("1") for i in range(2 * G)]
    kept_rows = [i for i in range(2 * G) if right[i] == (mode == "psr")]
    assert batch["completion_ids"].size(0) == len(kept_rows)  # removed, not zero-weighted
    assert batch["num_items_in_batch"].item() == batch["completion_mask"].sum().item()
    _, grads = loss_grads(tr, batch)

    # the same rollout, unsubset, from a trainer that keeps every row: select the kept rows by position
    full = make_trainer(NSRTrainer, NSRConfig, arith_kit, tmp_path / "full", ds, mode=mode, entropy_coef=coef,
                        subset_dropped=False)
    fb = full._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    assert fb["completion_ids"].size(0) == 2 * G
    model = full.model
    model.zero_grad()
    lp, ent, m = _token_logps_and_entropy(model, fb, torch.tensor(kept_rows))
    adv = 1.0 if mode == "psr" else -1.0
    manual = -(adv * lp * m).sum() / m.sum() - coef * (ent * m).sum() / m.sum()
    manual.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6)


def test_psr_with_nothing_kept_gives_a_zero_step(arith_kit, tmp_path):
    """All answers wrong: PSR keeps no response; one filler row per micro-step (weight 0) keeps the shapes."""
    from negalign.trainers.nsr import NSRConfig, NSRTrainer

    ds = tiny_dataset(("hard", "hard"))
    tr = make_trainer(NSRTrainer, NSRConfig, arith_kit, tmp_path, ds, mode="psr", entropy_coef=0.5)
    batch = tr._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    assert batch["rlvr_keep"].tolist() == [0.0]
    _, grads = loss_grads(tr, batch)
    assert all(torch.all(g == 0) for g in grads.values())


def parity_reward(completions, **kwargs):  # about half of random completions are "right"
    return [float(len(c if isinstance(c, str) else c[-1]["content"]) % 2 == 0) for c in completions]


def test_recipes_run_several_updates_per_rollout():
    """Reference: NSR splits 1024 prompts into mini-batches of 256 (4 updates), NFT 512 into 32 (16 updates)."""
    from negalign.config import load_recipe

    for recipe, updates in [("nsr_math", 4), ("nsr_gsm8k", 4), ("w_reinforce_math", 4), ("w_reinforce_gsm8k", 4),
                            ("nft_math", 16), ("nft_gsm8k", 16)]:
        t = load_recipe(ROOT / "recipes" / f"{recipe}.yaml").training
        assert t["steps_per_generation"] == updates * t["gradient_accumulation_steps"], recipe


def test_clip_fires_with_several_updates_per_rollout(arith_kit, tmp_path):
    """Four optimizer updates per rollout: from the second update on π_θ ≠ π_old, the ratio leaves 1 and the clip
    binds on some tokens; the first update of a rollout is on-policy (ratio exactly 1)."""
    from negalign.trainers.nsr import NSRConfig, NSRTrainer

    tr = make_trainer(NSRTrainer, NSRConfig, arith_kit, tmp_path, tiny_dataset(("mixed",) * 16), rollout=False,
                      reward=parity_reward, mode="reinforce", entropy_coef=0.0, steps_per_generation=4,
                      per_device_train_batch_size=8, max_steps=4, learning_rate=5e-2, max_completion_length=6)
    tr.train()
    logs = [h for h in tr.state.log_history if "ratio/mean_abs_dev" in h]
    assert len(logs) == 4
    assert logs[0]["ratio/mean_abs_dev"] < 1e-5  # first update of the rollout: π_θ = π_old
    assert all(h["ratio/mean_abs_dev"] > 1e-3 for h in logs[1:])
    assert max(h["clip_ratio/region_mean"] for h in logs[1:]) > 0


def test_importance_sampling_correction_off_by_default_on_when_asked(arith_kit, tmp_path):
    """TRL turns its vLLM importance weights on by default; neither reference has them, so NSR / NFT / the paper's
    GRPO default to off, a recipe key turns them on, and only then do they scale the loss."""
    from negalign.config import load_recipe
    from negalign.trainers.nft import NFTConfig, NFTTrainer
    from negalign.trainers.nsr import NSRConfig, NSRTrainer

    assert NSRConfig(output_dir=str(tmp_path), use_cpu=True).vllm_importance_sampling_correction is False
    assert NFTConfig(output_dir=str(tmp_path), use_cpu=True).vllm_importance_sampling_correction is False
    for recipe in ("nsr_math", "nft_math"):
        assert load_recipe(ROOT / "recipes" / f"{recipe}.yaml").build_config().vllm_importance_sampling_correction \
            is False
        on = load_recipe(ROOT / "recipes" / f"{recipe}.yaml", ["method.vllm_importance_sampling_correction=true"])
        assert on.build_config().vllm_importance_sampling_correction is True

    ds = tiny_dataset(("mixed", "mixed"))
    for cls, cfg, kw in [(NSRTrainer, NSRConfig, dict(mode="w_reinforce", entropy_coef=0.0)),
                         (NFTTrainer, NFTConfig, {})]:
        norms = {}
        for flag in (False, True):
            tr = make_trainer(cls, cfg, arith_kit, tmp_path / f"{cls.__name__}{flag}", ds,
                              vllm_importance_sampling_correction=flag, **kw)
            batch = tr._generate_and_score_completions(batch_inputs(ds, [0, 1]))
            batch["importance_sampling_ratio"] = torch.full((batch["completion_ids"].size(0), 1), 0.5)
            _, grads = loss_grads(tr, batch)
            norms[flag] = sum(g.pow(2).sum() for g in grads.values()).sqrt().item()
        assert norms[True] == pytest.approx(0.5 * norms[False], rel=1e-4)  # on: weights 0.5 halve the gradient


def test_grpo_baseline_is_the_papers_and_trls_keeps_its_name():
    """RLVR-Decomposed's GRPO: use_kl_loss, kl_loss_coef 0.001, kl_loss_type low_var_kl (TRL's k3 estimator),
    entropy_coeff 0.001, token-mean, no importance weights. TRL's defaults stay available as grpo_trl."""
    from negalign.config import load_recipe

    paper = load_recipe(ROOT / "recipes/nsr_math.yaml", ["method.name=grpo"]).build_config()
    assert (paper.mode, paper.beta, paper.entropy_coef) == ("grpo", 0.001, 0.001)
    assert paper.vllm_importance_sampling_correction is False
    assert paper.loss_type == "dapo"  # TRL's token-mean over the step's tokens, verl's token-mean
    assert paper.scale_rewards == "group"  # GRPO's group std scaling
    trl_default = load_recipe(ROOT / "recipes/nsr_math.yaml", ["method.name=grpo_trl"]).build_config()
    assert (trl_default.mode, trl_default.beta, trl_default.entropy_coef) == ("grpo", 0.0, 0.0)
    assert trl_default.vllm_importance_sampling_correction is True


def test_grpo_kl_is_the_low_var_kl_estimator(arith_kit, tmp_path):
    """verl's low_var_kl is the k3 estimator exp(ref - logp) - (ref - logp) - 1; TRL's GRPO adds β times it per token
    (loss = token-mean of the policy term + β·k3). Checked on a fixed batch against the plain formula."""
    from negalign.trainers.nsr import GRPOBaselineTrainer, NSRConfig

    ds = tiny_dataset(("hard", "hard"))  # all wrong: GRPO's advantages are 0, only the KL term remains
    tr = make_trainer(GRPOBaselineTrainer, NSRConfig, arith_kit, tmp_path, ds, mode="grpo", beta=0.001,
                      entropy_coef=0.0)
    batch = tr._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    ref = batch["ref_per_token_logps"] - 0.3  # pretend the reference differs
    batch["ref_per_token_logps"] = ref
    loss, _ = loss_grads(tr, batch)
    lp, _, m = _token_logps_and_entropy(tr.model, batch, torch.arange(2 * G))
    d = ref - lp.detach()
    k3 = torch.exp(d) - d - 1
    assert loss.item() == pytest.approx((0.001 * k3 * m).sum().item() / m.sum().item(), rel=1e-4)
