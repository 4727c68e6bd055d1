"""RLVR with constant per-response advantages: PSR / NSR / W-REINFORCE / REINFORCE (Zhu et al. 2025,
arXiv:2506.01347), and TRL's plain GRPO as the baseline (method ``grpo``).

Only the objective differs from GRPO. ``NSRTrainer`` subclasses TRL's ``GRPOTrainer`` and keeps its dataloader,
generation (HF ``generate`` or TRL's vLLM integration, colocate or server), reward calling and logging; it replaces

- the advantages: ``negalign.losses.nsr_advantages`` of the binary verifier reward, one constant per response,
  **no group baseline and no std scaling** (an all-wrong group keeps its −1s; GRPO gives it zero);
- the batch: ``psr`` / ``nsr`` *remove* the responses they drop (wrong ones for PSR, right ones for NSR) before the
  update, as the reference code's ``batch.subset`` does, so the token mean and the entropy bonus cover the kept
  responses only (``subset_dropped``; the rows are compacted, a few zero-weight filler rows keep shapes equal);
- the loss: ``negalign.losses.ppo_clip_loss`` (clip ε = 0.2) averaged over the kept tokens of the rollout batch
  (token-mean), minus ``entropy_coef`` × the mean token entropy; no KL term and no reference model.

Each rollout batch may feed several optimizer updates (TRL's ``steps_per_generation`` above
``gradient_accumulation_steps``; the recipes use the reference's four), so π_θ drifts from π_old and the clip binds;
``clip_ratio/region_mean`` logs the clipped share of tokens. A checkpoint taken inside a rollout buffer saves the
buffer (``rollout_state_<rank>.pt``), so resume is exact.

The ``grpo`` baseline is the paper's (KL 0.001 with the k3 / ``low_var_kl`` estimator, entropy 0.001, no vLLM
importance weights); ``grpo_trl`` is TRL's GRPO with TRL's defaults (no KL, no entropy, importance weights on).

Both trainers log ``timing/generation_share``: the share of each optimizer step's wall time spent generating.

The overridden methods are private to TRL and change between minor versions: this module is tested with TRL 1.16.x
and refuses other versions with a clear error (``NEGALIGN_ALLOW_UNTESTED_TRL=1`` skips the check at your own risk).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import torch
from packaging.version import Version
from trl import GRPOConfig, GRPOTrainer

from negalign.losses import NSR_MODES, masked_mean, nsr_advantages, ppo_clip_loss
from negalign.trainers import compat
from negalign.trainers.common import NonFiniteLossCallback, data_loader, model_and_tokenizer, peft_config, train_and_finish

SUBSET_MODES = ("psr", "nsr")  # the reference subsets the batch for these; w_reinforce / reinforce keep every row
TESTED_TRL = tuple(Version(v) for v in compat.TESTED["trl"])  # [low, high)
_PRIVATE_API = compat.PRIVATE_API["trl.GRPOTrainer"].names  # the private GRPOTrainer names overridden here
ROLLOUT_STATE = "rollout_state_{}.pt"  # per process, inside each checkpoint folder
_COMPAT = ("trl.GRPOTrainer", "transformers.Trainer")


def check_trl_version() -> None:
    """Raise ImportError unless the installed TRL is in the tested range and has the private methods overridden here
    (``negalign.trainers.compat``)."""
    compat.check(*_COMPAT)


compat.check(*_COMPAT)


@dataclass
class NSRConfig(GRPOConfig):
    """``trl.GRPOConfig`` plus the NSR-family hyper-parameters (the recipe's ``method:`` keys)."""

    mode: str = field(
        default="nsr",
        metadata={"help": "Advantage table: psr (+1 / 0), nsr (0 / -1), w_reinforce (+lam / -1), reinforce (+1 / -1) "
                  "for correct / incorrect responses; grpo = TRL's GRPO objective (group baseline) as a baseline. "
                  "Set by the method name."},
    )
    lam: float = field(default=0.1, metadata={"help": "λ: weight of correct responses in w_reinforce (paper: 0.1)."})
    epsilon: float = field(default=0.2, metadata={"help": "PPO clip range ε for the ratio π_θ/π_old (paper: 0.2)."})
    entropy_coef: float = field(
        default=0.001,
        metadata={"help": "Entropy bonus coefficient: loss -= coef * mean token entropy (paper: 0.001; 0 disables)."},
    )
    reward: str = field(
        default="auto",
        metadata={"help": "Verifier used as the reward: auto (the data loader's task), gsm8k, math or arith."},
    )
    subset_dropped: bool = field(
        default=True,
        metadata={"help": "psr / nsr: remove the dropped responses from the batch before the update, so the token "
                  "mean and the entropy bonus run over the kept responses only (the reference's batch.subset). "
                  "False keeps them with advantage 0 in the denominator and the entropy bonus."},
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={"help": "TRL's vLLM sampler/trainer importance weights on the per-token loss (TRL's default is "
                  "True; the reference code has none, so off here; grpo_trl turns it on). Useful when vLLM's "
                  "log-probs drift from the trainer's (bf16 sampling, long completions)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in (*NSR_MODES, "grpo"):
            raise ValueError(f"NSRConfig.mode must be one of {(*NSR_MODES, 'grpo')}, got {self.mode!r}")
        if self.mode != "grpo" and self.beta != 0.0:
            raise ValueError(f"{self.mode} uses no KL term and no reference model: set beta to 0 (got {self.beta})")


CONFIG_CLASS = NSRConfig
# grpo = the paper's GRPO run (RLVR-Decomposed run_qwen2.5-math-7b_grpo.sh: use_kl_loss, kl_loss_coef 0.001,
# kl_loss_type low_var_kl = TRL's k3 estimator, entropy_coeff 0.001, no importance weights); grpo_trl = TRL's defaults.
GRPO_PAPER = {"mode": "grpo", "beta": 0.001, "entropy_coef": 0.001, "vllm_importance_sampling_correction": False}
GRPO_TRL = {"mode": "grpo", "beta": 0.0, "entropy_coef": 0.0, "vllm_importance_sampling_correction": True}
METHOD_DEFAULTS = {
    **{m: {"mode": m, "beta": 0.0} for m in NSR_MODES},
    "grpo": GRPO_PAPER,
    "grpo_trl": GRPO_TRL,
}


class RLVRMixin:
    """Pieces shared by the negalign RLVR trainers (NSR, NFT, the GRPO baseline): version check, generation timing,
    reward capture, and the policy log-probs of a batch."""

    def __init__(self, *args, **kwargs):
        check_trl_version()
        super().__init__(*args, **kwargs)
        self._generation_time = 0.0
        self._window_time = 0.0
        self._last_rewards_per_func = None

    # --- exact resume inside a rollout buffer --------------------------------------------------------------------
    # TRL keeps one generation batch in ``_buffered_inputs`` for ``steps_per_generation`` micro-steps and counts them in
    # ``_step``; neither is checkpointed, so a resumed run regenerates (with the resumed weights as π_old) and restarts
    # the slice count at 0. Each process saves both (and subclass state: NFT's refill stream) next to its RNG state.
    def _rollout_state(self) -> dict:
        buffer = self._buffered_inputs
        if buffer is not None:
            buffer = [{k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
                      for b in buffer]
        return {"step": self._step, "buffer": buffer}

    def _restore_rollout_state(self, state: dict) -> None:
        self._step = int(state["step"])
        buffer = state["buffer"]
        if buffer is not None:
            device = self.accelerator.device
            buffer = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in buffer]
        self._buffered_inputs = buffer

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        torch.save(self._rollout_state(), os.path.join(folder, ROLLOUT_STATE.format(self.accelerator.process_index)))

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)  # called once when training resumes from ``checkpoint``
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, ROLLOUT_STATE.format(self.accelerator.process_index))
        if os.path.isfile(path):
            self._restore_rollout_state(torch.load(path, map_location="cpu", weights_only=False))
            return
        micro = self.state.global_step * self.args.gradient_accumulation_steps
        if micro % (self.args.steps_per_generation * self.num_iterations):
            raise RuntimeError(
                f"{checkpoint} was taken inside a rollout buffer (step {self.state.global_step} × "
                f"gradient_accumulation_steps {self.args.gradient_accumulation_steps} is not a multiple of "
                f"steps_per_generation × num_iterations = {self.args.steps_per_generation * self.num_iterations}) "
                f"and holds no {ROLLOUT_STATE.format(self.accelerator.process_index)} (written by negalign's "
                f"RLVR trainers), so it cannot resume exactly. Resume from a checkpoint at a buffer boundary."
            )
        self._step = micro  # at a boundary: the next micro-step generates, as in an uninterrupted run

    # --- timing: share of each optimizer step spent generating -----------------------------------------------------
    def _generate(self, prompts):
        start = time.perf_counter()
        try:
            return super()._generate(prompts)
        finally:
            self._generation_time += time.perf_counter() - start

    def training_step(self, model, inputs, num_items_in_batch):
        start = time.perf_counter()
        out = super().training_step(model, inputs, num_items_in_batch)  # TRL increments self._step
        self._window_time += time.perf_counter() - start
        if self._step % self.current_gradient_accumulation_steps == 0:
            share = self._generation_time / self._window_time if self._window_time > 0 else 0.0
            self._metrics["train"]["timing/generation_share"].append(min(share, 1.0))
            self._metrics["train"]["timing/generation_s"].append(self._generation_time)
            self._generation_time = 0.0
            self._window_time = 0.0
        return out

    # --- rewards ---------------------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func  # gathered over processes, [N_all, n_funcs]
        return rewards_per_func

    def _last_rewards(self, num_local: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(all-process rewards [N_all], this process's rewards [N_local]) of the last scored batch; NaN = unscorable."""
        rpf = self._last_rewards_per_func
        weights = self.reward_weights.to(rpf.device).unsqueeze(0)
        rewards = (rpf * weights).nansum(dim=1)
        rewards[torch.isnan(rpf).all(dim=1)] = float("nan")
        start = self.accelerator.process_index * num_local
        return rewards, rewards[start : start + num_local]

    def _replace_logged_advantages(self, advantages_all: torch.Tensor) -> None:
        logged = self._logs["advantages"]
        for _ in range(min(len(advantages_all), len(logged))):
            logged.pop()
        logged.extend(advantages_all.tolist())

    # --- log-probs -------------------------------------------------------------------------------------------------
    def _policy_logps(self, model, inputs):
        """Per-token log-probs ``[B, C]`` and entropies of the completion tokens, the loss mask, via TRL's forward."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        if "rlvr_keep" in inputs:  # filler rows (subset padding, NFT's unfilled slots) carry no loss and no entropy
            mask = mask * inputs["rlvr_keep"].unsqueeze(1).to(mask.dtype)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True
        )
        return logps, entropies, mask

    def _token_mean_normalizer(self, inputs) -> torch.Tensor:
        """Divisor giving a token-mean over the optimizer step's whole batch (all micro-batches and processes)."""
        mode = "train" if self.model.training else "eval"
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        return normalizer

    def _entropy_term(self, loss, entropies, mask, mode):
        coef = self.args.entropy_coef
        if coef:
            accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss - coef * masked_mean(entropies, mask) / accumulation
        return loss

    def _log_entropy(self, entropies, mask, mode):
        totals = self.accelerator.reduce(
            torch.stack([(entropies.detach() * mask).sum(), mask.sum().float()]), reduction="sum"
        )
        self._metrics[mode]["entropy"].append((totals[0] / totals[1].clamp(min=1.0)).item())


class NSRTrainer(RLVRMixin, GRPOTrainer):
    """TRL's GRPOTrainer with the NSR-family objective (see the module docstring). ``args.mode`` picks the table."""

    _tag_names = ["trl", "negalign", "nsr"]
    _name = "NSR"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.args, "mode", None) not in NSR_MODES:
            raise ValueError(f"NSRTrainer needs args.mode in {NSR_MODES}; use GRPOBaselineTrainer for grpo")

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        rewards_all, rewards = self._last_rewards(len(inputs))
        advantages = nsr_advantages(torch.nan_to_num(rewards, nan=0.0), self.args.mode, self.args.lam)
        advantages[torch.isnan(rewards)] = 0.0  # an unscorable completion teaches nothing
        out["advantages"] = advantages.to(out["completion_ids"].device)
        adv_all = nsr_advantages(torch.nan_to_num(rewards_all, nan=0.0), self.args.mode, self.args.lam)
        adv_all[torch.isnan(rewards_all)] = 0.0
        self._replace_logged_advantages(adv_all)
        g = self.num_generations if mode == "train" else self.num_generations_eval
        correct = (torch.nan_to_num(rewards_all, nan=0.0) >= 0.5).float()
        if correct.numel() % g == 0:
            groups = correct.view(-1, g).mean(1)
            self._metrics[mode]["nsr/frac_all_wrong_groups"].append((groups == 0).float().mean().item())
            self._metrics[mode]["nsr/frac_all_correct_groups"].append((groups == 1).float().mean().item())
        self._metrics[mode]["nsr/accuracy"].append(correct.mean().item())
        if self.args.mode in SUBSET_MODES and self.args.subset_dropped:
            finite = ~torch.isnan(rewards)
            right = torch.nan_to_num(rewards, nan=0.0) >= 0.5
            keep = finite & (right if self.args.mode == "psr" else ~right)
            out = self._subset(out, keep.to(out["completion_ids"].device), mode)
        return out

    def _subset(self, batch: dict, keep: torch.Tensor, mode: str) -> dict:
        """The reference's ``batch.subset(correct_idx / incorrect_idx)``: only the kept rows (in their order) stay.

        Every process needs the same number of rows per micro-step, each micro-step at least one: rows are padded to
        ``S × ceil(max_kept / S)`` (S = the micro-steps this batch feeds) with dropped rows marked ``rlvr_keep = 0``,
        and ``num_items_in_batch`` (the token-mean denominator) counts the kept tokens only."""
        slices = self.args.steps_per_generation if mode == "train" else 1
        kept = torch.nonzero(keep).flatten()
        dropped = torch.nonzero(~keep).flatten()
        most = int(self.accelerator.gather(torch.tensor([kept.numel()], device=keep.device)).max().item())
        rows = slices * max(1, math.ceil(most / slices))
        fill = dropped[: rows - kept.numel()]
        if kept.numel() + fill.numel() < rows:  # cannot happen with equal batches per process; stay safe
            fill = torch.cat([fill, dropped.new_zeros(rows - kept.numel() - fill.numel())])
        order = torch.cat([kept, fill])
        n = keep.numel()
        out = {k: (v[order] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.size(0) == n else v)
               for k, v in batch.items()}
        out["rlvr_keep"] = torch.cat([torch.ones(kept.numel()), torch.zeros(fill.numel())]).to(keep.device)
        loss_mask = out["completion_mask"] * out.get("tool_mask", 1) * out["rlvr_keep"].unsqueeze(1)
        out["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        self._metrics[mode]["nsr/kept_share"].append(
            self.accelerator.gather(torch.tensor([kept.numel() / max(n, 1)], device=keep.device)).mean().item())
        return out

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        logps, entropies, mask = self._policy_logps(model, inputs)
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        per_token = ppo_clip_loss(logps, old, inputs["advantages"], self.args.epsilon)  # [B, C]
        if self.args.vllm_importance_sampling_correction and "importance_sampling_ratio" in inputs:
            per_token = per_token * inputs["importance_sampling_ratio"]  # TRL's vLLM sampler/trainer correction
        loss = (per_token * mask).sum() / self._token_mean_normalizer(inputs)
        policy_loss = loss.detach()
        loss = self._entropy_term(loss, entropies, mask, mode)

        self._metrics[mode]["policy_loss"].append(self.accelerator.gather(policy_loss).mean().item())
        self._log_entropy(entropies, mask, mode)
        with torch.no_grad():
            ratio = torch.exp(logps - old)
            adv = inputs["advantages"].unsqueeze(-1)
            eps = self.args.epsilon
            clipped = (((ratio < 1 - eps) & (adv < 0)) | ((ratio > 1 + eps) & (adv > 0))).float()
            dev = (ratio - 1).abs()
            totals = self.accelerator.reduce(
                torch.stack([(clipped * mask).sum(), mask.sum().float(), (dev * mask).sum()]), reduction="sum")
            self._metrics[mode]["clip_ratio/region_mean"].append((totals[0] / totals[1].clamp(min=1.0)).item())
            self._metrics[mode]["ratio/mean_abs_dev"].append((totals[2] / totals[1].clamp(min=1.0)).item())
        return loss


class GRPOBaselineTrainer(RLVRMixin, GRPOTrainer):
    """TRL's GRPOTrainer unchanged (its own advantages and loss), plus the generation-time metric: the ``grpo``
    baseline of the NSR paper."""


def reward_for(config, loader):
    from negalign.rewards import reward_function

    task = config.reward if config.reward != "auto" else getattr(loader, "task", None)
    if task is None:
        from negalign.config import RecipeError

        raise RecipeError(f"data loader {type(loader).__name__} names no verifier; set method.reward "
                          f"(gsm8k, math or arith)")
    return reward_function(task)


def build_trainer(recipe, trainer_cls=None):
    """Model, data, reward and trainer for an RLVR recipe (shared with ``negalign.trainers.nft``)."""
    from negalign.config import RecipeError

    loader = data_loader(recipe)
    model, tokenizer, _ = model_and_tokenizer(recipe, loader)
    dataset = loader.load(tokenizer)
    config = recipe.build_config()
    name = recipe.method_name
    if name in NSR_MODES and config.mode != name:
        raise RecipeError(f"method.name is {name!r} but method.mode is {config.mode!r}; drop method.mode")
    if trainer_cls is None:
        trainer_cls = GRPOBaselineTrainer if config.mode == "grpo" else NSRTrainer
    return trainer_cls(
        model=model,
        reward_funcs=[reward_for(config, loader)],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(recipe),
        callbacks=[NonFiniteLossCallback()],
    )


def train(recipe) -> dict:
    return train_and_finish(build_trainer(recipe), recipe)
