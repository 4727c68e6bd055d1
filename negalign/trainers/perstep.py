"""Per-step negatives (Setlur et al. 2024, arXiv:2406.14532; SPEC.md §6) and their controls.

Start from an SFT policy π_sft (the recipe's ``model``) and a verifiable math set (``data``: ``gsm8k``, ``steparith``,
or any loader whose ``examples()`` give ``prompt`` / ``completion`` / ``answer``). Every method here first

1. samples ``samples_per_prompt`` solutions per training prompt from π_sft (``negalign.generation.generate``,
   cached in ``cache_dir/samples-*.jsonl``, resumable) and verifies them;
2. (``perstep_dpo``, ``perstep_awr``) estimates Monte-Carlo step values of those solutions with ``num_continuations``
   continuations per step prefix from π_sft (``negalign.stepvalues.estimate_step_values``, cached, resumable);

then trains one of:

- ``perstep_dpo``: DPO (TRL's DPOTrainer, π_sft the reference, its log-probs precomputed once) on
  (a correct solution of the same prompt, the incorrect solution's prefix up to and including its first pit). The
  rejected prefix gets no end-of-sequence token: it is a partial solution.
- ``dpo_full``: the same DPO on whole (correct, incorrect) pairs (``pair_mode=full``).
- ``perstep_awr``: ``-Σ_i w(A_i) · log π_θ(step_i | x, steps_<i)`` over π_sft's own solutions, each token weighted by
  its step's advantage ``A_i = Q_i - Q_{i-1}`` (``negalign.losses.step_weighted_nll``); ``linear`` weights by default.
- ``rft``: rejection fine-tuning, SFT (TRL's SFTTrainer) on the positives plus π_sft's own correct solutions.

The ``sft`` control on positives alone is ``negalign.trainers.sft``. ``method.prepare_only=true`` stops after steps 1–2
(the step-value pre-stage; rerunning resumes it).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from negalign.data.batching import pad_rows, right_pad
from negalign.data.steps import chat_prompt  # noqa: F401  (its home is negalign.data; re-exported here)
from negalign.distributed import process_state
from negalign.losses import masked_mean, step_weighted_nll, step_weights
from negalign.logprobs import token_logps
from negalign.trainers import compat
from negalign.trainers.common import (
    NonFiniteLossCallback,
    data_loader,
    ensure_dir,
    model_and_tokenizer,
    peft_config,
    precompute_dpo_reference,
    train_and_finish,
)

compat.check("trl.DPOTrainer", "transformers.Trainer")  # private DPOTrainer / Trainer methods overridden below

PAIR_MODES = ("first_pit", "full")
CHOSEN_SOURCES = ("self_then_gold", "self", "gold")


@dataclass
class PerStepConfig(DPOConfig):
    """DPOConfig plus the sampling, step-value and pairing settings of the per-step methods."""

    step_delimiter: str = field(default="\n", metadata={"help": "Text that ends a solution step (newline by default)."})
    answer_marker: str = field(default="####", metadata={"help": "Marks the final-answer line, kept as one unsplit step."})
    samples_per_prompt: int = field(default=4, metadata={"help": "Solutions sampled from π_sft per training prompt."})
    sample_temperature: float = field(default=1.0, metadata={"help": "Temperature of those samples."})
    num_continuations: int = field(default=5, metadata={"help": "M: Monte-Carlo continuations per step prefix."})
    value_estimator: str = field(default="max", metadata={"help": "Q_i from the continuations: max (any correct) or mean."})
    continuation_temperature: float = field(default=1.0, metadata={"help": "Temperature of the continuations."})
    max_new_tokens: int = field(default=256, metadata={"help": "Token budget of samples and continuations."})
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    generation_backend: str = field(default="auto", metadata={"help": "auto, hf or vllm (negalign.generation)."})
    vllm_gpu_memory_utilization: float = field(default=0.5, metadata={"help": "Share of GPU memory the vLLM engine "
                                               "may take (the policy trains on the same GPU afterwards)."})
    generation_seed: int = field(default=0, metadata={"help": "Seed of samples and continuations."})
    cache_dir: str | None = field(default=None, metadata={"help": "Samples and step values (default: <output_dir>/perstep_cache)."})
    value_responses: str = field(default="auto", metadata={"help": "Whose step values to estimate: auto (perstep_dpo: "
                                 "incorrect samples, perstep_awr: all), all, or incorrect."})
    prepare_only: bool = field(default=False, metadata={"help": "Stop after sampling and step values (the pre-stage)."})
    pair_mode: str = field(default="first_pit", metadata={"help": "DPO rejected side: first_pit (prefix through the first pit) or full."})
    chosen_source: str = field(default="self_then_gold", metadata={"help": "Chosen side: self_then_gold (own correct samples, "
                               "else the dataset solution), self or gold."})
    max_pairs_per_prompt: int = field(default=4, metadata={"help": "At most this many pairs (or AWR sequences) per prompt."})
    awr_weighting: str = field(default="linear", metadata={"help": "perstep_awr weights: linear (w = A_i) or exp (exp(A_i/awr_beta))."})
    awr_beta: float = field(default=1.0, metadata={"help": "Temperature of exp weighting."})
    awr_max_weight: float = field(default=20.0, metadata={"help": "Cap of exp weights."})
    awr_positive_weight: float = field(default=0.0, metadata={"help": "Weight of an extra NLL term on the dataset's positive solutions (0: off)."})
    rft_max_per_prompt: int = field(default=4, metadata={"help": "rft: distinct own correct samples kept per prompt."})
    rft_include_gold: bool = field(default=True, metadata={"help": "rft: also train on the dataset's positive solutions."})

    def __post_init__(self):
        super().__post_init__()
        choices = {"pair_mode": PAIR_MODES, "chosen_source": CHOSEN_SOURCES, "value_estimator": ("max", "mean"),
                   "awr_weighting": ("linear", "exp"), "value_responses": ("auto", "all", "incorrect"),
                   "generation_backend": ("auto", "hf", "vllm")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"method.{name} must be one of {valid}, got {getattr(self, name)!r}")
        if self.num_continuations < 1 or self.samples_per_prompt < 1:
            raise ValueError("method.num_continuations and method.samples_per_prompt must be >= 1")


CONFIG_CLASS = PerStepConfig
_COMMON = {"activation_checkpointing": False, "precompute_ref_log_probs": True}
METHOD_DEFAULTS = {
    "perstep_dpo": {**_COMMON, "pair_mode": "first_pit"},
    "dpo_full": {**_COMMON, "pair_mode": "full"},
    "perstep_awr": dict(_COMMON),
    "rft": dict(_COMMON),
}


# --------------------------------------------------------------------------------------------------------- data prep


def solution_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"]


def task_verifier(loader):
    """``verify(text, answer) -> bool`` for the loader's task (``negalign.rewards``)."""
    from negalign.rewards import VERIFIERS

    task = getattr(loader, "task", "gsm8k")
    if task not in VERIFIERS:
        raise ValueError(f"no verifier for task {task!r}")
    fn = VERIFIERS[task]
    return lambda text, answer: fn(text, answer).reward >= 1.0


