"""D²O — Distributional Dispreference Optimization (Duan et al. 2024, arXiv:2403.03419), as a TRL DPOTrainer subclass.

Data: prompts with a human-annotated **negative** only. Before training, K anchors ``y_1..y_K ~ π_ref(·|x)`` are
sampled once from the static reference through ``negalign.generation.generate`` (HF generate or vLLM; resumable JSONL
at ``anchors_path``), then the reference log-probs of every anchor and of the negative are computed once, batched, and
stored as dataset columns (``ref_anchor_logps`` ``[K]``, ``ref_rejected_logps``). Each step computes the policy
log-probs of the K anchors and the negative and calls ``negalign.losses.d2o_loss`` (SPEC §2):

    L = -log σ( (β/K)·Σ_i [log π_θ(y_i|x) - log π_ref(y_i|x)]  -  α·[log π_θ(y_l|x) - log π_ref(y_l|x)] )

Online option (``online_refresh_steps = N > 0``): every N optimizer steps the anchors are re-sampled from the current
policy π_θ, and the reference log-probs are recomputed for the new anchors only (the negative's never change).

Log-probs are gathered through the fused LM head that DPOTrainer installs on the model (per-token log-probs computed in
tiles, never a full ``[B, L, V]`` logits tensor), i.e. exactly the numbers TRL's DPO uses, through one forward of the
(possibly DDP-wrapped) model. With K = 1 and α = β the loss is therefore TRL's DPO sigmoid loss with the anchor as
chosen and the negative as rejected (checked in tests/test_d2o.py).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback

from negalign.trainers import compat

# before the imports of TRL's private helpers below, so that a missing one is named with the tested range
compat.check("trl.DPOTrainer", "trl.data_utils", "trl.models.utils", "transformers.Trainer",
             "transformers.PretrainedConfig")

from trl import DPOConfig, DPOTrainer  # noqa: E402
from trl.data_utils import _tokenize, common_prefix_length  # noqa: E402

from negalign.data import DataError
from negalign.data.batching import join, pad_rows, truncate
from negalign.distributed import run_sharded
from negalign.generation import check_generation_file, generate_distributed, make_engine, read_generations
from negalign.losses import d2o_loss
from negalign.trainers.common import (
    NonFiniteLossCallback,
    data_loader,
    dpo_reference_scorer,
    fused_sequence_logps,
    log_dpo_tokens,
    model_and_tokenizer,
    peft_config,
    reference_model,
    train_and_finish,
)

_NON_MODEL_KEYS = {"completion_mask", "ref_anchor_logps", "ref_rejected_logps", "index", "anchor_version"}


@dataclass
class D2OConfig(DPOConfig):
    """DPOConfig plus D²O's hyper-parameters (recipe ``method:`` keys). Defaults are the paper's."""

    beta: float = field(default=0.1, metadata={"help": "β: weight of the anchors' mean log-ratio (paper: 0.1)."})
    alpha: float = field(default=0.1, metadata={"help": "α: weight of the negative's log-ratio (paper: 0.1)."})
    num_anchors: int = field(
        default=11, metadata={"help": "K: self-generated anchors y_i ~ π_ref per prompt (paper: 11)."}
    )
    anchors_path: str | None = field(
        default=None,
        metadata={"help": "JSONL of anchors ({id, prompt, completions}, as `negalign generate` writes). Read when "
                          "complete, else generated/resumed there. Default: OUTPUT_DIR/anchors.jsonl."},
    )
    anchors_column: str = field(
        default="anchors", metadata={"help": "Dataset column holding ready anchors (a list per prompt); used when present."}
    )
    online_refresh_steps: int = field(
        default=0,
        metadata={"help": "Online D²O: re-sample the anchors from the current policy every N optimizer steps "
                          "(reference log-probs recomputed for the new anchors only). 0 = static anchors from π_ref."},
    )
    anchor_max_new_tokens: int = field(default=128, metadata={"help": "Anchor generation: max new tokens per anchor."})
    anchor_temperature: float = field(default=1.0, metadata={"help": "Anchor generation: sampling temperature."})
    anchor_top_p: float = field(default=1.0, metadata={"help": "Anchor generation: nucleus top-p."})
    anchor_seed: int = field(default=0, metadata={"help": "Anchor generation: seed (batch b uses seed + b)."})
    anchor_batch_size: int = field(default=16, metadata={"help": "Anchor generation: prompts per generation batch."})
    anchor_backend: str = field(
        default="auto", metadata={"help": "Anchor generation engine: auto (vLLM on GPU when installed), hf or vllm."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_anchors < 1:
            raise ValueError(f"num_anchors (K) must be >= 1, got {self.num_anchors}")
        if self.online_refresh_steps < 0:
            raise ValueError("online_refresh_steps must be >= 0")
        if self.ld_alpha is not None:
            raise ValueError("ld_alpha is a DPO-only option; D2O sums the log-probs of whole responses")
        # D²O always caches the reference log-probs once, before training (SPEC §2).
        self.precompute_ref_log_probs = True


@dataclass
class D2OCollator:
    """Pads a batch of D²O examples into one ``[B·(K+1), L]`` batch: the K anchors of each example (example-major),
    then the B negatives. Anchors of an example found in ``store`` (online refresh) replace the ones in the row."""

    pad_token_id: int
    max_length: int | None = None
    store: dict | None = None
    version: list | None = None  # one-element list: the store's version when collated

    def __call__(self, examples: list[dict]) -> dict:
        rows = []
        anchor_ref, have_ref = [], "ref_anchor_logps" in examples[0]
        for ex in examples:
            anchors, ref = ex["anchor_ids"], ex.get("ref_anchor_logps")
            if self.store is not None and ex.get("index") in self.store:
                anchors, ref = self.store[ex["index"]]
            rows.extend(join(ex["prompt_ids"], a) for a in anchors)
            if have_ref:
                anchor_ref.append(list(ref))
        rows.extend(join(ex["prompt_ids"], ex["rejected_ids"]) for ex in examples)
        ids, am, cm = pad_rows(truncate(rows, self.max_length), self.pad_token_id)
        out = {"input_ids": ids, "attention_mask": am, "completion_mask": cm}
        if have_ref:
            out["ref_anchor_logps"] = torch.tensor(anchor_ref, dtype=torch.float32)  # [B, K]
            out["ref_rejected_logps"] = torch.tensor([ex["ref_rejected_logps"] for ex in examples], dtype=torch.float32)
        if "index" in examples[0]:
            out["index"] = torch.tensor([ex["index"] for ex in examples])
        out["anchor_version"] = torch.tensor(self.version[0] if self.version else 0)
        return out


def anchors_from_file(path: str | os.PathLike, prompts: list[str], k: int, model=None) -> list[list[str]] | None:
    """The first K anchors per prompt from a generation file, or None when the file does not cover every prompt yet.

    Raises ``GenerationError`` when the file's header records another model than ``model`` (the anchors' source: a
    loaded model or its folder) or other prompts, as ``generate`` does when it resumes into the file; ``DataError``
    when a row holds another prompt or fewer than K samples."""
    p = Path(path)
    if not p.exists():
        return None
    rows = {r["id"]: r for r in read_generations(p)}
    if not all(i in rows for i in range(len(prompts))):
        return None  # incomplete: ``generate`` resumes it, after the same identity check
    check_generation_file(p, prompts, model=model)
    out = []
    for i, prompt in enumerate(prompts):
        row = rows[i]
        if row["prompt"] != prompt:
            raise DataError(f"anchors file {p} row {i} was generated for another prompt ({row['prompt'][:60]!r} vs "
                            f"{prompt[:60]!r}); point anchors_path elsewhere or delete the file")
        if len(row["completions"]) < k:
            raise DataError(f"K={k} anchors requested but the anchors file {p} holds only {len(row['completions'])} "
                            f"samples for prompt {i}; lower num_anchors or generate more "
                            f"(negalign generate --num-samples {k})")
        out.append(list(row["completions"][:k]))
    return out


class _OnlineRefresh(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        n = args.online_refresh_steps
        if n and state.global_step % n == 0 and state.global_step < state.max_steps:
            self.trainer.refresh_anchors()


class D2OTrainer(DPOTrainer):
    """D²O on TRL's DPOTrainer. ``train_dataset`` has ``prompt`` and ``rejected`` (the human negative) text columns and,
    optionally, an ``anchors`` column (a list of at least K responses per prompt); without it the anchors are sampled
    from the reference before training. Pass ``ref_model`` when the reference differs from the starting model."""

    _tag_names = ["trl", "d2o", "negalign"]

    def __init__(self, model, ref_model=None, args: D2OConfig | None = None, train_dataset: Dataset | None = None,
                 processing_class=None, peft_config=None, callbacks=None, **kwargs):
        if args is None or not isinstance(args, D2OConfig):
            raise TypeError("D2OTrainer needs a D2OConfig")
        if train_dataset is None:
            raise ValueError("train_dataset is required")
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
        if processing_class is None:
            raise ValueError("D2OTrainer needs processing_class (the tokenizer)")
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        for col in ("prompt", "rejected"):
            if col not in train_dataset.column_names:
                raise DataError(f"D2O data lacks column {col!r}; it has {train_dataset.column_names}")
        # The online variant needs the reference after training has started: keep a frozen copy (with PEFT, the
        # adapter-disabled model is the reference and no copy is needed).
        if args.online_refresh_steps and ref_model is None and peft_config is None and not _is_peft(model):
            ref_model = copy.deepcopy(model).eval()
        # Anchors y_i ~ π_ref: sampled once from the static reference, before anything is trained.
        self.anchor_generation_calls = 0
        train_dataset = self._attach_anchors(train_dataset, ref_model if ref_model is not None else model,
                                             processing_class, args)
        self._anchor_store: dict[int, tuple[list[list[int]], list[float]]] = {}
        self._anchor_version = [0]
        self.ref_logp_batches = 0  # reference forward passes (batches), for inspection and tests
        self.anchor_refreshes = 0
        self.refresh_prompts_sampled = 0  # by this process, over all refreshes
        self.run_info = {"anchors_path": self.anchors_path, "anchor_refreshes": 0}
        collator = D2OCollator(pad_token_id=processing_class.pad_token_id, max_length=args.max_length,
                               store=self._anchor_store, version=self._anchor_version)
        super().__init__(model=model, ref_model=ref_model, args=args, data_collator=collator,
                         train_dataset=train_dataset, processing_class=processing_class, peft_config=peft_config,
                         callbacks=callbacks, **kwargs)
        self.alpha = args.alpha
        self.num_anchors = args.num_anchors
        if args.online_refresh_steps:
            self.add_callback(_OnlineRefresh(self))

    # ---------------------------------------------------------------------------------------------- anchors
    def _attach_anchors(self, dataset: Dataset, source_model, tokenizer, args: D2OConfig) -> Dataset:
        k = args.num_anchors
        col = args.anchors_column
        self.anchors_path = None
        if col in dataset.column_names:
            anchors = dataset[col]
            for i, a in enumerate(anchors):
                if a is None or len(a) < k:
                    raise DataError(f"K={k} anchors requested but data row {i} holds only {len(a or [])} in column "
                                    f"{col!r}; lower num_anchors or supply more samples")
            if col != "anchors" and "anchors" in dataset.column_names:
                dataset = dataset.remove_columns("anchors")
            dataset = dataset.remove_columns(col)
            return dataset.add_column("anchors", [list(a[:k]) for a in anchors])
        prompts = list(dataset["prompt"])
        path = args.anchors_path or os.path.join(args.output_dir, "anchors.jsonl")
        backend = args.anchor_backend
        source = source_model
        if backend == "vllm":  # vLLM loads weights from a folder: the reference's own
            source = getattr(source_model.config, "_name_or_path", None) or source_model
        anchors = anchors_from_file(path, prompts, k, model=source)
        if anchors is None:
            engine = make_engine(source, backend, tokenizer)
            was_training = getattr(source_model, "training", False)
            # under several processes each samples its share of the batches and the main process merges them
            rows = generate_distributed(None, prompts, path, n=k, max_new_tokens=args.anchor_max_new_tokens,
                                        temperature=args.anchor_temperature, top_p=args.anchor_top_p,
                                        seed=args.anchor_seed, batch_size=args.anchor_batch_size, engine=engine,
                                        progress=not args.disable_tqdm)
            self.anchor_generation_calls += 1
            source_model.train(was_training)
            anchors = [r["completions"] for r in rows]
        self.anchors_path = path
        return dataset.add_column("anchors", anchors)

    def refresh_anchors(self) -> None:
        """Online D²O: re-sample K anchors per prompt from the current policy and recompute the reference log-probs of
        the new anchors only. Takes effect from the next step (a batch collated earlier is re-collated).

        Under several processes ``generate_distributed`` has each sample every ``world``-th generation batch (batch
        ``b`` is seeded alike in any layout) with the full weights (gathered under ZeRO-3) and exchanges the rows, and
        the reference pass is sharded too: the refresh costs each process ``1 / world`` of the one-process work."""
        from trl.models.utils import unwrap_model_for_generation

        from negalign.generation import HFEngine

        args = self.args
        data = self.train_dataset
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs) as policy:
            was_training = policy.training
            engine = HFEngine(policy, self._tokenizer, device=str(self.accelerator.device))
            rows = generate_distributed(None, list(data["prompt"]), None, n=self.num_anchors,
                                        max_new_tokens=args.anchor_max_new_tokens,
                                        temperature=args.anchor_temperature, top_p=args.anchor_top_p,
                                        seed=args.anchor_seed + 1_000_003 * (self.anchor_refreshes + 1),
                                        batch_size=args.anchor_batch_size, engine=engine, progress=False)
            policy.train(was_training)
        self.refresh_prompts_sampled += engine.prompts_sampled
        self.anchor_refreshes += 1
        self.run_info["anchor_refreshes"] = self.anchor_refreshes
        self.run_info["anchor_refresh_prompts_sampled_by_main_process"] = self.refresh_prompts_sampled
        eos = self._tokenizer.eos_token or ""
        flat = []
        for pos, r in enumerate(rows):
            prompt_ids = data[pos]["prompt_ids"]
            ids = []
            for a in r["completions"]:
                full = _tokenize(self._tokenizer, r["prompt"] + _with_eos(a, eos))["input_ids"]
                if common_prefix_length(prompt_ids, full) == len(prompt_ids):
                    ids.append(full[len(prompt_ids):])
                else:  # a token merged across the prompt boundary: tokenize the anchor on its own
                    ids.append(_tokenize(self._tokenizer, _with_eos(a, eos))["input_ids"])
            flat.append({"prompt_ids": prompt_ids, "anchor_ids": ids, "rejected_ids": []})
        # reference log-probs of the new anchors only, batched (the negatives' stay as cached)
        ref = self._reference_logps(flat, with_negatives=False)
        for pos, (ex, row) in enumerate(zip(flat, ref)):
            self._anchor_store[pos] = (ex["anchor_ids"], row)
        self._anchor_version[0] += 1

    # ---------------------------------------------------------------------------------------------- dataset
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in dataset.column_names:
            return dataset
        eos = self._tokenizer.eos_token or ""

        def tokenize(example):
            prompt_ids = _tokenize(processing_class, example["prompt"])["input_ids"]
            fulls = [_tokenize(processing_class, example["prompt"] + _with_eos(a, eos))["input_ids"]
                     for a in example["anchors"]]
            neg = _tokenize(processing_class, example["prompt"] + _with_eos(example["rejected"], eos))["input_ids"]
            n = min(common_prefix_length(prompt_ids, f) for f in fulls + [neg])
            return {"prompt_ids": prompt_ids[:n], "anchor_ids": [f[n:] for f in fulls], "rejected_ids": neg[n:]}

        dataset = dataset.map(tokenize, desc=f"Tokenizing {dataset_name} dataset (D2O)")
        if args.max_length is not None:
            dataset = dataset.filter(lambda ex: len(ex["prompt_ids"]) < args.max_length)
        if "index" in dataset.column_names:
            dataset = dataset.remove_columns("index")
        return dataset.add_column("index", list(range(len(dataset))))  # position in the prepared dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "anchor_ids", "rejected_ids", "ref_anchor_logps",
                                       "ref_rejected_logps", "index"]

    def _reference_logps(self, examples: list[dict], with_negatives: bool = True) -> list:
        """Reference log-probs of the anchors (and negatives) of ``examples``, in batches of ``precompute_ref_batch_size``
        (default: the train batch size), sharded across processes (``run_sharded``; every process gets all rows).
        Returns ``[[K floats], negative float]`` per example, or ``[K floats]``."""
        bs = self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size
        collate = D2OCollator(pad_token_id=self._tokenizer.pad_token_id, max_length=self.args.max_length)
        model = dpo_reference_scorer(self)

        def score(shard: list[int]) -> list:
            out = []
            for start in range(0, len(shard), bs):
                chunk = [examples[i] for i in shard[start : start + bs]]
                batch = collate([{k: v for k, v in ex.items() if k not in ("ref_anchor_logps", "ref_rejected_logps")}
                                 for ex in chunk])
                batch = {k: v.to(self.accelerator.device) for k, v in batch.items()
                         if k not in ("index", "anchor_version")}
                self.ref_logp_batches += 1
                # DPOTrainer.compute_ref_log_probs returns the sequence log-probs split in two halves; rejoined, they
                # are the K·B anchors then the B negatives
                logps = torch.cat(self.compute_ref_log_probs(model, batch)).float().cpu()
                b, k = len(chunk), len(chunk[0]["anchor_ids"])
                anchors = logps[: b * k].view(b, k)
                negs = logps[b * k :]
                for j in range(b):
                    out.append([anchors[j].tolist(), negs[j].item()] if with_negatives else anchors[j].tolist())
            return out

        return run_sharded(score, len(examples))

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        if "ref_anchor_logps" in dataset.column_names and "ref_rejected_logps" in dataset.column_names:
            return dataset
        rows = [{"prompt_ids": ex["prompt_ids"], "anchor_ids": ex["anchor_ids"], "rejected_ids": ex["rejected_ids"]}
                for ex in dataset]
        ref = self._reference_logps(rows)
        dataset = dataset.add_column("ref_anchor_logps", [r[0] for r in ref])
        return dataset.add_column("ref_rejected_logps", [r[1] for r in ref])

    # ---------------------------------------------------------------------------------------------- loss
    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        if mode == "train" and self._anchor_store and int(inputs["anchor_version"]) != self._anchor_version[0]:
            # collated before the last refresh (the dataloader prefetches a batch): rebuild it with the new anchors
            rows = [self.train_dataset[int(i)] for i in inputs["index"].tolist()]
            inputs = self._prepare_inputs(self.data_collator(rows))
        logps, outputs = fused_sequence_logps(model, inputs, _NON_MODEL_KEYS)  # [B·K + B] summed response log-probs

        ref_pos, ref_neg = inputs["ref_anchor_logps"], inputs["ref_rejected_logps"]  # [B, K], [B]
        b, k = ref_pos.shape
        pol_pos, pol_neg = logps[: b * k].view(b, k), logps[b * k :]
        loss = d2o_loss(pol_pos, ref_pos, pol_neg, ref_neg, beta=self.beta, alpha=self.alpha).mean()

        with torch.no_grad():
            m = self._metrics[mode]
            pos_ratio = (pol_pos - ref_pos).mean(-1)
            neg_ratio = pol_neg - ref_neg
            gather = self.accelerator.gather_for_metrics
            m["rewards/anchors"].append(gather(self.beta * pos_ratio).mean().item())
            m["rewards/negative"].append(gather(self.alpha * neg_ratio).mean().item())
            m["rewards/margins"].append(gather(self.beta * pos_ratio - self.alpha * neg_ratio).mean().item())
            m["rewards/accuracies"].append(gather((self.beta * pos_ratio > self.alpha * neg_ratio).float()).mean().item())
            m["logps/anchors"].append(gather(pol_pos.mean(-1)).mean().item())
            m["logps/negative"].append(gather(pol_neg).mean().item())
            log_dpo_tokens(self, inputs, m, mode)
            m["anchor_refreshes"] = [self.anchor_refreshes]
        if return_outputs:
            return loss, outputs
        return loss


def _with_eos(text: str, eos: str) -> str:
    return text if not eos or text.endswith(eos) else text + eos


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel

        return isinstance(model, PeftModel)
    except ImportError:  # pragma: no cover
        return False


CONFIG_CLASS = D2OConfig
METHOD_DEFAULTS = {"d2o": {}}


def train(recipe) -> dict:
    """Train D²O from a recipe: negatives data (``data.name: negatives``), anchors sampled from the reference."""
    loader = data_loader(recipe)
    model, tokenizer, _ = model_and_tokenizer(recipe, loader)
    dataset = loader.load(tokenizer)
    config = recipe.build_config()
    ref_model = reference_model(recipe, dtype=model.dtype)
    trainer = D2OTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=peft_config(recipe),
                         callbacks=[NonFiniteLossCallback()])
    extra = trainer.run_info  # anchors_path, anchor_refreshes (updated during training)
    extra.update(num_prompts=len(dataset), num_anchors=config.num_anchors,
                 reference_logp_batches=trainer.ref_logp_batches)
    skipped = getattr(loader, "skipped", 0)
    if skipped:
        extra["prompts_without_negative_skipped"] = skipped
    return train_and_finish(trainer, recipe, extra_metrics=extra)
