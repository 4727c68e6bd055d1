"""NFT — Negative-aware Fine-Tuning (Chen et al. 2025, arXiv:2505.18116) on TRL's GRPOTrainer.

Rollouts, rewards and logging are TRL's. ``NFTTrainer`` changes two things:

1. **Dynamic filtering that refills.** After scoring a generation batch, prompts whose G responses are all correct
   or all wrong are dropped, and the trainer *generates more* until the batch holds as many informative groups as it
   was asked for, so every step trains on a full batch (DAPO-style dynamic sampling). Like the reference, which
   tops up from its *next* generation batches, the extra prompts are the next ones of a data stream in order (a
   seeded shuffle of the training set, walked without replacement, reshuffled when exhausted; its state is saved in
   checkpoints, so resume is exact). Kept groups are used in generation order, the surplus is cut.
   ``max_refill_rounds`` bounds the extra rounds; if they run out, the remaining slots keep filtered groups with zero
   loss weight (counted in ``nft/unfilled_groups``), outside the token-mean denominator, so shapes stay fixed.
2. **The loss** (``negalign.losses.nft_loss``): per prompt ``r̂ = mean(r)`` over its group, clamped to
   ``[rhat_min, rhat_max]`` = [0.02, 0.98]; correct tokens ``-log max_g(R_t, ε_pos)``, incorrect tokens
   ``-log max_g((1 - r̂ R_t)/(1 - r̂), ε_neg)`` with ``R_t = π_θ/π_old`` (ratio capped at e^10), each response weighted
   by ``ω(r̂)`` (``one_minus_r`` = 1 - r̂, ``sqrt`` = √((1-r̂)/r̂), or ``one``), reduced either as in the reference code
   (``sum_const``: token sums summed over the batch and divided by ``loss_constant`` = 1000) or as a token-mean.

On-policy (π_θ = π_old) the NFT gradient with ω = 1 - r̂ is the Dr. GRPO gradient with ``A = r - r̂`` (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from negalign.losses import NFT_OMEGAS, nft_loss, nft_prompt_weight
from negalign.trainers import compat
from negalign.trainers.common import train_and_finish
from negalign.trainers.nsr import RLVRMixin, build_trainer

compat.check("trl.GRPOTrainer", "transformers.Trainer")  # private GRPOTrainer methods overridden below

REDUCTIONS = ("sum_const", "token_mean")


@dataclass
class NFTConfig(GRPOConfig):
    """``trl.GRPOConfig`` plus NFT's hyper-parameters (the recipe's ``method:`` keys)."""

    omega: str = field(default="one_minus_r", metadata={"help": "Prompt weight ω(r̂): one_minus_r (1 - r̂, "
                       "the reference), sqrt (sqrt((1-r̂)/r̂)) or one."})
    reduction: str = field(default="sum_const", metadata={"help": "sum_const: per-sequence token sums, summed over "
                           "the batch, divided by loss_constant (the reference code); token_mean: mean over tokens."})
    loss_constant: float = field(default=1000.0, metadata={"help": "Divisor of the sum_const reduction (1000)."})
    rhat_min: float = field(default=0.02, metadata={"help": "Lower clamp of the group accuracy r̂."})
    rhat_max: float = field(default=0.98, metadata={"help": "Upper clamp of the group accuracy r̂."})
    eps_pos: float = field(default=0.0, metadata={"help": "ε_pos of the straight-through clamp on correct tokens."})
    eps_neg: float = field(default=1.0, metadata={"help": "ε_neg of the straight-through clamp on incorrect tokens."})
    dynamic_filtering: bool = field(default=True, metadata={"help": "Drop all-correct / all-wrong groups and "
                                    "generate more prompts until the batch is full again."})
    max_refill_rounds: int = field(default=8, metadata={"help": "Most extra generation rounds per batch when "
                                   "refilling; remaining slots keep filtered groups with zero weight."})
    reward: str = field(default="auto", metadata={"help": "Verifier used as the reward: auto (the data loader's "
                        "task), gsm8k, math or arith."})
    vllm_importance_sampling_correction: bool = field(
        default=False, metadata={"help": "TRL's vLLM sampler/trainer importance weights on NFT's per-token loss "
                                 "(TRL's default is True; the NFT reference has none). Turn on when vLLM's "
                                 "log-probs drift from the trainer's."})

    def __post_init__(self):
        super().__post_init__()
        if self.omega not in NFT_OMEGAS:
            raise ValueError(f"NFTConfig.omega must be one of {tuple(NFT_OMEGAS)}, got {self.omega!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"NFTConfig.reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if not 0.0 < self.rhat_min <= self.rhat_max < 1.0:
            raise ValueError(f"need 0 < rhat_min <= rhat_max < 1, got {self.rhat_min}, {self.rhat_max}")
        if self.beta != 0.0:
            raise ValueError(f"NFT uses no KL term and no reference model: set beta to 0 (got {self.beta})")


CONFIG_CLASS = NFTConfig
METHOD_DEFAULTS = {"nft": {"beta": 0.0}}

_LEFT_PADDED = {"prompt_ids", "prompt_mask"}
_PER_TOKEN = {"completion_ids", "completion_mask", "old_per_token_logps", "sampling_per_token_logps",
              "importance_sampling_ratio", "ref_per_token_logps", "tool_mask"}
_PER_ROW = {"advantages", "nft_correct", "nft_rhat", "nft_filled", "rlvr_keep"}


def _pad_cat(tensors: list[torch.Tensor], value, left: bool) -> torch.Tensor:
    width = max(t.size(1) for t in tensors)
    out = []
    for t in tensors:
        gap = width - t.size(1)
        if gap:
            pad = t.new_full((t.size(0), gap), value)
            t = torch.cat([pad, t], 1) if left else torch.cat([t, pad], 1)
        out.append(t)
    return torch.cat(out, 0)


class NFTTrainer(RLVRMixin, GRPOTrainer):
    """TRL's GRPOTrainer with NFT's refilling dynamic filter and implicit-negative-policy loss (module docstring)."""

    _tag_names = ["trl", "negalign", "nft"]
    _name = "NFT"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        local = self.args.per_device_train_batch_size * self.args.steps_per_generation
        if self.accelerator.num_processes > 1 and local % self.num_generations:
            raise ValueError(
                f"NFT's group filtering needs whole groups on every process: per_device_train_batch_size × "
                f"steps_per_generation ({local}) must be a multiple of num_generations ({self.num_generations})"
            )
        if self.args.dynamic_filtering and not hasattr(self.train_dataset, "__getitem__"):
            raise ValueError("NFT's refilling dynamic filter draws extra prompts by index: use a map-style "
                             "datasets.Dataset, or set dynamic_filtering=False for a streaming dataset")
        self._refill = RefillStream(len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else 0,
                                    self.args.seed + 7919 * self.accelerator.process_index)

    def _rollout_state(self) -> dict:
        return {**super()._rollout_state(), "refill": self._refill.state_dict()}

    def _restore_rollout_state(self, state: dict) -> None:
        super()._restore_rollout_state(state)
        if "refill" in state:
            self._refill.load_state_dict(state["refill"])

    # --- scoring ---------------------------------------------------------------------------------------------------
    def _score(self, inputs, num_generations):
        """Generate + score ``inputs`` with TRL, then attach NFT's per-row fields. Returns (batch, group_keep [n])."""
        out = super()._generate_and_score_completions(inputs)
        _, rewards = self._last_rewards(len(inputs))
        correct = (torch.nan_to_num(rewards, nan=0.0) >= 0.5).float()
        groups = correct.view(-1, num_generations)
        raw = groups.mean(1)  # [n_groups]
        rhat = raw.clamp(self.args.rhat_min, self.args.rhat_max).repeat_interleave(num_generations)
        device = out["completion_ids"].device
        out["nft_correct"] = correct.to(device)
        out["nft_rhat"] = rhat.to(device)
        out["nft_filled"] = torch.ones_like(rhat, device=device)  # 1: a filled slot; 0: an unfilled one (no loss)
        out["rlvr_keep"] = torch.ones_like(rhat, device=device)
        out["advantages"] = (correct - raw.repeat_interleave(num_generations)).to(device)  # Dr. GRPO's A, for logs
        informative = (raw > 0) & (raw < 1)
        return out, informative

    def _refill_inputs(self, num_prompts: int, num_generations: int) -> list[dict]:
        return [self.train_dataset[i] for i in self._refill.take(num_prompts) for _ in range(num_generations)]

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        g = self.num_generations if mode == "train" else self.num_generations_eval
        if mode != "train" or not self.args.dynamic_filtering:
            out, _ = self._score(inputs, g)
            return out
        if any(k in inputs[0] for k in ("image", "images")):
            raise ValueError("NFT's dynamic filtering does not support multimodal inputs; set dynamic_filtering=False")
        need = len(inputs) // g
        batches, keeps = [], []
        out, keep = self._score(inputs, g)
        batches.append(out)
        keeps.append(keep)
        first_keep_rate = keep.float().mean().item()
        rounds = 0
        generated = need
        while True:
            have = int(sum(k.sum().item() for k in keeps))
            deficit = torch.tensor([max(need - have, 0)], device=self.accelerator.device)
            deficit = int(self.accelerator.gather(deficit).max().item())  # every process generates alike
            if deficit == 0 or rounds >= self.args.max_refill_rounds:
                break
            rate = max(sum(k.float().sum().item() for k in keeps) / max(generated, 1), 0.25)
            n_new = min(need, math.ceil(deficit / rate))
            out, keep = self._score(self._refill_inputs(n_new, g), g)
            batches.append(out)
            keeps.append(keep)
            generated += n_new
            rounds += 1
        batch = self._concat(batches)
        keep_all = torch.cat(keeps)
        order = torch.cat([torch.nonzero(keep_all).flatten(), torch.nonzero(~keep_all).flatten()])[:need]
        unfilled = int((~keep_all[order]).sum().item())
        rows = (order.unsqueeze(1) * g + torch.arange(g)).flatten().to(batch["completion_ids"].device)
        batch = self._select(batch, rows)
        if unfilled:
            batch["nft_filled"][-unfilled * g :] = 0.0
            batch["rlvr_keep"][-unfilled * g :] = 0.0
        loss_mask = batch["completion_mask"] * batch.get("tool_mask", 1) * batch["rlvr_keep"].unsqueeze(1)
        batch["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        self._metrics[mode]["nft/kept_group_frac_first_round"].append(first_keep_rate)
        self._metrics[mode]["nft/refill_rounds"].append(float(rounds))
        self._metrics[mode]["nft/generated_groups"].append(float(generated))
        self._metrics[mode]["nft/unfilled_groups"].append(float(unfilled))
        return batch

    def _concat(self, batches: list[dict]) -> dict:
        if len(batches) == 1:
            return dict(batches[0])
        pad_id = self._tokenizer.pad_token_id
        out = {}
        for key in batches[0]:
            vals = [b.get(key) for b in batches]
            if key == "num_items_in_batch":
                continue
            if any(v is None for v in vals):
                raise ValueError(f"cannot merge generation batches: {key!r} is missing from some of them")
            if key in _LEFT_PADDED:
                out[key] = _pad_cat(vals, pad_id if key == "prompt_ids" else 0, left=True)
            elif key in _PER_TOKEN:
                if vals[0].dim() == 2 and vals[0].size(1) == 1:  # sequence-level importance ratios [B, 1]
                    out[key] = torch.cat(vals, 0)
                else:
                    value = {"completion_ids": pad_id, "importance_sampling_ratio": 1.0}.get(key, 0)
                    out[key] = _pad_cat(vals, value, left=False)
            elif key in _PER_ROW:
                out[key] = torch.cat(vals, 0)
            else:
                raise ValueError(f"NFT's dynamic filtering cannot merge the batch field {key!r}")
        return out

    @staticmethod
    def _select(batch: dict, rows: torch.Tensor) -> dict:
        return {k: (v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()}

    # --- loss --------------------------------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        logps, entropies, mask = self._policy_logps(model, inputs)
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        rhat = inputs["nft_rhat"]
        per_token = nft_loss(logps, old, inputs["nft_correct"], rhat, mask, self.args.eps_pos, self.args.eps_neg)
        weight = nft_prompt_weight(rhat, self.args.omega) * inputs["nft_filled"]  # [B]
        per_token = per_token * weight.unsqueeze(-1)
        if self.args.vllm_importance_sampling_correction and "importance_sampling_ratio" in inputs:
            per_token = per_token * inputs["importance_sampling_ratio"]  # TRL's vLLM sampler/trainer correction
        if self.args.reduction == "sum_const":
            loss = (per_token * mask).sum() / self.args.loss_constant
        else:
            loss = (per_token * mask).sum() / self._token_mean_normalizer(inputs)
        self._metrics[mode]["policy_loss"].append(self.accelerator.gather(loss.detach()).mean().item())
        self._log_entropy(entropies, mask, mode)
        with torch.no_grad():
            log_ratio = ((logps - old) * mask).sum() / mask.sum().clamp(min=1.0)
            self._metrics[mode]["nft/mean_log_ratio"].append(self.accelerator.gather(log_ratio).mean().item())
            # share of tokens where a straight-through clamp binds (NFT's counterpart of PPO's clipped fraction)
            ratio = torch.exp((logps - old).clamp(max=10.0))
            right = inputs["nft_correct"].unsqueeze(-1).bool()
            neg = (1 - rhat.unsqueeze(-1) * ratio) / (1 - rhat.unsqueeze(-1))
            bound = torch.where(right, ratio < self.args.eps_pos, neg < self.args.eps_neg).float()
            totals = self.accelerator.reduce(torch.stack([(bound * mask).sum(), mask.sum().float()]), reduction="sum")
            self._metrics[mode]["nft/clamped_frac"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        return loss


class RefillStream:
    """Prompt indices for NFT's refills, in order: a seeded shuffle of ``range(n)`` walked without replacement and
    reshuffled when used up (the reference takes its next generation batches in data-loader order). The state is a
    plain dict, saved in checkpoints."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.pos = 0

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k and self.n:
            if self.pos >= len(self.order):
                self.order = torch.randperm(self.n, generator=self.generator).tolist()
                self.pos = 0
            step = min(k - len(out), len(self.order) - self.pos)
            out.extend(self.order[self.pos : self.pos + step])
            self.pos += step
        return out

    def state_dict(self) -> dict:
        return {"n": self.n, "generator": self.generator.get_state(), "order": list(self.order), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]
        self.generator.set_state(state["generator"])
        self.order = list(state["order"])
        self.pos = state["pos"]


def train(recipe) -> dict:
    return train_and_finish(build_trainer(recipe, trainer_cls=NFTTrainer), recipe)
