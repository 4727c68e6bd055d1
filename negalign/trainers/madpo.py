"""MADPO — Margin-Adaptive DPO (2025), in two steps on TRL, plus plain DPO / IPO as baselines (SPEC §5).

Methods served by this module (``negalign.config.METHODS``):
    ``madpo_reward``  step 1: a reward model (sequence-classification head, one score) trained with TRL's RewardTrainer
                      on the recipe's preference pairs; saved to ``output.dir``.
    ``madpo``         step 2: the margins ``Δ = RM(x, y_w) - RM(x, y_l)`` are computed ONCE, batched, into a ``margin``
                      column; the per-instance weights ``w = madpo_weights(Δ; c_min, c_max, λ, τ)`` into a
                      ``madpo_weight`` column; then DPO is trained with ``L = mean(w · -log σ(β (h_w - h_l)))``
                      (``negalign.losses.madpo_loss``) by ``MADPOTrainer``, a DPOTrainer subclass. The weight
                      distribution is logged (``madpo_weights.json`` and per-step ``madpo/weight_*``).
    ``dpo``           TRL's DPOTrainer as it is (the baseline); ``training.loss_type: ipo`` gives IPO.

All three read the same recipe schema; ``madpo_reward`` and ``madpo`` use the same data section, so the reward model
sees exactly the pairs DPO is trained on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

import torch
from datasets import Dataset

from negalign.trainers import compat

# before the imports of TRL's private helpers below, so that a missing one is named with the tested range
compat.check("trl.DPOTrainer", "trl.data_utils", "trl.trainer.dpo_trainer", "transformers.Trainer")

from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer  # noqa: E402
from trl.data_utils import _tokenize  # noqa: E402
from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: E402

from negalign.data.batching import pad_sequences
from negalign.distributed import accelerator_available, process_state, run_sharded
from negalign.errors import DataError, RecipeError
from negalign.losses import madpo_loss, madpo_weights
from negalign.trainers.common import (
    NonFiniteLossCallback,
    data_loader,
    fused_sequence_logps,
    log_dpo_tokens,
    model_and_tokenizer,
    peft_config,
    precompute_dpo_reference,
    reference_model,
    train_and_finish,
)

_EXTRA_KEYS = ("margin", "madpo_weight")


@dataclass
class MADPOConfig(DPOConfig):
    """DPOConfig plus MADPO's hyper-parameters (recipe ``method:`` keys). Defaults are SPEC §5's."""

    beta: float = field(default=0.1, metadata={"help": "β of the DPO term (SPEC §5: 0.1)."})
    c_min: float = field(default=0.5, metadata={"help": "Smallest sharpness c, reached by pairs with a large |Δ| (0.5)."})
    c_max: float = field(default=2.0, metadata={"help": "Largest sharpness c, for pairs with a small |Δ| (2.0)."})
    margin_lambda: float = field(default=1.0, metadata={"help": "λ: steepness of c(|Δ|) around τ (1.0)."})
    margin_tau: float = field(
        default=math.log(999), metadata={"help": "τ: margin scale; pairs with Δ <= -τ get w = 1 (ln 999)."}
    )
    reward_model: str | None = field(
        default=None,
        metadata={"help": "madpo: folder of the step-1 reward model (the madpo_reward run's output dir). Not needed "
                          "when the data already has the margin column."},
    )
    margin_column: str = field(default="margin", metadata={"help": "Column holding precomputed margins Δ, if any."})
    reward_batch_size: int = field(default=16, metadata={"help": "Pairs per reward-model forward when computing Δ."})
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "madpo_reward: RewardConfig's reward-centring coefficient (None = off)."}
    )


CONFIG_CLASS = MADPOConfig
METHOD_DEFAULTS = {"madpo": {"precompute_ref_log_probs": True}, "dpo": {}, "madpo_reward": {}}


# ------------------------------------------------------------------------------------------------ margins (step 2a)


def _pair_ids(tokenizer, prompt: str, response: str) -> list[int]:
    """Token ids of prompt + response + EOS, as TRL's RewardTrainer tokenizes a non-conversational pair member."""
    eos = tokenizer.eos_token or ""
    text = prompt + response
    if eos and not text.endswith(eos):
        text += eos
    return _tokenize(tokenizer, text)["input_ids"]


