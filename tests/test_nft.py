"""NFT on a real kit model: the on-policy gradient equals Dr. GRPO's, dynamic filtering refills, weights move."""

from __future__ import annotations

import pytest
import torch
from trl import GRPOConfig

from tests.test_nsr import (  # noqa: F401  (arith_kit is a fixture)
    G, GROUP_COMPLETIONS, arith_kit, batch_inputs, loss_grads, make_trainer, tiny_dataset,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread

B_PROMPTS = 2
MAX_LEN = 8


def test_nft_gradient_equals_dr_grpo_on_policy(arith_kit, tmp_path):
    """Same model, same fixed batch (two mixed groups, r̂ = 1/2): NFT with ω = 1 - r̂ and the sum / constant reduction
    has the gradient of TRL's GRPOTrainer with loss_type='dr_grpo', scale_rewards='none' (A = r - r̂), whose
    normaliser is B × max_completion_length, once NFT's constant is set to that same number."""
    from trl import GRPOTrainer

    from negalign.trainers.nft import NFTConfig, NFTTrainer

    ds = tiny_dataset(("mixed", "mixed"))
    rows = B_PROMPTS * G
    nft = make_trainer(NFTTrainer, NFTConfig, arith_kit, tmp_path / "nft", ds, reduction="sum_const",
                       loss_constant=float(rows * MAX_LEN), max_completion_length=MAX_LEN)
    drg = make_trainer(GRPOTrainer, GRPOConfig, arith_kit, tmp_path / "drg", ds, loss_type="dr_grpo",
                       scale_rewards="none", beta=0.0, max_completion_length=MAX_LEN)
    nb = nft._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    db = drg._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    assert torch.equal(nb["completion_ids"], db["completion_ids"])
    assert nb["nft_rhat"].tolist() == [0.5] * rows
    torch.testing.assert_close(nb["advantages"], db["advantages"])  # r - r̂, no std scaling
    _, g_nft = loss_grads(nft, nb)
    _, g_drg = loss_grads(drg, db)
    assert g_nft.keys() == g_drg.keys() and g_nft
    for name in g_nft:
        torch.testing.assert_close(g_nft[name], g_drg[name], rtol=1e-4, atol=1e-7)


def test_dynamic_filtering_refills_the_batch(arith_kit, tmp_path):
    """The batch asks for 2 groups; one is all-correct ('easy'), so it is dropped and the trainer generates more
    prompts from the training set until it again holds 2 informative groups."""
    from negalign.trainers.nft import NFTConfig, NFTTrainer

    ds = tiny_dataset(("easy", "mixed", "hard", "mixed", "mixed", "easy"))
    tr = make_trainer(NFTTrainer, NFTConfig, arith_kit, tmp_path, ds)
    out = tr._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    assert out["completion_ids"].shape[0] == B_PROMPTS * G  # same size as asked: refilled, not shrunk
    assert torch.all(out["nft_weight"] == 1)
    rhat = out["nft_rhat"].view(-1, G)[:, 0]
    assert torch.all(rhat == 0.5)  # only informative (mixed) groups remain
    assert tr._metrics["train"]["nft/refill_rounds"][-1] >= 1
    assert tr._metrics["train"]["nft/generated_groups"][-1] > B_PROMPTS
    assert tr._metrics["train"]["nft/unfilled_groups"][-1] == 0
    # the merged batch is consistent: the number of loss tokens is recomputed for the kept rows
    assert out["num_items_in_batch"].item() == out["completion_mask"].sum().item()
    expected = [GROUP_COMPLETIONS[i % G].startswith("1") for i in range(B_PROMPTS * G)]
    assert out["nft_correct"].bool().tolist() == expected


def test_dynamic_filtering_gives_up_with_zero_weight_slots(arith_kit, tmp_path):
    """Only uninformative prompts and no refill rounds: the slot stays filled with a zero-weight group, shapes fixed."""
    from negalign.trainers.nft import NFTConfig, NFTTrainer

    ds = tiny_dataset(("easy", "hard"))
    tr = make_trainer(NFTTrainer, NFTConfig, arith_kit, tmp_path, ds, max_refill_rounds=0)
    out = tr._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    assert out["completion_ids"].shape[0] == B_PROMPTS * G
    assert torch.all(out["nft_weight"] == 0)
    _, grads = loss_grads(tr, out)
    assert all(torch.all(g == 0) for g in grads.values())


def test_nft_reductions_and_omegas(arith_kit, tmp_path):
    """token_mean divides the same weighted token sum by the token count instead of the constant; ω options differ."""
    from negalign.trainers.nft import NFTConfig, NFTTrainer

    ds = tiny_dataset(("mixed", "mixed"))
    norms = {}
    for name, kw in {"sum": dict(reduction="sum_const", loss_constant=1.0), "mean": dict(reduction="token_mean"),
                     "one": dict(reduction="sum_const", loss_constant=1.0, omega="one")}.items():
        tr = make_trainer(NFTTrainer, NFTConfig, arith_kit, tmp_path / name, ds, **kw)
        batch = tr._generate_and_score_completions(batch_inputs(ds, [0, 1]))
        tokens = batch["completion_mask"].sum().item()
        _, grads = loss_grads(tr, batch)
        norms[name] = (sum(g.pow(2).sum() for g in grads.values()) ** 0.5).item(), tokens
    # sum / 1 vs sum / tokens: a factor of exactly the token count
    assert norms["sum"][0] / norms["mean"][0] == pytest.approx(norms["sum"][1], rel=1e-4)
    # ω = 1 - r̂ = 0.5 everywhere here, so ω = 1 doubles the gradient
    assert norms["one"][0] / norms["sum"][0] == pytest.approx(2.0, rel=1e-4)


def test_nft_config_validation():
    from negalign.trainers.nft import NFTConfig

    cfg = NFTConfig(output_dir="/tmp/x", use_cpu=True)
    assert (cfg.rhat_min, cfg.rhat_max, cfg.omega, cfg.reduction, cfg.loss_constant) == (0.02, 0.98, "one_minus_r",
                                                                                         "sum_const", 1000.0)
    for bad in (dict(omega="x"), dict(reduction="x"), dict(rhat_min=0.0), dict(beta=0.1)):
        with pytest.raises(ValueError):
            NFTConfig(output_dir="/tmp/x", use_cpu=True, **bad)


def test_nft_real_steps_change_the_weights(arith_kit, tmp_path):
    from negalign.trainers.nft import NFTConfig, NFTTrainer

    def parity_reward(completions, **kwargs):
        return [float(len(c if isinstance(c, str) else c[-1]["content"]) % 2 == 0) for c in completions]

    tr = make_trainer(NFTTrainer, NFTConfig, arith_kit, tmp_path, rollout=False, reward=parity_reward, max_steps=2,
                      max_completion_length=6, per_device_train_batch_size=4)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    assert any(not torch.equal(before[n], p.detach()) for n, p in tr.model.named_parameters())
    assert any("nft/refill_rounds" in h for h in tr.state.log_history)
