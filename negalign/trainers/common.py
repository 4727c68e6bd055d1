"""Wiring shared by every trainer module: model/data from a recipe, PEFT, finishing a run (save, results, push)."""

from __future__ import annotations

import math
from pathlib import Path

from transformers import TrainerCallback

from negalign.data import LOADERS
from negalign.distributed import run_sharded
from negalign.models import load_model_and_tokenizer
from negalign.results import write_results


def data_loader(recipe):
    data = dict(recipe.data)
    name = data.pop("name")
    return LOADERS[name](**data)


def model_and_tokenizer(recipe, loader=None):
    loader = loader if loader is not None else (data_loader(recipe) if recipe.data else None)
    corpus = getattr(loader, "texts", None)
    return load_model_and_tokenizer(recipe.model, corpus=corpus)


def reference_model(recipe, dtype=None):
    """The recipe's ``model.ref_name_or_path`` loaded as a causal LM, or ``None`` (the trainer then uses the
    starting model, or the adapter-disabled base under PEFT)."""
    path = recipe.model.get("ref_name_or_path")
    if not path:
        return None
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")


def peft_config(recipe):
    if not recipe.peft:
        return None
    from peft import LoraConfig

    kwargs = {"task_type": "CAUSAL_LM", **recipe.peft}
    return LoraConfig(**kwargs)


class NonFiniteLossCallback(TrainerCallback):
    """Stop with a clear error when the logged loss is NaN or infinite (nothing is saved over the last checkpoint)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {loss} at step {state.global_step}; lower the learning rate or check the data. "
                f"The last good checkpoint (if any) is in {args.output_dir}; resume with training.resume_from_checkpoint."
            )


def train_and_finish(trainer, recipe, extra_metrics: dict | None = None, resume=None) -> dict:
    """Run ``trainer.train()``, save the model, write results.json, push if asked. Returns the metrics."""
    resume = resume if resume is not None else recipe.training.get("resume_from_checkpoint")
    out = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(out.metrics)
    metrics["log_history"] = trainer.state.log_history
    if extra_metrics:
        metrics.update(extra_metrics)
    metrics["world_size"] = trainer.accelerator.num_processes
    plugin = trainer.accelerator.state.deepspeed_plugin
    metrics["deepspeed_zero_stage"] = plugin.zero_stage if getattr(trainer, "is_deepspeed_enabled", False) else None
    trainer.save_model(recipe.output_dir)
    if trainer.accelerator.is_main_process:
        tok = getattr(trainer, "processing_class", None)
        if tok is not None:
            tok.save_pretrained(recipe.output_dir)
        write_results(recipe.output_dir, metrics, recipe=recipe.to_dict(), method=recipe.method_name)
        if recipe.output.get("push_to_hub"):
            from negalign.hub import push

            push(recipe.output_dir, repo_id=recipe.output["repo_id"], private=bool(recipe.output.get("private")))
    return metrics


def dpo_reference_scorer(trainer):
    """The model a ``DPOTrainer`` subclass scores reference log-probs with: its reference model, else the policy (with
    PEFT, ``compute_ref_log_probs`` turns the adapters off). Before training under DeepSpeed the policy is not yet an
    engine (under ZeRO-3 its weights are sharded), so it is scored through an inference engine, built once, as
    TRL's own precompute does."""
    if trainer.ref_model is None and trainer.is_deepspeed_enabled and not trainer.is_in_train:
        from trl.models.utils import prepare_deepspeed

        if trainer._precompute_engine is None:
            trainer._precompute_engine = prepare_deepspeed(trainer.model, trainer.accelerator)
        return trainer._precompute_engine
    return trainer.ref_model or trainer.model


def precompute_dpo_reference(trainer, dataset, batch_size: int):
    """``DPOTrainer``'s reference precompute (``ref_chosen_logps`` / ``ref_rejected_logps`` columns), sharded with
    ``run_sharded`` and kept in memory. TRL's own version writes a cache file named after the dataset's cache folder,
    which for an in-memory dataset (``Dataset.from_list``, ``add_column``) is a temporary folder of each process: under
    several processes rank 0 writes it where the others cannot read it. The DPO-based trainers override
    ``_precompute_ref_logps`` with this."""
    import torch
    from tqdm.auto import tqdm

    model = dpo_reference_scorer(trainer)
    device = trainer.accelerator.device

    def score(shard: list[int]) -> list[tuple[float, float]]:
        out = []
        for start in tqdm(range(0, len(shard), batch_size), desc="Reference log-probs",
                          disable=not trainer.accelerator.is_local_main_process):
            batch = trainer.data_collator([dataset[i] for i in shard[start : start + batch_size]])
            batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
            chosen, rejected = trainer.compute_ref_log_probs(model, batch)  # [b], [b]
            out.extend(zip(chosen.float().cpu().tolist(), rejected.float().cpu().tolist()))
        return out

    values = run_sharded(score, len(dataset))
    dataset = dataset.add_column("ref_chosen_logps", [v[0] for v in values])
    return dataset.add_column("ref_rejected_logps", [v[1] for v in values])


def ensure_dir(path) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