@torch.no_grad()
def compute_margins(reward_model, tokenizer, dataset: Dataset, batch_size: int = 16, max_length: int | None = None,
                    progress: bool = False) -> list[float]:
    """``Δ = RM(x, y_w) - RM(x, y_l)`` for every row of ``dataset`` (``prompt``/``chosen``/``rejected`` text).

    One reward-model forward per batch of ``batch_size`` pairs (chosen and rejected in the same forward), no grad.
    Sequences are right-padded; the sequence-classification head scores the last non-pad token, as in training."""
    for col in ("prompt", "chosen", "rejected"):
        if col not in dataset.column_names:
            raise DataError(f"preference data lacks column {col!r}; it has {dataset.column_names}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    was_training = reward_model.training
    reward_model.eval()
    device = next(reward_model.parameters()).device
    out: list[float] = []
    rows = list(dataset)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(rows), batch_size), desc="reward margins", disable=not progress):
        chunk = rows[start : start + batch_size]
        seqs = [_pair_ids(tokenizer, r["prompt"], r["chosen"]) for r in chunk]
        seqs += [_pair_ids(tokenizer, r["prompt"], r["rejected"]) for r in chunk]
        if max_length is not None:
            seqs = [s[:max_length] for s in seqs]
        ids, am = pad_sequences(seqs, tokenizer.pad_token_id)
        scores = reward_model(input_ids=ids.to(device), attention_mask=am.to(device)).logits.squeeze(-1).float()
        chosen, rejected = scores.chunk(2)
        out.extend((chosen - rejected).cpu().tolist())
    reward_model.train(was_training)
    return out


def weight_summary(weights: torch.Tensor, margins: torch.Tensor) -> dict:
    """The distribution of MADPO weights (and margins) as plain numbers, for logs and results.json."""
    q = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    wq = torch.quantile(weights.float(), q).tolist()
    mq = torch.quantile(margins.float(), q).tolist()
    hist = torch.histc(weights.float(), bins=10, min=float(weights.min()), max=float(weights.max()) + 1e-9)
    return {
        "weight_quantiles": dict(zip(["min", "p10", "p25", "median", "p75", "p90", "max"], wq)),
        "weight_mean": weights.float().mean().item(),
        "frac_weight_above_1": (weights > 1 + 1e-6).float().mean().item(),
        "frac_weight_below_1": (weights < 1 - 1e-6).float().mean().item(),
        "weight_histogram": {"counts": hist.long().tolist(), "min": float(weights.min()), "max": float(weights.max())},
        "margin_quantiles": dict(zip(["min", "p10", "p25", "median", "p75", "p90", "max"], mq)),
        "frac_margin_negative": (margins < 0).float().mean().item(),
    }


# ------------------------------------------------------------------------------------------------ trainer (step 2b)


@dataclass
class MADPOCollator(DataCollatorForPreference):
    """TRL's preference collator, also passing the precomputed ``margin`` and ``madpo_weight`` of each pair."""

    def torch_call(self, examples):
        out = super().torch_call(examples)
        for key in _EXTRA_KEYS:
            if key in examples[0]:
                out[key] = torch.tensor([float(ex[key]) for ex in examples], dtype=torch.float32)
        return out