class LazyEngine:
    """Builds the generation engine on first use (a fully cached run never loads vLLM / a second model copy)."""

    def __init__(self, model_path, backend, tokenizer, **engine_kwargs):
        self.model_path, self.backend, self.tokenizer, self.engine = model_path, backend, tokenizer, None
        self.engine_kwargs = engine_kwargs

    def sample(self, prompts, cfg, seed):
        if self.engine is None:
            from negalign.generation import make_engine

            kwargs = self.engine_kwargs if self.backend != "hf" else {}
            self.engine = make_engine(self.model_path, self.backend, self.tokenizer, **kwargs)
        return self.engine.sample(prompts, cfg, seed)

    def close(self):
        self.engine = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def sample_solutions(examples, tokenizer, engine, config, cache_dir: Path, verify) -> list[dict]:
    """π_sft's own solutions: ``samples_per_prompt`` per prompt, verified. One dict per sample."""
    from negalign.generation import generate_distributed

    prompts = [chat_prompt(e["prompt"], tokenizer) for e in examples]
    sampling = [config.samples_per_prompt, config.max_new_tokens, config.sample_temperature, config.generation_seed,
                config.generation_batch_size]
    path = cache_dir / f"samples-{_digest([prompts, sampling])}.jsonl"
    rows = generate_distributed(None, prompts, path, n=config.samples_per_prompt, max_new_tokens=config.max_new_tokens,
                                temperature=config.sample_temperature, seed=config.generation_seed,
                                batch_size=config.generation_batch_size, engine=engine)
    out = []
    for i, (e, row) in enumerate(zip(examples, rows)):
        for text in row["completions"]:
            out.append({"prompt_index": i, "prompt": row["prompt"], "response": text, "answer": str(e["answer"]),
                        "correct": verify(text, str(e["answer"]))})
    return out


