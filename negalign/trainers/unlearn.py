"""Unlearning: gradient ascent, GradDiff, NPO, NPO+RT, NPO+KL and SimNPO (SPEC.md §1) as one thin TRL trainer.

    L = γ · mean_b L_forget(b) + α · mean L_retain

forget term: a row of the table ``negalign.trainers.unlearn_terms.FORGET_TERMS`` (``ga | npo | simnpo``: name → the
cached columns it reads and its loss from ``negalign.losses``), retain term ``none | nll | kl`` (``nll_loss`` /
``negalign.logprobs.chunked_token_kl``). How the method is wired:

* every training batch has named segments: ``forget`` (``B`` forget examples), ``alternate`` (one alternative answer
  per forget example, when the forget term reads them) and ``retain`` (their ``B`` retain partners), padded together
  and sent through the policy in **one** forward (the decoder runs once; log-probs come from ``chunk``-sized pieces of
  the LM head);
* the reference log-probabilities a forget term reads (``ref_forget_logps`` for NPO) are computed **once**, batched,
  when the trainer is built, and stored as dataset columns (and in ``output_dir/<column>.json``, reloaded when the
  model and data fingerprint match, e.g. on resume). No reference forward happens in a training step for the forget
  terms;
* the ``kl`` retain term needs the reference distribution on the retain tokens: a frozen copy of the starting model
  (full fine-tuning) or, with PEFT/LoRA, the same model with its adapters disabled (no second copy is held);
* logs ``forget/logps``, ``forget/ref_logps``, ``npo/weight`` (w = 2σ(β(log π_θ − log π_ref)), the NPO gradient
  weight), ``forget/loss``, ``retain/loss`` TRL-style, and writes a TRL model card with each checkpoint.

Presets and the configuration live in ``negalign.trainers.unlearn_config`` (re-exported here), the forget-term table
in ``negalign.trainers.unlearn_terms``, the reference pass and its cache in ``negalign.trainers.unlearn_reference``,
the PEFT reference view in ``negalign.trainers.unlearn_utils``, tokenising and padding in ``negalign.data.batching``.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from pathlib import Path

import torch

from negalign.trainers import compat

# TRL's private _BaseTrainer and the transformers Trainer methods this trainer extends (negalign.trainers.compat)
compat.check("trl.trainer.base_trainer", "trl._BaseTrainer", "transformers.Trainer")
from trl.trainer.base_trainer import _BaseTrainer  # noqa: E402

from negalign import logprobs as lp
from negalign.data import DataError
from negalign.data.batching import pad_rows, pad_token_id, tokenize_pair
from negalign.losses import kl_batchmean, kl_loss, nll_loss
from negalign.trainers.common import (
    NonFiniteLossCallback,
    data_loader,
    model_and_tokenizer,
    peft_config,
    reference_model,
    train_and_finish,
)
from negalign.trainers.unlearn_config import HEAD_CHECKPOINT
from negalign.trainers.unlearn_config import (  # noqa: F401  (re-exported: recipes and tests import them from here)
    CONFIG_CLASS,
    FORGET_LOSSES,
    METHOD_DEFAULTS,
    NPO_PAPER,
    REF_CACHE_NAME,
    RETAIN_LOSSES,
    SIMNPO_PAPER,
    TOFU_PAPER_CITATION,
    UnlearnConfig,
    method_title,
)
from negalign.trainers.unlearn_reference import ReferenceLogps
from negalign.trainers.unlearn_terms import (
    CACHED_COLUMNS,
    FORGET_TERMS,
    LOG_NAMES,
    PARTNER_SEGMENTS,
    Segment,
    TermInputs,
)
from negalign.trainers.unlearn_utils import AdapterDisabledReference, is_peft, weights_fingerprint  # noqa: F401

# ------------------------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------------------------


class UnlearnTrainer(ReferenceLogps, _BaseTrainer):
    """GA / GradDiff / NPO / NPO+RT / NPO+KL / SimNPO on TRL conventions.

    Args:
        model: a causal LM (or a PEFT model; or pass ``peft_config`` to wrap it).
        args: :class:`UnlearnConfig`.
        forget_dataset: ``prompt``, ``completion`` text columns (formatted prompts; answers end with EOS) — or
            ``input_ids`` + ``completion_mask`` already encoded (``TofuData.load_unlearning``), used as they are — and, when a
            retain term is used, ``retain_index`` (list of indices into ``retain_dataset``, one per epoch, cycled); when
            the forget term reads the ``alternate`` segment, the alternative answers of each row, one per epoch,
            cycled: ``alternate_input_ids`` + ``alternate_completion_mask`` (lists of encoded rows) or
            ``alternate_completions`` (a list of answer texts, tokenised after ``prompt``).
        retain_dataset: ``prompt``, ``completion`` (or ``input_ids`` + ``completion_mask``) columns (needed for
            ``retain_loss`` nll / kl).
        ref_model: the reference for ``npo`` / ``kl`` when it differs from the starting model. Default: the starting
            model itself (its forget log-probs are cached before step 1; for ``kl`` with full fine-tuning a frozen
            copy is kept; with PEFT the adapter-disabled base is used).
    """

    loss_is_scaled_for_ga = False
    _tag_names = ["trl", "negalign", "unlearning"]
    _name = "NPO"
    _paper = NPO_PAPER

    def __init__(
        self,
        model,
        args: UnlearnConfig,
        forget_dataset,
        retain_dataset=None,
        processing_class=None,
        ref_model=None,
        peft_config=None,
        callbacks=None,
    ):
        if processing_class is None:
            raise ValueError("UnlearnTrainer needs processing_class (the tokenizer)")
        self._check_columns(forget_dataset, self._text_or_ids(forget_dataset), "forget dataset")
        if len(forget_dataset) == 0:
            raise DataError("the forget dataset is empty: nothing to unlearn")
        uses_retain = args.retain_loss != "none"
        if uses_retain:
            if retain_dataset is None or len(retain_dataset) == 0:
                raise DataError(f"retain_loss={args.retain_loss!r} needs a non-empty retain dataset")
            self._check_columns(retain_dataset, self._text_or_ids(retain_dataset), "retain dataset")
            self._check_columns(forget_dataset, ("retain_index",), "forget dataset (retain_loss needs partners)")
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if is_peft(model) and args.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        self.pad_id = pad_token_id(processing_class)

        def tok(example):
            ids, cm = tokenize_pair(processing_class, example["prompt"], example["completion"], args.max_length)
            return {"input_ids": ids, "completion_mask": cm}

        # datasets that carry input_ids + completion_mask (TofuData.load_unlearning: the prompt template's encoding,
        # answer + EOS) are used as they are; prompt/completion text is tokenised here
        pretokenised = {"input_ids", "completion_mask"}.issubset
        forget = forget_dataset if pretokenised(forget_dataset.column_names) else forget_dataset.map(
            tok, desc="Tokenizing forget set")
        self.term = FORGET_TERMS[args.forget_loss]
        # the partner segments: a pool of encoded rows each, drawn per forget row through <segment>_index (one per epoch)
        self.pools: dict[str, list[tuple[list[int], list[int]]]] = {}
        if "alternate" in self.term.segments:
            forget = self._alternate_pool(forget, processing_class, args)
        if uses_retain:
            if pretokenised(retain_dataset.column_names):
                self.pools["retain"] = [(list(i), list(m)) for i, m in
                                        zip(retain_dataset["input_ids"], retain_dataset["completion_mask"])]
            else:
                self.pools["retain"] = [
                    tokenize_pair(processing_class, p, c, args.max_length)
                    for p, c in zip(list(retain_dataset["prompt"]), list(retain_dataset["completion"]))
                ]
            n = len(self.pools["retain"])
            bad = [j for draws in list(forget["retain_index"]) for j in draws if not 0 <= j < n]
            if bad:
                raise DataError(f"retain_index values out of range for a retain set of {n}: {bad[:5]}")

        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._name = method_title(args.forget_loss, args.retain_loss)
        self._paper = self.term.paper.trl()
        super().__init__(
            model=model,
            args=args,
            data_collator=self.collate,
            train_dataset=forget,
            processing_class=processing_class,
            callbacks=callbacks,
        )
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

        # the reference: an explicit model, the adapter-disabled base (PEFT), or a frozen copy (kl, full fine-tuning)
        self.ref_model = None
        if ref_model is not None:
            self.ref_model = self._prepare_ref(ref_model)
        elif args.retain_loss == "kl" and not is_peft(self.model):
            import copy

            self.ref_model = self._prepare_ref(copy.deepcopy(self.accelerator.unwrap_model(self.model)))
        for column in self.term.columns:  # the frozen values the forget term reads, computed once
            self.train_dataset = self.train_dataset.add_column(column, self.reference_column(column))

    # ------------------------------------------------------------------ setup helpers
    @staticmethod
    def _check_columns(dataset, columns, where):
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise DataError(f"{where} lacks column(s) {missing}; it has {dataset.column_names}")

    def _alternate_pool(self, forget, tokenizer, args):
        """Move the forget rows' alternative answers into ``pools["alternate"]``; ``alternate_index`` points there."""
        cols = set(forget.column_names)
        if {"alternate_input_ids", "alternate_completion_mask"} <= cols:
            per_row = [[(list(i), list(m)) for i, m in zip(ids, masks)]
                       for ids, masks in zip(forget["alternate_input_ids"], forget["alternate_completion_mask"])]
        elif {"alternate_completions", "prompt"} <= cols:
            per_row = [[tokenize_pair(tokenizer, p, c, args.max_length) for c in alts]
                       for p, alts in zip(forget["prompt"], forget["alternate_completions"])]
        else:
            raise DataError(f"forget_loss={args.forget_loss!r} needs "
                            "alternative answers: forget dataset columns alternate_input_ids + alternate_completion_mask "
                            f"or alternate_completions (TofuData.load_unlearning(alternates=True)); it has {sorted(cols)}")
        draws = {len(rows) for rows in per_row}
        if len(draws) != 1 or 0 in draws:
            raise DataError(f"every forget row needs the same number (> 0) of alternative answers, got {sorted(draws)}")
        pool, index = [], []
        for rows in per_row:
            index.append(list(range(len(pool), len(pool) + len(rows))))
            pool.extend(rows)
        self.pools["alternate"] = pool
        drop = [c for c in ("alternate_input_ids", "alternate_completion_mask", "alternate_completions") if c in cols]
        return forget.remove_columns(drop).add_column("alternate_index", index)

    def _prepare_ref(self, ref):
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        if self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(ref, self.accelerator)
        return ref.to(self.accelerator.device)

    @staticmethod
    def _text_or_ids(dataset) -> tuple[str, ...]:
        cols = set(dataset.column_names)
        return ("input_ids", "completion_mask") if {"input_ids", "completion_mask"} <= cols else ("prompt", "completion")

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "completion_mask", *CACHED_COLUMNS,
                                       *(f"{s}_index" for s in PARTNER_SEGMENTS)]

    # ------------------------------------------------------------------ batches
    def collate(self, features: list[dict]) -> dict:
        ids, am, cm = pad_rows([(f["input_ids"], f["completion_mask"]) for f in features], self.pad_id)
        batch = {"input_ids": ids, "attention_mask": am, "completion_mask": cm}
        for column in CACHED_COLUMNS:  # [B] (forget rows) or [B, draws] (a partner segment's draws)
            if column in features[0]:
                batch[column] = torch.tensor([f[column] for f in features], dtype=torch.float32)
        for segment in PARTNER_SEGMENTS:  # [B, draws] indices into self.pools[segment]
            if f"{segment}_index" in features[0]:
                batch[f"{segment}_index"] = torch.tensor([f[f"{segment}_index"] for f in features], dtype=torch.long)
        return batch

    def draw(self, index: torch.Tensor) -> int:
        """The draw of this step's partners: ``epoch mod draws`` (restored with the trainer state on resume, so a
        resumed run sees the same partners)."""
        return int(self.state.epoch or 0) % index.shape[1]

    def partner_rows(self, segment: str, index: torch.Tensor) -> list[tuple[list[int], list[int]]]:
        """The ``segment`` rows of this step (``index``: ``[B, draws]`` into ``pools[segment]``)."""
        return [self.pools[segment][int(i)] for i in index[:, self.draw(index)].tolist()]

    def retain_rows(self, retain_index: torch.Tensor) -> list[tuple[list[int], list[int]]]:
        """The retain partners of this step (draw ``epoch mod retain_draws`` of each forget example)."""
        return self.partner_rows("retain", retain_index)

    def build_batch(self, inputs: dict) -> dict:
        """One padded batch of the named segments, forget rows then their alternate and retain partners (the single
        forward): ``input_ids`` etc. ``[N, L]``, ``segments`` {name: row slice}, ``cached`` {column: ``[B]``}."""
        f_ids, f_am, f_cm = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        device = f_ids.device
        parts = {"forget": (f_ids, f_am, f_cm)}
        for segment in PARTNER_SEGMENTS:
            if segment in self.pools:
                parts[segment] = tuple(t.to(device) for t in pad_rows(
                    self.partner_rows(segment, inputs[f"{segment}_index"]), self.pad_id))
        cached = {}
        for column in self.term.columns:
            value = inputs[column].to(device)
            segment = CACHED_COLUMNS[column]
            cached[column] = value if segment == "forget" else value[:, self.draw(inputs[f"{segment}_index"])]
        segments, start = {}, 0
        for name, (ids, _, _) in parts.items():
            segments[name] = slice(start, start + ids.shape[0])
            start += ids.shape[0]
        batch = {"segments": segments, "cached": cached}
        if len(parts) == 1:
            return {"input_ids": f_ids, "attention_mask": f_am, "completion_mask": f_cm, **batch}
        length = max(ids.shape[1] for ids, _, _ in parts.values())

        def widen(t, value):
            return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)

        for key, pad, k in (("input_ids", self.pad_id, 0), ("attention_mask", 0, 1), ("completion_mask", 0, 2)):
            batch[key] = torch.cat([widen(p[k], pad) for p in parts.values()])
        return batch

    # ------------------------------------------------------------------ the forward
    def policy_pass(self, model, ids, am, cm):
        """One policy forward over all rows → (per-token log-probs ``[N, L]``, final hidden states, full logits).

        Models whose LM head can be split off (the normal case) give hidden states and no logits (chunked head). A
        wrapper that hides the head (DDP) is called as a whole, so gradient synchronisation runs: one forward giving
        full logits, from which both the log-probs and (for ``kl``) the KL are taken."""
        if lp._split_head(model) is None:
            logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits  # [N, L, V]
            out = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
            out[:, 1:] = lp.selective_log_softmax(logits[:, :-1], ids[:, 1:])
            mask = cm.clone().float()
            mask[:, 0] = 0
            return out * mask, None, logits
        token_lp, hidden = lp.token_logps_and_hidden(model, ids, am, cm, chunk_size=self.args.logprob_chunk_size,
                                                     checkpoint_head=HEAD_CHECKPOINT[self.args.logprob_checkpoint_head])
        return token_lp, hidden, None

    def retain_kl(self, model, ids, am, cm, hidden=None, logits=None) -> torch.Tensor:
        """Token-level KL(π_ref ‖ π_θ) on the retain rows, reusing the policy's forward: the mean over the answer
        tokens (``kl_reduction=answer_tokens``) or, ``batchmean``, the sum over every position of the retain rows
        padded to their own longest row ``[B_r, L_r]`` divided by ``B_r·L_r`` (open-unlearning)."""
        if self.args.kl_reduction == "batchmean":
            width = int(am.sum(-1).max())
            # positions 0..L_r-1 predict tokens 1..L_r: score columns 1..L_r of a copy one column wider
            ids = torch.nn.functional.pad(ids[:, :width], (0, 1), value=self.pad_id)
            am = torch.nn.functional.pad(am[:, :width], (0, 1), value=0)
            cm = torch.ones_like(ids)
            if hidden is not None:
                hidden = torch.nn.functional.pad(hidden[:, :width], (0, 0, 0, 1))
            if logits is not None:
                logits = torch.nn.functional.pad(logits[:, :width], (0, 0, 0, 1))
        if self.ref_model is not None:
            ref = self.ref_model
        else:
            unwrapped = self.accelerator.unwrap_model(model)
            if not is_peft(unwrapped):
                raise RuntimeError("retain_loss=kl without a reference model")
            ref = AdapterDisabledReference(unwrapped)
        if hidden is None:  # full logits from the single policy forward; the reference gives full logits too
            if isinstance(ref, AdapterDisabledReference):
                ref_model = self.accelerator.unwrap_model(model)
                ctx = ref_model.disable_adapter()
            else:
                ref_model, ctx = ref, contextlib.nullcontext()
            with torch.no_grad(), ctx:
                ref_logits = ref_model(input_ids=ids, attention_mask=am, use_cache=False).logits
            mask = cm.bool().clone()
            mask[:, 0] = False
            pos = mask[:, 1:]
            kl = kl_loss(torch.log_softmax(ref_logits[:, :-1][pos].float(), -1),
                         torch.log_softmax(logits[:, :-1][pos].float(), -1))
        else:
            kl = lp.chunked_token_kl(model, ref, ids, am, cm, chunk_size=self.args.logprob_chunk_size,
                                     policy_hidden=hidden)
        if self.args.kl_reduction == "batchmean":
            return kl_batchmean(kl)  # every position of [B_r, L_r] counted once
        return kl.mean() if kl.numel() else kl.new_zeros(())

    def compute_terms(self, model, inputs: dict) -> dict:
        """All the loss terms of a batch (used by compute_loss and by tests): the forget term is a look-up in
        ``FORGET_TERMS``, the retain term ``none | nll | kl``."""
        args = self.args
        batch = self.build_batch(inputs)
        seg = batch["segments"]
        ids, am, cm = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        token_lp, hidden, logits = self.policy_pass(model, ids, am, cm)

        def view(name: str) -> Segment:
            mask = cm[seg[name]].clone()
            mask[:, 0] = 0
            return Segment(token_lp[seg[name]], mask)

        forget = view("forget")
        terms = {"forget_logps": forget.logps, "forget_lengths": forget.lengths}
        loss, extras = self.term.loss(TermInputs(forget, view("alternate") if "alternate" in seg else None,
                                                 batch["cached"], args))
        terms.update(extras)
        terms["forget_loss"] = loss.mean()
        if args.retain_loss == "nll":
            retain = view("retain")
            terms["retain_loss"] = nll_loss(retain.token_logps, retain.mask, reduction=args.loss_reduction).mean()
        elif args.retain_loss == "kl":
            r = seg["retain"]
            terms["retain_loss"] = self.retain_kl(
                model, ids[r], am[r], cm[r], hidden[r] if hidden is not None else None,
                logits[r] if logits is not None else None,
            )
        loss = args.gamma * terms["forget_loss"]
        if "retain_loss" in terms:
            loss = loss + args.alpha * terms["retain_loss"]
        terms["loss"] = loss
        return terms

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        terms = self.compute_terms(model, inputs)
        mode = "train" if model.training else "eval"
        m = self._metrics[mode]
        gather = self.accelerator.gather_for_metrics
        m["forget/logps"].append(gather(terms["forget_logps"].detach()).mean().item())
        per_tok = terms["forget_logps"].detach() / terms["forget_lengths"].clamp(min=1)
        m["forget/logps_per_token"].append(gather(per_tok).mean().item())
        m["forget/loss"].append(gather(terms["forget_loss"].detach()).mean().item())
        for key, name in LOG_NAMES.items():  # what the forget term reported (npo/weight, forget/ref_logps, ...)
            if key in terms:
                m[name].append(gather(terms[key].detach()).mean().item())
        if "retain_loss" in terms:
            m["retain/loss"].append(gather(terms["retain_loss"].detach()).mean().item())
        loss = terms["loss"]
        return (loss, terms) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        if not _internal_call and self.is_world_process_zero():
            self.create_model_card(model_name=Path(output_dir or self.args.output_dir).name, dataset_name="locuslab/TOFU")

    def _save_checkpoint(self, model, trial):
        name = Path(self.args.output_dir).name if self.args.hub_model_id is None else self.args.hub_model_id.split("/")[-1]
        self.create_model_card(model_name=name, dataset_name="locuslab/TOFU")
        super()._save_checkpoint(model, trial)


