"""Exact resume of the RLVR trainers: a run stopped at a checkpoint and resumed ends with the very weights of the run
that was never stopped, also when the checkpoint falls inside a rollout buffer (several updates per rollout) and
when NFT's refills drew prompts before it."""

from __future__ import annotations

import pytest
import torch

from tests.test_nsr import arith_kit, make_trainer, tiny_dataset  # noqa: F401  (arith_kit is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


def easy_or_parity(completions, kind, **kwargs):
    """'easy' prompts are always right (NFT filters their groups and refills); others: even completion length."""
    return [1.0 if k == "easy" else float(len(c if isinstance(c, str) else c[-1]["content"]) % 2 == 0)
            for c, k in zip(completions, kind)]


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _run_and_resume(cls, config_cls, kit, tmp_path, dataset, checkpoint_step, **kw):
    """(weights of an uninterrupted run, weights of a fresh trainer resumed from its checkpoint-<step>)."""
    args = dict(rollout=False, reward=easy_or_parity, save_strategy="steps", save_steps=1, max_completion_length=5,
                learning_rate=5e-2, **kw)
    full = make_trainer(cls, config_cls, kit, tmp_path / "run", dataset, **args)
    full.train()
    done = _weights(full.model)
    resumed = make_trainer(cls, config_cls, kit, tmp_path / "run", dataset, **args)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / f"checkpoint-{checkpoint_step}"))
    return done, _weights(resumed.model), full


def _assert_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_inside_a_rollout_buffer_is_exact(arith_kit, tmp_path):
    """Four updates per rollout, checkpoint after update 2 of the first rollout: TRL 1.16 keeps the rollout in memory
    only, so a resumed run used to regenerate it (new samples, π_old = the resumed weights) and restart the slice
    count. The buffer and the micro-step count are saved with the checkpoint, so the resumed run matches."""
    from negalign.trainers.nsr import NSRConfig, NSRTrainer

    ds = tiny_dataset(("mixed",) * 16)
    done, resumed, full = _run_and_resume(NSRTrainer, NSRConfig, arith_kit, tmp_path, ds, checkpoint_step=2,
                                          mode="reinforce", entropy_coef=0.0, per_device_train_batch_size=4,
                                          steps_per_generation=4, max_steps=6)
    _assert_equal(done, resumed)
    assert (tmp_path / "run" / "checkpoint-2" / "rollout_state_0.pt").is_file()
    assert any(h.get("ratio/mean_abs_dev", 0) > 0 for h in full.state.log_history)  # really off-policy updates


def test_resume_refuses_a_mid_buffer_checkpoint_without_its_buffer(arith_kit, tmp_path):
    """A checkpoint inside a buffer that lacks the saved buffer (e.g. written by plain TRL) cannot resume exactly: a
    clear error, not a silently different run."""
    from negalign.trainers.nsr import NSRConfig, NSRTrainer

    ds = tiny_dataset(("mixed",) * 16)
    args = dict(rollout=False, reward=easy_or_parity, save_strategy="steps", save_steps=1, max_completion_length=5,
                mode="reinforce", entropy_coef=0.0, per_device_train_batch_size=4, steps_per_generation=4,
                max_steps=2)
    tr = make_trainer(NSRTrainer, NSRConfig, arith_kit, tmp_path / "run", ds, **args)
    tr.train()
    (tmp_path / "run" / "checkpoint-2" / "rollout_state_0.pt").unlink()
    again = make_trainer(NSRTrainer, NSRConfig, arith_kit, tmp_path / "run", ds, **{**args, "max_steps": 4})
    with pytest.raises(RuntimeError, match="inside a rollout buffer"):
        again.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))


def test_nft_resume_is_exact_after_refills(arith_kit, tmp_path):
    """Every generation batch holds 'easy' prompts, whose groups NFT filters and refills from its prompt stream; the
    stream's position and generator are saved with the checkpoint (they used to be re-seeded at start-up, so a resumed
    run drew the first refills again)."""
    from negalign.trainers.nft import NFTConfig, NFTTrainer

    ds = tiny_dataset(("easy", "mixed") * 8)
    done, resumed, full = _run_and_resume(NFTTrainer, NFTConfig, arith_kit, tmp_path, ds, checkpoint_step=1,
                                          per_device_train_batch_size=8, max_steps=3, max_refill_rounds=2)
    _assert_equal(done, resumed)
    assert sum(h.get("nft/refill_rounds", 0) for h in full.state.log_history) >= 2  # refills happened