class MADPOTrainer(DPOTrainer):
    """DPO with MADPO's per-instance weights. ``train_dataset`` has ``prompt``/``chosen``/``rejected`` and either a
    margin column (``args.margin_column``) or a ``reward_model`` (+ ``reward_processing_class``) to compute it once."""

    _tag_names = ["trl", "madpo", "negalign"]

    def __init__(self, model, ref_model=None, args: MADPOConfig | None = None, train_dataset: Dataset | None = None,
                 processing_class=None, reward_model=None, reward_processing_class=None, peft_config=None,
                 callbacks=None, **kwargs):
        if args is None or not isinstance(args, MADPOConfig):
            raise TypeError("MADPOTrainer needs a MADPOConfig")
        if train_dataset is None:
            raise ValueError("train_dataset is required")
        args.precompute_ref_log_probs = True  # the reference log-probs are cached once too
        self.reward_forwards = 0
        if args.margin_column in train_dataset.column_names:
            margins = [float(m) for m in train_dataset[args.margin_column]]
            if args.margin_column != "margin":
                train_dataset = train_dataset.remove_columns(args.margin_column)
                if "margin" in train_dataset.column_names:
                    train_dataset = train_dataset.remove_columns("margin")
                train_dataset = train_dataset.add_column("margin", margins)
        else:
            if reward_model is None:
                raise RecipeError(
                    f"MADPO needs margins: give method.reward_model (the madpo_reward output folder) or data with a "
                    f"{args.margin_column!r} column"
                )
            rtok = reward_processing_class or processing_class
            counter = reward_model.register_forward_hook(lambda *a: setattr(self, "reward_forwards",
                                                                            self.reward_forwards + 1))
            try:  # each process scores its slice of the pairs; all receive the whole column
                margins = run_sharded(
                    lambda shard: compute_margins(reward_model, rtok, train_dataset.select(shard),
                                                  args.reward_batch_size, args.max_length,
                                                  progress=not args.disable_tqdm),
                    len(train_dataset),
                )
            finally:
                counter.remove()
            train_dataset = train_dataset.add_column("margin", margins)
        m = torch.tensor(margins, dtype=torch.float32)
        w = madpo_weights(m, c_min=args.c_min, c_max=args.c_max, lam=args.margin_lambda, tau=args.margin_tau)
        train_dataset = train_dataset.add_column("madpo_weight", w.tolist())
        self.weight_stats = weight_summary(w, m)
        if processing_class is not None and processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        collator = MADPOCollator(pad_token_id=processing_class.pad_token_id, max_length=args.max_length,
                                 truncation_mode=args.truncation_mode, pad_to_multiple_of=args.pad_to_multiple_of)
        super().__init__(model=model, ref_model=ref_model, args=args, data_collator=collator,
                         train_dataset=train_dataset, processing_class=processing_class, peft_config=peft_config,
                         callbacks=callbacks, **kwargs)
        if self.accelerator.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "madpo_weights.json"), "w") as f:
                json.dump(self.weight_stats, f, indent=1)
        q = self.weight_stats["weight_quantiles"]
        print(f"MADPO weights over {len(margins)} pairs: min {q['min']:.3f}  median {q['median']:.3f}  "
              f"max {q['max']:.3f}  mean {self.weight_stats['weight_mean']:.3f}  "
              f"(>1: {self.weight_stats['frac_weight_above_1']:.0%}, <1: {self.weight_stats['frac_weight_below_1']:.0%})")

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps",
                                       "ref_rejected_logps", *_EXTRA_KEYS]

    def _precompute_ref_logps(self, dataset, name, batch_size):
        return precompute_dpo_reference(self, dataset, batch_size)  # in memory, sharded across processes

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k not in _EXTRA_KEYS})

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        skip = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", *_EXTRA_KEYS}
        logps, outputs = fused_sequence_logps(model, inputs, skip)  # [2B]
        chosen, rejected = logps.chunk(2, dim=0)  # the collator stacks [chosen; rejected]
        ref_c, ref_r, w = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"], inputs["madpo_weight"]
        loss = madpo_loss(chosen, ref_c, rejected, ref_r, w, beta=self.beta).mean()

        with torch.no_grad():
            g = self.accelerator.gather_for_metrics
            met = self._metrics[mode]
            rc, rr = self.beta * (chosen - ref_c), self.beta * (rejected - ref_r)
            met["rewards/chosen"].append(g(rc).mean().item())
            met["rewards/rejected"].append(g(rr).mean().item())
            met["rewards/margins"].append(g(rc - rr).mean().item())
            met["rewards/accuracies"].append(g((rc > rr).float()).mean().item())
            met["logps/chosen"].append(g(chosen).mean().item())
            met["logps/rejected"].append(g(rejected).mean().item())
            ww = g(w)
            met["madpo/weight_mean"].append(ww.mean().item())
            met["madpo/weight_min"].append(ww.min().item())
            met["madpo/weight_max"].append(ww.max().item())
            met["madpo/rm_margin_mean"].append(g(inputs["margin"]).mean().item())
            log_dpo_tokens(self, inputs, met, mode)
        return (loss, outputs) if return_outputs else loss


# ------------------------------------------------------------------------------------------------ recipes


