"""Pieces of the unlearning trainer: tokenising text pairs, padding, the PEFT adapter-off reference, fingerprints."""

from __future__ import annotations

import hashlib

import torch

from negalign.data import DataError


def tokenize_pair(tokenizer, prompt: str, completion: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, completion_mask) of prompt + completion, tokenised separately so the answer boundary is exact."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not c:
        raise DataError(f"an answer tokenises to nothing (prompt {prompt[:80]!r})")
    if len(p) + len(c) > max_length:
        keep_c = max(1, min(len(c), max_length - min(len(p), max_length // 2)))
        c = c[:keep_c]
        p = p[-(max_length - len(c)):]
    return p + c, [0] * len(p) + [1] * len(c)


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int, length: int | None = None):
    """Right-pad ``[(ids, completion_mask)]`` → (input_ids, attention_mask, completion_mask), each ``[B, L]``."""
    length = length or max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    am = torch.zeros((len(rows), length), dtype=torch.long)
    cm = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (row, mask) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        am[i, : len(row)] = 1
        cm[i, : len(row)] = torch.tensor(mask)
    return ids, am, cm


# ------------------------------------------------------------------------------------------------------------------
# the reference as seen through a PEFT model with its adapters disabled
# ------------------------------------------------------------------------------------------------------------------


class _AdapterOff(torch.nn.Module):
    """Calls ``module`` with the PEFT model's adapters disabled (the frozen base is the reference)."""

    def __init__(self, peft_model, module):
        super().__init__()
        object.__setattr__(self, "_peft", peft_model)  # not registered: no parameters of its own
        self.inner = module

    def forward(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self.inner(*args, **kwargs)


class AdapterDisabledReference:
    """A view of a PEFT model as its base model (adapters off), exposing what ``negalign.logprobs`` needs."""

    def __init__(self, peft_model):
        base = peft_model.get_base_model()
        self.config = base.config
        self._decoder = _AdapterOff(peft_model, base.get_decoder())
        self._head = _AdapterOff(peft_model, base.get_output_embeddings())

    def get_decoder(self):
        return self._decoder

    def get_output_embeddings(self):
        return self._head


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def weights_fingerprint(model, max_per_tensor: int = 256) -> str:
    """Cheap digest of a model's (base) weights: names, shapes and the first values of every tensor."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if "lora_" in name or getattr(p, "ds_numel", None) is not None:
            continue
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().flatten()[:max_per_tensor].float().cpu().numpy().tobytes())
    return h.hexdigest()
