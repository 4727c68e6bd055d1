"""What a generation cache was made from: the model's identity and a hash of the prompts, recorded in the header of
every generation file (``negalign generate`` output, the per-step sample and step-value caches, D²O anchors) next to
the sampling settings, and compared when a run resumes into the file.

A model is identified by its weights, not its name: a local folder by its path and a fingerprint of its weight files
(name, size and the first and last MiB of each), a model in memory by a fingerprint of its parameters (name, shape,
dtype and the sum and sum of squares of each), a Hub id by the id and its revision."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CHUNK = 1 << 20


def folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and not p.name.startswith(("optimizer", "scheduler", "rng_state", "training_args")))
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}:".encode())
        with open(p, "rb") as f:
            if size <= 2 * CHUNK:
                h.update(f.read())
            else:
                h.update(f.read(CHUNK))
                f.seek(size - CHUNK)
                h.update(f.read(CHUNK))
    return h.hexdigest()[:16]


def module_fingerprint(model) -> str:
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = p.detach().to(torch.float64)
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{t.sum().item()!r}:{t.square().sum().item()!r};".encode())
    return h.hexdigest()[:16]


def model_identity(model=None, engine=None, revision: str | None = None) -> dict | None:
    """The identity of the policy behind ``engine`` (its ``identity()``, else its ``model_path`` or ``model``) or of
    ``model`` (a folder, a Hub id or a loaded model). None when it cannot be told (an engine without a model)."""
    if engine is not None:
        fn = getattr(engine, "identity", None)
        if callable(fn):
            return fn()
        for attr in ("model_path", "model"):
            source = getattr(engine, attr, None)
            if source is not None:
                return model_identity(source, revision=revision)
        return None
    if model is None:
        return None
    if isinstance(model, (str, os.PathLike)):
        p = Path(model).expanduser()
        if p.is_dir():
            return {"path": str(p.resolve()), "weights": folder_fingerprint(p)}
        return {"hub_id": str(model), "revision": revision}
    if hasattr(model, "named_parameters"):
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
        return {"name_or_path": name, "weights": module_fingerprint(model)}
    return None


def prompts_hash(prompts: list[str]) -> str:
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]


def same_model(a: dict | None, b: dict | None) -> bool:
    """Equal weights fingerprints, or equal Hub id and revision; unknown on either side counts as equal."""
    if not a or not b:
        return True
    if a.get("weights") and b.get("weights"):
        return a["weights"] == b["weights"]
    return (a.get("hub_id"), a.get("revision")) == (b.get("hub_id"), b.get("revision"))


def describe(identity: dict | None) -> str:
    if not identity:
        return "unknown"
    if identity.get("hub_id"):
        return f"{identity['hub_id']}@{identity.get('revision') or 'default branch'}"
    where = identity.get("path") or identity.get("name_or_path") or "a model in memory"
    return f"{where} (weights {identity.get('weights')})"
