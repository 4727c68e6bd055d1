"""Wiring shared by every trainer module: model/data from a recipe, PEFT, finishing a run (save, results, push)."""

from __future__ import annotations

from pathlib import Path

from negalign.data import LOADERS
from negalign.data.batching import completion_labels
from negalign.distributed import run_sharded
from negalign.models import load_model_and_tokenizer, load_reference_model
from negalign.results import write_results
from negalign.trainers import compat
from negalign.trainers.guard import NonFiniteGuard, resolve_checkpoint

# every trainer is a transformers Trainer: the guard wraps its private ``_get_grad_norm``, the RLVR and unlearning
# trainers extend ``_save_checkpoint`` (the full list: negalign.trainers.compat)
compat.check("transformers.Trainer")


def data_loader(recipe):
    data = dict(recipe.data)
    name = data.pop("name")
    return LOADERS[name](**data)


def model_and_tokenizer(recipe, loader=None):
    loader = loader if loader is not None else (data_loader(recipe) if recipe.data else None)
    corpus = getattr(loader, "texts", None)
    return load_model_and_tokenizer(recipe.model, corpus=corpus)


def reference_model(recipe, dtype=None):
    """The recipe's ``model.ref_name_or_path`` as a causal LM, or ``None`` (the trainer then uses the starting model,
    or the adapter-disabled base under PEFT): ``negalign.models.load_reference_model``, the one loader every trainer
    uses."""
    return load_reference_model(recipe.model, dtype)


def peft_config(recipe):
    if not recipe.peft:
        return None
    from peft import LoraConfig

    kwargs = {"task_type": "CAUSAL_LM", **recipe.peft}
    return LoraConfig(**kwargs)


# the trainers pass one to their constructor; ``train_and_finish`` installs one where none was passed
NonFiniteLossCallback = NonFiniteGuard


def train_and_finish(trainer, recipe, extra_metrics: dict | None = None, resume=None) -> dict:
    """Run ``trainer.train()`` under the non-finite guard (``negalign.trainers.guard``), save the model, write
    results.json, push if asked. Returns the metrics; after a resume ``train_loss`` covers the whole run."""
    resume = resume if resume is not None else recipe.training.get("resume_from_checkpoint")
    guard = next((c for c in trainer.callback_handler.callbacks if isinstance(c, NonFiniteGuard)), None)
    if guard is None:
        guard = NonFiniteGuard()
        trainer.add_callback(guard)
    guard.attach(trainer, recipe)
    from negalign.hub import attach_to_trainer

    attach_to_trainer(trainer, recipe)  # negalign's model card (method, paper, data) wherever TRL writes its own
    checkpoint = resolve_checkpoint(resume, trainer.args.output_dir)
    restored = guard.restore(checkpoint) if checkpoint else False
    out = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(out.metrics)
    if restored and trainer.state.global_step > 0:
        # transformers averages over the steps of this call only
        steps_now = trainer.state.global_step - guard.prior_steps
        metrics["train_loss"] = (guard.prior_loss_sum + metrics["train_loss"] * steps_now) / trainer.state.global_step
        metrics["resumed_from_step"] = guard.prior_steps
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
        write_results(recipe.output_dir, metrics, recipe=recipe.to_dict(), method=recipe.method_name,
                      status="finished", error=None)
        if recipe.output.get("push_to_hub"):
            from negalign.hub import push

            push(recipe.output_dir, repo_id=recipe.output["repo_id"], private=bool(recipe.output.get("private")),
                 recipe=recipe.to_dict(), method=recipe.method_name)
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


def fused_sequence_logps(model, inputs: dict, skip) -> tuple:
    """Summed completion log-probs of each row of a DPO-style batch (``input_ids`` / ``attention_mask`` /
    ``completion_mask``, ``[N, L]``) through the fused LM head that ``DPOTrainer`` installs (per-token log-probs in
    tiles, never ``[N, L, V]`` logits): the numbers TRL's DPO loss uses. ``skip``: batch keys that are not model
    inputs. Returns ``(logps [N], outputs)``."""
    completion_mask = inputs["completion_mask"]  # [N, L]
    model_kwargs = {k: v for k, v in inputs.items() if k not in skip}
    model_kwargs["use_cache"] = False
    labels = completion_labels(inputs["input_ids"], completion_mask)  # [N, L], -100 off the completion
    outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
    seq_len = completion_mask.size(1) - 1
    return outputs.log_probs[:, -seq_len:].sum(dim=1), outputs  # [N]


def log_dpo_tokens(trainer, inputs: dict, metrics: dict, mode: str) -> None:
    """``DPOTrainer``'s ``num_tokens`` metric: the trained tokens so far, over all processes (TRL's private
    ``_total_train_tokens`` / ``_tp_size``, listed in ``negalign.trainers.compat``)."""
    if mode == "train":
        gathered = trainer.accelerator.gather_for_metrics(inputs["attention_mask"].sum())
        trainer._total_train_tokens += gathered.sum().item() // trainer._tp_size
    metrics["num_tokens"] = [trainer._total_train_tokens]


def ensure_dir(path) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
