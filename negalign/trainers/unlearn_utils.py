"""Pieces of the unlearning trainer: the PEFT adapter-off reference, fingerprints (tokenising and padding:
``negalign.data.batching``)."""

from __future__ import annotations

import hashlib

import torch

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
