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
    assert torch.all(out["nft_filled"] == 1)
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
    assert torch.all(out["nft_filled"] == 0)
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
    assert all(0.0 <= h["nft/clamped_frac"] <= 1.0 for h in tr.state.log_history if "nft/clamped_frac" in h)


def test_refill_takes_the_next_prompts_of_the_stream_in_order(arith_kit, tmp_path):
    """The reference tops a filtered batch up from its *next* generation batches: prompts in data order, none drawn
    twice. The refill stream walks a seeded shuffle of the training set without replacement (it used to draw random
    prompts with replacement), reshuffling only when used up; kept groups are used in generation order."""
    from negalign.trainers.nft import NFTConfig, NFTTrainer

    ds = tiny_dataset(("easy", "mixed", "hard", "mixed", "mixed", "easy"))
    tr = make_trainer(NFTTrainer, NFTConfig, arith_kit, tmp_path / "draws", ds)
    rows = tr._refill_inputs(len(ds), 1)  # one pass over the set: every prompt exactly once
    assert sorted(r["prompt"][0]["content"] for r in rows) == sorted(r["prompt"][0]["content"] for r in ds)

    from negalign.trainers.nft import RefillStream

    s = RefillStream(5, seed=3)
    first = s.take(3) + s.take(2)
    assert sorted(first) == list(range(5))  # one pass: every prompt once, in the stream's order
    again = RefillStream(5, seed=3)
    assert again.take(5) == first  # seeded
    second = s.take(5)
    assert sorted(second) == list(range(5))  # the next pass is a new shuffle of all of them

    tr = make_trainer(NFTTrainer, NFTConfig, arith_kit, tmp_path, ds)
    expected = RefillStream(len(ds), seed=0)  # the trainer's stream: seed + 7919 × process index
    drawn = []
    real = tr._refill.take

    def spy(k):
        out = real(k)
        drawn.extend(out)
        return out

    tr._refill.take = spy
    out = tr._generate_and_score_completions(batch_inputs(ds, [0, 1]))  # group 0 is 'easy': filtered
    assert drawn == expected.take(len(drawn))
    informative = [i for i in drawn if ds[i]["kind"] == "mixed"]
    # kept groups in generation order: the batch's own mixed group, then the first mixed refill
    assert out["prompt_ids"].shape[0] == B_PROMPTS * G
    tok = tr.processing_class
    second = tok.decode(out["prompt_ids"][G], skip_special_tokens=True)
    assert ds[informative[0]]["prompt"][0]["content"] in second


def test_unfilled_slots_stay_out_of_the_token_mean(arith_kit, tmp_path):
    """A filtered group that could not be refilled keeps its slot (shapes stay fixed) but not its tokens: the
    token-mean denominator counts the filled rows only (it used to count the unfilled ones too), so the gradient
    equals the one of the filled group alone."""
    from negalign.trainers.nft import NFTConfig, NFTTrainer

    ds = tiny_dataset(("mixed", "easy"))
    tr = make_trainer(NFTTrainer, NFTConfig, arith_kit, tmp_path / "both", ds, max_refill_rounds=0,
                      reduction="token_mean")
    out = tr._generate_and_score_completions(batch_inputs(ds, [0, 1]))
    assert out["nft_filled"].tolist() == [1.0] * G + [0.0] * G
    filled_tokens = out["completion_mask"][:G].sum().item()
    assert out["num_items_in_batch"].item() == filled_tokens
    _, g_both = loss_grads(tr, out)

    alone = make_trainer(NFTTrainer, NFTConfig, arith_kit, tmp_path / "alone", tiny_dataset(("mixed",)),
                         max_refill_rounds=0, reduction="token_mean", per_device_train_batch_size=G)
    one = alone._generate_and_score_completions(batch_inputs(ds, [0]))
    assert one["num_items_in_batch"].item() == filled_tokens
    _, g_alone = loss_grads(alone, one)
    for name in g_alone:
        torch.testing.assert_close(g_both[name], g_alone[name], rtol=1e-4, atol=1e-7)
