"""The reference side of the unlearning trainer: the reference model for a no-grad pass, and the forget terms'
cached columns (``unlearn_terms.CACHED_COLUMNS``) computed once, batched, sharded across processes, and saved to
``output_dir/<column>.json`` under a fingerprint of the reference weights and the rows (reused on resume).

A mixin of :class:`negalign.trainers.unlearn.UnlearnTrainer` (it uses the trainer's ``args``, ``accelerator``,
``model``, ``ref_model``, ``pools``, ``train_dataset`` and ``pad_id``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from negalign import logprobs as lp
from negalign.data.batching import pad_rows
from negalign.distributed import run_sharded
from negalign.trainers.unlearn_config import REF_CACHE_NAME
from negalign.trainers.unlearn_terms import CACHED_COLUMNS
from negalign.trainers.unlearn_utils import is_peft, weights_fingerprint


class ReferenceLogps:
    @contextlib.contextmanager
    def reference(self):
        """The reference model for a no-grad pass: the explicit/frozen ref, or the policy with adapters off."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        model = self.accelerator.unwrap_model(self.model)
        if is_peft(model):
            with model.disable_adapter():
                yield model
        else:
            yield model

    def _ref_fingerprint(self, dataset) -> str:
        h = hashlib.sha256()
        with self.reference() as ref:
            h.update(weights_fingerprint(self.accelerator.unwrap_model(ref)).encode())
        h.update(json.dumps([list(dataset["input_ids"]), list(dataset["completion_mask"])]).encode())
        return h.hexdigest()

    def reference_column(self, column: str) -> list:
        """The cached column ``column`` of the training set: log π_ref of its segment's rows (``CACHED_COLUMNS``); for
        a partner segment, one value per draw of each forget row."""
        segment = CACHED_COLUMNS[column]
        if segment == "forget":
            return self.reference_logps(self.train_dataset)
        from datasets import Dataset

        pool = self.pools[segment]
        rows = Dataset.from_dict({"input_ids": [r[0] for r in pool], "completion_mask": [r[1] for r in pool]})
        values = self.reference_logps(rows, column)
        return [[values[j] for j in draws] for draws in self.train_dataset[f"{segment}_index"]]

    def reference_logps(self, dataset, column: str = "ref_forget_logps") -> list[float]:
        """log π_ref(y|x) of every row: one batched no-grad pass (or the saved ``<column>.json`` when it matches)."""
        cache = Path(self.args.output_dir) / (REF_CACHE_NAME if column == "ref_forget_logps" else f"{column}.json")
        fingerprint = self._ref_fingerprint(dataset) if self.args.ref_cache else None
        if fingerprint and cache.is_file():
            try:
                saved = json.loads(cache.read_text())
            except json.JSONDecodeError:
                saved = {}
            if saved.get("fingerprint") == fingerprint and len(saved.get("logps", [])) == len(dataset):
                return [float(v) for v in saved["logps"]]
        values = self.compute_reference_logps(dataset, desc=f"Reference log-probs ({column})")
        if fingerprint and self.accelerator.is_main_process:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps({"fingerprint": fingerprint, "logps": values}))
            tmp.replace(cache)
        return values

    @torch.no_grad()
    def compute_reference_logps(self, dataset, desc: str = "Reference log-probs of the forget set") -> list[float]:
        """Batched reference pass, sharded across processes (``run_sharded``): each process scores a contiguous slice
        of the rows, in lockstep (ZeRO-3), and every process receives the whole column."""
        bs = self.args.ref_batch_size or 2 * self.args.per_device_train_batch_size
        device = self.accelerator.device
        engine = None
        if self.ref_model is None and self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            engine = prepare_deepspeed(self.model, self.accelerator)

        def score(shard: list[int]) -> list[float]:
            out: list[float] = []
            with self.reference() as ref:
                model = engine if engine is not None else ref
                was_training = model.training
                model.eval()
                for start in tqdm(range(0, len(shard), bs), desc=desc,
                                  disable=not self.accelerator.is_local_main_process):
                    rows = dataset.select(shard[start : start + bs])
                    ids, am, cm = pad_rows(list(zip(list(rows["input_ids"]), list(rows["completion_mask"]))),
                                           self.pad_id)
                    ids, am, cm = ids.to(device), am.to(device), cm.to(device)
                    tl = lp.token_logps(model, ids, am, cm, chunk_size=self.args.logprob_chunk_size)
                    out.extend(lp.sequence_logps(tl, cm).float().cpu().tolist())
                if was_training:
                    model.train()
            return out

        return run_sharded(score, len(dataset))