def _model_path(recipe, loader) -> str:
    """The folder (or Hub id) of the recipe's model; a kit model is built first."""
    kit = recipe.model.get("kit")
    if kit is None:
        from negalign.models import resolve_model

        return resolve_model(recipe.model["name_or_path"])  # an offline: name becomes its cached folder
    from negalign.models import build_kit_model

    kit = dict(kit)
    return build_kit_model(kit.pop("dir", "runs/kit"), loader.texts(), **kit)


def reward_config(recipe) -> RewardConfig:
    """RewardConfig for step 1 from the recipe's ``training`` section (RewardConfig's names), CPU-friendly defaults."""
    valid = {f.name for f in dataclasses.fields(RewardConfig) if f.init}
    kwargs = {}
    for key, value in recipe.training.items():
        if key not in valid:
            raise RecipeError(f"training.{key} is a DPO option that madpo_reward (RewardConfig) does not take")
        kwargs[key] = value
    if recipe.method.get("center_rewards_coefficient") is not None:
        kwargs["center_rewards_coefficient"] = recipe.method["center_rewards_coefficient"]
    kwargs["output_dir"] = recipe.output_dir
    kwargs.setdefault("report_to", "none")
    if recipe.model.get("dtype") not in (None, "auto"):
        kwargs.setdefault("model_init_kwargs", {"dtype": recipe.model["dtype"]})
    if not accelerator_available():
        kwargs.setdefault("use_cpu", True)
        kwargs.setdefault("bf16", False)
    return RewardConfig(**kwargs)


def train_reward(recipe) -> dict:
    """Step 1: train the reward model with TRL's RewardTrainer on the recipe's preference pairs."""
    from transformers import AutoTokenizer

    loader = data_loader(recipe)
    path = _model_path(recipe, loader)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = loader.load(tokenizer)
    config = reward_config(recipe)
    peft = None
    if recipe.peft:
        from peft import LoraConfig

        peft = LoraConfig(**{"task_type": "SEQ_CLS", "modules_to_save": ["score"], **recipe.peft})
    trainer = RewardTrainer(model=path, args=config, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=peft, callbacks=[NonFiniteLossCallback()])
    metrics = train_and_finish(trainer, recipe, extra_metrics={"num_pairs": len(dataset)})
    accs = [h["accuracy"] for h in metrics.get("log_history", []) if "accuracy" in h]
    if accs:
        metrics["final_train_accuracy"] = accs[-1]
    return metrics


def load_reward_model(path: str, dtype=None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not os.path.exists(path) and not path.count("/") == 1:
        raise RecipeError(f"reward model {path!r} not found: train it first with a madpo_reward recipe")
    kwargs = {"num_labels": 1}
    if dtype is not None:
        kwargs["dtype"] = dtype
    from negalign.models import unsharded_loading

    with unsharded_loading():  # run locally on each process's slice of the pairs, also during a ZeRO-3 run
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def train(recipe) -> dict:
    method = recipe.method_name
    if method == "madpo_reward":
        return train_reward(recipe)
    loader = data_loader(recipe)
    model, tokenizer, _ = model_and_tokenizer(recipe, loader)
    dataset = loader.load(tokenizer)
    config = recipe.build_config()
    ref_model = reference_model(recipe, dtype=model.dtype)
    common = dict(model=model, ref_model=ref_model, args=config, train_dataset=dataset, processing_class=tokenizer,
                  peft_config=peft_config(recipe), callbacks=[NonFiniteLossCallback()])
    if method == "dpo":  # TRL's DPO as it is (loss_type sigmoid, ipo, ...): the baseline
        trainer = DPOTrainer(**common)
        return train_and_finish(trainer, recipe, extra_metrics={"loss_type": config.loss_type})
    rm, rtok = (None, None)
    if config.margin_column not in dataset.column_names:
        if not config.reward_model:
            raise RecipeError("madpo needs method.reward_model: the folder a madpo_reward recipe wrote")
        rm, rtok = load_reward_model(config.reward_model)
        rm.to(process_state().device)  # this process's GPU (or the CPU): the margins pass runs there
    trainer = MADPOTrainer(reward_model=rm, reward_processing_class=rtok, **common)
    del rm
    return train_and_finish(trainer, recipe, extra_metrics={"madpo_weights": trainer.weight_stats,
                                                            "reward_model_forwards": trainer.reward_forwards})