# ------------------------------------------------------------------------------------------------------------------
# recipe entry point
# ------------------------------------------------------------------------------------------------------------------


def train(recipe) -> dict:
    """Train an unlearning recipe (data.name tofu, or any loader with ``load_unlearning``); returns the metrics."""
    from negalign.config import RecipeError
    from negalign.distributed import process_state

    loader = data_loader(recipe)
    if not hasattr(loader, "load_unlearning"):
        raise RecipeError(f"method {recipe.method_name} needs forget/retain data (data.name: tofu), got {recipe.data.get('name')!r}")
    config = recipe.build_config()
    # validate the data before any model is loaded: empty/unknown splits and missing columns fail here
    loader.forget_rows()
    if config.retain_loss != "none":
        loader.retain_rows()
    term = FORGET_TERMS[config.forget_loss]
    alternates = {"alternates": True} if "alternate" in term.segments else {}  # e.g. TOFU's refusals (IdkDPO)
    if alternates:
        loader.alternate_answers()
    model, tokenizer, path = model_and_tokenizer(recipe, loader)
    forget, retain = loader.load_unlearning(tokenizer, process_index=process_state().process_index,
                                            max_length=config.max_length, **alternates)
    ref_model = reference_model(recipe) if term.columns or config.retain_loss == "kl" else None
    callbacks = [NonFiniteLossCallback()]
    if config.tofu_eval_steps:
        from negalign.evaluation.tofu_callback import TofuEvalCallback

        callbacks.append(
            TofuEvalCallback(
                data_path=loader.path, forget_split=loader.forget_split, steps=config.tofu_eval_steps,
                tokenizer=tokenizer, retain_results=config.tofu_eval_retain_results,
                max_items=config.tofu_eval_max_items, output_dir=os.path.join(recipe.output_dir, "tofu_eval"),
                template=loader.prompt_template(tokenizer), max_new_tokens=config.tofu_eval_max_new_tokens,
            )
        )
    trainer = UnlearnTrainer(
        model=model, args=config, forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer,
        ref_model=ref_model, peft_config=peft_config(recipe), callbacks=callbacks,
    )
    return train_and_finish(trainer, recipe)