def step_values_for(samples, engine, config, cache_dir: Path, verify, which: str = "incorrect") -> list[dict]:
    from negalign.stepvalues import estimate_step_values

    items = [s for s in samples if which == "all" or not s["correct"]]
    return estimate_step_values(
        items, verify, engine=engine, num_continuations=config.num_continuations, estimator=config.value_estimator,
        max_new_tokens=config.max_new_tokens, temperature=config.continuation_temperature,
        seed=config.generation_seed + 1, batch_size=config.generation_batch_size, delimiter=config.step_delimiter,
        answer_marker=config.answer_marker or None, cache_dir=cache_dir / f"values-{which}",
    )


def chosen_pool(examples, samples, source: str) -> dict[int, list[str]]:
    """Correct solutions per prompt index: own correct samples (distinct, in sampling order) and/or the gold one."""
    if source not in CHOSEN_SOURCES:
        raise ValueError(f"unknown chosen_source {source!r}; expected one of {CHOSEN_SOURCES}")
    pool: dict[int, list[str]] = {i: [] for i in range(len(examples))}
    if source in ("self_then_gold", "self"):
        for s in samples:
            if s["correct"] and s["response"] not in pool[s["prompt_index"]]:
                pool[s["prompt_index"]].append(s["response"])
    if source == "gold" or source == "self_then_gold":
        for i, e in enumerate(examples):
            if source == "gold" or not pool[i]:
                pool[i].append(solution_text(e["completion"]))
    return pool


def build_pairs(valued: list[dict], pool: dict[int, list[str]], eos: str, pair_mode: str,
                max_pairs_per_prompt: int) -> list[dict]:
    """DPO rows: chosen = a correct solution (+EOS); rejected = the incorrect prefix through the first pit, or whole.

    ``valued``: incorrect samples with ``steps`` and ``first_pit`` (``estimate_step_values`` rows; for ``full`` only
    ``response`` is needed). A rejected prefix that is shorter than the response carries no EOS."""
    if pair_mode not in PAIR_MODES:
        raise ValueError(f"unknown pair_mode {pair_mode!r}; expected one of {PAIR_MODES}")
    per_prompt: dict[int, int] = {}
    rows = []
    for v in valued:
        i = v["prompt_index"]
        if not pool.get(i) or per_prompt.get(i, 0) >= max_pairs_per_prompt:
            continue
        if pair_mode == "full":
            rejected, whole = v["response"], True
        else:
            if not v.get("steps"):
                continue
            k = v["first_pit"]
            rejected = "".join(v["steps"][: k + 1])
            whole = k + 1 == len(v["steps"])
        if not rejected.strip():
            continue
        chosen = pool[i][per_prompt.get(i, 0) % len(pool[i])]
        per_prompt[i] = per_prompt.get(i, 0) + 1
        rows.append({"prompt": v["prompt"], "chosen": chosen + eos, "rejected": rejected + (eos if whole else ""),
                     "rejected_eos": whole})
    return rows


def awr_rows(valued: list[dict], tokenizer, eos: str, max_per_prompt: int, extra_positive: list[dict] = (),
             positive_weight: float = 0.0) -> list[dict]:
    """Token ids and per-token advantages: every response token carries its step's ``A_i``; prompt tokens 0.

    ``valued``: ``estimate_step_values`` rows of π_sft's samples. ``extra_positive``: ``{prompt, response}`` dicts
    trained with the constant weight ``positive_weight`` (an NLL term on the dataset's positives)."""
    from negalign.stepvalues import step_token_index

    rows, per_prompt = [], {}
    for v in valued:
        i = v["prompt_index"]
        if not v["steps"] or per_prompt.get(i, 0) >= max_per_prompt:
            continue
        per_prompt[i] = per_prompt.get(i, 0) + 1
        # a sampled solution ends where the policy stopped: its EOS belongs to the last step
        ids, step_of, plen = step_token_index(tokenizer, v["prompt"], v["steps"], eos)
        adv = [0.0 if s < 0 else float(v["advantages"][s]) for s in step_of]
        rows.append({"input_ids": ids, "advantages": adv, "response_mask": [int(s >= 0) for s in step_of]})
    if positive_weight:
        for p in extra_positive:
            ids, step_of, plen = step_token_index(tokenizer, p["prompt"], [p["response"]], eos)
            rows.append({"input_ids": ids, "advantages": [0.0 if s < 0 else positive_weight for s in step_of],
                         "response_mask": [int(s >= 0) for s in step_of]})
    return rows


