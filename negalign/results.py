"""``results.json``: every run leaves one in its output directory (metrics, the resolved recipe, package versions)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from importlib import metadata
from pathlib import Path

PACKAGES = ("negalign", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "vllm")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _clean(value):
    """JSON-safe copy: tensors and numpy scalars become numbers, NaN/inf become null."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(output_dir, metrics: dict, recipe: dict | None = None, **extra) -> Path:
    """Write ``output_dir/results.json`` and return its path. ``extra`` keys go at the top level."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "metrics": _clean(metrics),
        "recipe": _clean(recipe) if recipe is not None else None,
        "versions": versions(),
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **_clean(extra),
    }
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path
