"""RLVR with constant per-response advantages: PSR / NSR / W-REINFORCE / REINFORCE (Zhu et al. 2025,
arXiv:2506.01347), and TRL's plain GRPO as the baseline (method ``grpo``).

Only the objective differs from GRPO. ``NSRTrainer`` subclasses TRL's ``GRPOTrainer`` and keeps its dataloader,
generation (HF ``generate`` or TRL's vLLM integration, colocate or server), reward calling and logging; it replaces

- the advantages: ``negalign.losses.nsr_advantages`` of the binary verifier reward, one constant per response,
  **no group baseline and no std scaling** (an all-wrong group keeps its −1s; GRPO gives it zero);
- the loss: ``negalign.losses.ppo_clip_loss`` (clip ε = 0.2) averaged over the tokens of the optimizer step's batch
  (token-mean), minus ``entropy_coef`` × the mean token entropy; no KL term and no reference model.

Both trainers log ``timing/generation_share``: the share of each optimizer step's wall time spent generating.

The overridden methods are private to TRL and change between minor versions: this module is tested with TRL 1.16.x
and refuses other versions with a clear error (``NEGALIGN_ALLOW_UNTESTED_TRL=1`` skips the check at your own risk).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
import trl
from packaging.version import Version
from trl import GRPOConfig, GRPOTrainer

from negalign.losses import NSR_MODES, masked_mean, nsr_advantages, ppo_clip_loss
from negalign.trainers.common import NonFiniteLossCallback, data_loader, model_and_tokenizer, peft_config, train_and_finish

TESTED_TRL = (Version("1.16.0"), Version("1.17.0"))  # [low, high)
_PRIVATE_API = ("_generate", "_generate_and_score_completions", "_calculate_rewards",
                "_get_per_token_logps_and_entropies", "_compute_loss")


def check_trl_version() -> None:
    """Raise ImportError unless the installed TRL is in the tested range and has the private methods overridden here."""
    if os.environ.get("NEGALIGN_ALLOW_UNTESTED_TRL") == "1":
        return
    v = Version(trl.__version__)
    if not (TESTED_TRL[0] <= v < TESTED_TRL[1]):
        raise ImportError(
            f"negalign's RLVR trainers (nsr, nft) override private methods of trl.GRPOTrainer and are tested with "
            f"trl>={TESTED_TRL[0]},<{TESTED_TRL[1]}; found trl {v}. Install a tested version "
            f"(pip install 'trl>={TESTED_TRL[0]},<{TESTED_TRL[1]}') or set NEGALIGN_ALLOW_UNTESTED_TRL=1 to try anyway."
        )
    missing = [name for name in _PRIVATE_API if not hasattr(GRPOTrainer, name)]
    if missing:
        raise ImportError(f"trl.GRPOTrainer {v} lacks {missing}, which negalign's RLVR trainers override")


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

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in (*NSR_MODES, "grpo"):
            raise ValueError(f"NSRConfig.mode must be one of {(*NSR_MODES, 'grpo')}, got {self.mode!r}")
        if self.mode != "grpo" and self.beta != 0.0:
            raise ValueError(f"{self.mode} uses no KL term and no reference model: set beta to 0 (got {self.beta})")


CONFIG_CLASS = NSRConfig
METHOD_DEFAULTS = {
    **{m: {"mode": m, "beta": 0.0} for m in NSR_MODES},
    "grpo": {"mode": "grpo", "entropy_coef": 0.0},
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
        return out

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        logps, entropies, mask = self._policy_logps(model, inputs)
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        per_token = ppo_clip_loss(logps, old, inputs["advantages"], self.args.epsilon)  # [B, C]
        if "importance_sampling_ratio" in inputs:  # TRL's vLLM sampler/trainer mismatch correction
            per_token = per_token * inputs["importance_sampling_ratio"]
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
            totals = self.accelerator.reduce(torch.stack([(clipped * mask).sum(), mask.sum().float()]), reduction="sum")
            self._metrics[mode]["clip_ratio/region_mean"].append((totals[0] / totals[1].clamp(min=1.0)).item())
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