# ------------------------------------------------------------------------------------------------------- trainers


class PerStepDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer, except that a rejected *prefix* (``rejected_eos`` False) is not given an EOS token, and the
    reference log-probs of the in-memory pairs are precomputed sharded across processes."""

    def _precompute_ref_logps(self, dataset, name, batch_size):
        return precompute_dpo_reference(self, dataset, batch_size)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        flags = list(dataset["rejected_eos"]) if "rejected_eos" in dataset.column_names else None
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if flags is None:
            return dataset
        eos_id = self._tokenizer.eos_token_id

        def strip(example, idx):
            ids = example["rejected_ids"]
            if not flags[idx] and ids and ids[-1] == eos_id:
                ids = ids[:-1]
            return {"rejected_ids": ids}

        return dataset.map(strip, with_indices=True, desc=f"Un-terminating rejected prefixes ({dataset_name})")


class AWRCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows):
        ids, am, mask = pad_rows([(r["input_ids"], r["response_mask"]) for r in rows], self.pad_id)
        advantages = right_pad([r["advantages"] for r in rows], 0.0, ids.shape[1], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": am, "response_mask": mask, "advantages": advantages}


class PerStepAWRTrainer(Trainer):
    """Advantage-weighted log-likelihood with per-token step advantages. Gathers chunked log-probs and calls
    ``negalign.losses.step_weights`` / ``step_weighted_nll``; the loss is the token mean over the whole optimizer
    batch (every gradient-accumulation micro-batch on every process), as TRL's SFT loss is, so that a run on several
    processes or with accumulation takes the same steps as one process with the whole batch."""

    loss_is_scaled_for_ga = True  # normalized by the optimizer batch's token count below

    def _get_num_items_in_batch(self, batch_samples, device):
        # scored tokens (response tokens after the first position) of the micro-batches of this optimizer step,
        # summed over processes
        n = sum(b["response_mask"][:, 1:].sum() for b in batch_samples).to(device)
        return self.accelerator.gather(n).sum() if self.accelerator.num_processes > 1 else n

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask = inputs["response_mask"].clone()
        mask[:, 0] = 0
        logps = token_logps(model, inputs["input_ids"], inputs["attention_mask"], mask)  # [B, L]
        w = step_weights(inputs["advantages"], self.args.awr_weighting, self.args.awr_beta, self.args.awr_max_weight)
        per_token = step_weighted_nll(logps, w, mask)  # [B, L]
        if num_items_in_batch is None:  # evaluation: this batch's token mean
            loss = per_token.sum() / mask.sum().clamp(min=1)
        else:  # DDP / DeepSpeed average the processes' gradients, hence the factor num_processes
            loss = per_token.sum() * self.accelerator.num_processes / num_items_in_batch.clamp(min=1)
        if model.training:
            self._awr_log = {"awr/mean_weight": float(masked_mean(w, mask)), "awr/logp": float(masked_mean(logps.detach(), mask))}
        return (loss, {"logps": logps}) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if getattr(self, "_awr_log", None) and "loss" in logs:
            logs = {**logs, **self._awr_log}
        return super().log(logs, *args, **kwargs)


def _sft_config(recipe, config) -> SFTConfig:
    names = {f.name for f in dataclasses.fields(SFTConfig) if f.init}
    kw = {k: v for k, v in recipe.training.items() if k in names}
    kw.update(output_dir=config.output_dir, report_to="none", use_cpu=config.use_cpu, bf16=config.bf16,
              activation_checkpointing=config.activation_checkpointing, max_length=config.max_length)
    kw.setdefault("completion_only_loss", True)
    return SFTConfig(**kw)


# ----------------------------------------------------------------------------------------------------------- train


def prepare(recipe, config, loader, tokenizer, model_path):
    """Samples and (when needed) step values, cached under ``cache_dir``. Returns (examples, samples, valued, stats)."""
    method = recipe.method_name
    cache_dir = ensure_dir(config.cache_dir or Path(config.output_dir) / "perstep_cache")
    verify = task_verifier(loader)
    examples = loader.examples()
    engine = LazyEngine(model_path, config.generation_backend, tokenizer,
                        gpu_memory_utilization=config.vllm_gpu_memory_utilization)
    samples = sample_solutions(examples, tokenizer, engine, config, cache_dir, verify)
    stats = {"prompts": len(examples), "samples": len(samples),
             "sample_accuracy": sum(s["correct"] for s in samples) / max(len(samples), 1)}
    valued = None
    if method == "perstep_awr" or (method == "perstep_dpo" and config.pair_mode == "first_pit"):
        which = config.value_responses
        if which == "auto":
            which = "all" if method == "perstep_awr" else "incorrect"
        if which not in ("all", "incorrect"):
            raise ValueError(f"value_responses must be auto, all or incorrect, got {which!r}")
        valued = step_values_for(samples, engine, config, cache_dir, verify, which)
        neg = [v for v in valued if not v["correct"] and v["steps"]]
        if neg:
            stats["mean_steps_incorrect"] = sum(len(v["steps"]) for v in neg) / len(neg)
            stats["mean_first_pit"] = sum(v["first_pit"] for v in neg) / len(neg)
            stats["mean_q0"] = sum(v["values"][0] for v in valued) / len(valued)
    engine.close()
    if process_state().is_main_process:
        (cache_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    return examples, samples, valued, stats


def train(recipe) -> dict:
    method = recipe.method_name
    loader = data_loader(recipe)
    model, tokenizer, model_path = model_and_tokenizer(recipe, loader)
    config = recipe.build_config()
    if method == "dpo_full":
        config.pair_mode = "full"
    examples, samples, valued, stats = prepare(recipe, config, loader, tokenizer, model_path)
    if config.prepare_only:
        return {"prepared": True, **stats}
    from datasets import Dataset

    eos = tokenizer.eos_token
    callbacks = [NonFiniteLossCallback()]
    if method in ("perstep_dpo", "dpo_full"):
        pool = chosen_pool(examples, samples, config.chosen_source)
        if config.pair_mode == "first_pit":
            negatives = [v for v in valued if not v["correct"]]
        else:
            negatives = [s for s in samples if not s["correct"]]
        pairs = build_pairs(negatives, pool, eos, config.pair_mode, config.max_pairs_per_prompt)
        if not pairs:
            raise ValueError("no (correct, incorrect) pairs: π_sft got every training prompt right or wrong everywhere")
        stats["pairs"] = len(pairs)
        random.Random(config.seed).shuffle(pairs)
        trainer = PerStepDPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                                    processing_class=tokenizer, peft_config=peft_config(recipe), callbacks=callbacks)
    elif method == "perstep_awr":
        positives = [{"prompt": chat_prompt(e["prompt"], tokenizer), "response": solution_text(e["completion"])}
                     for e in examples]
        rows = awr_rows(valued, tokenizer, eos, config.max_pairs_per_prompt, positives, config.awr_positive_weight)
        if config.max_length:
            rows = [r for r in rows if len(r["input_ids"]) <= config.max_length]
        stats["sequences"] = len(rows)
        config.remove_unused_columns = False  # the collator needs the advantages and response mask columns
        random.Random(config.seed).shuffle(rows)
        if recipe.peft:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config(recipe))
        trainer = PerStepAWRTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                                    data_collator=AWRCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                                    callbacks=callbacks)
    elif method == "rft":
        pool = chosen_pool(examples, samples, "self")
        rows = []
        for i, e in enumerate(examples):
            own = pool[i][: config.rft_max_per_prompt]
            gold = [solution_text(e["completion"])] if config.rft_include_gold else []
            for text in gold + own:
                rows.append({"prompt": e["prompt"], "completion": [{"role": "assistant", "content": text}]}
                            if not isinstance(e["prompt"], str) else {"prompt": e["prompt"], "completion": text + eos})
        stats["rft_sequences"] = len(rows)
        stats["rft_own_correct"] = sum(min(len(v), config.rft_max_per_prompt) for v in pool.values())
        random.Random(config.seed).shuffle(rows)
        trainer = SFTTrainer(model=model, args=_sft_config(recipe, config), train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config(recipe), callbacks=callbacks)
    else:
        raise ValueError(f"negalign.trainers.perstep does not train method {method!r}")
    return train_and_finish(trainer, recipe, extra_metrics={"perstep": stats})
