"""A run's output directory: a finished run is never overwritten, a resume continues the same recipe, and every run
leaves ``results.json`` with its ``status`` (``finished``, ``failed``, ``interrupted``, ``prepared``) and ``error``.

``negalign train`` (``negalign.train.run``) calls ``prepare_output_dir`` before any model is loaded and
``record_failure`` when the run stops on an error."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from negalign.config import RecipeError
from negalign.trainers.guard import RUN_FILE, checkpoints, resolve_checkpoint

# keys a resumed run may change: how long it goes on, how often it logs / saves, where it reports
RESUME_FREE = {
    "training.resume_from_checkpoint", "training.max_steps", "training.num_train_epochs", "training.save_steps",
    "training.save_strategy", "training.save_total_limit", "training.logging_steps", "training.logging_strategy",
    "training.eval_steps", "training.eval_strategy", "training.report_to", "training.disable_tqdm",
    "training.run_name", "training.dataloader_num_workers",
}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors",
                "adapter_config.json", "adapter_model.bin")


def _flatten(d, prefix="") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def recipe_differences(old: dict, new: dict) -> list[str]:
    """``key (old there, new here)`` for each recipe key that differs, except those a resume may change."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUME_FREE or key.startswith("output."):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key} ({a.get(key)!r} there, {b.get(key)!r} here)")
    return diffs


def previous_run(output_dir) -> list[str]:
    """What in ``output_dir`` belongs to another run: checkpoint folders and a finished run's results.json."""
    out = Path(output_dir)
    found = [p.name for _, p in checkpoints(out)]
    results = out / "results.json"
    if results.is_file():
        try:
            status = json.loads(results.read_text()).get("status", "finished")
        except (ValueError, AttributeError):
            status = "finished"
        if status == "finished":
            found.insert(0, "results.json of a finished run")
    return found


def prepare_output_dir(recipe, overwrite: bool = False) -> None:
    """Refuse an ``output_dir`` holding another run unless ``overwrite`` (then its checkpoints, results.json and
    weights are removed first); for a resume, check that the checkpoint's recipe is this one."""
    out = Path(recipe.output_dir)
    resume = recipe.training.get("resume_from_checkpoint")
    if resume:
        if overwrite:
            raise RecipeError("--overwrite and training.resume_from_checkpoint contradict each other; drop one")
        check_resume(recipe)
        return
    found = previous_run(out)
    if not found:
        return
    if not overwrite:
        raise RecipeError(f"output_dir {out} holds another run ({', '.join(found[:4])}); choose another output_dir, "
                          "continue that run with training.resume_from_checkpoint=true, or pass --overwrite to delete "
                          "its checkpoints and results and start afresh")
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for _, ckpt in checkpoints(out):
        shutil.rmtree(ckpt)
    for name in ("results.json", *WEIGHT_FILES):
        (out / name).unlink(missing_ok=True)


def check_resume(recipe) -> str:
    """The checkpoint a resume starts from, after checking it exists and was trained with this recipe."""
    out = Path(recipe.output_dir)
    resume = recipe.training.get("resume_from_checkpoint")
    ckpt = resolve_checkpoint(resume, out)
    if ckpt is None:
        raise RecipeError(f"training.resume_from_checkpoint is set but {out} holds no checkpoint-N folder; drop it "
                          "to start afresh")
    if not Path(ckpt).is_dir():
        raise RecipeError(f"training.resume_from_checkpoint: no checkpoint folder {ckpt}")
    record = Path(ckpt) / RUN_FILE
    if record.is_file():
        old = json.loads(record.read_text()).get("recipe")
        diffs = recipe_differences(old or {}, recipe.to_dict()) if old is not None else []
        if diffs:
            raise RecipeError(f"checkpoint {ckpt} was trained with another recipe: {'; '.join(diffs)}. Resume with "
                              "the same values, or start afresh in another output_dir")
    return ckpt


def record_failure(recipe, error: BaseException) -> None:
    """results.json for a run that stopped on ``error`` (main process only)."""
    from negalign.results import write_results

    if int(os.environ.get("RANK", "0")) != 0:
        return
    status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    message = str(error).strip()[:4000]
    write_results(recipe.output_dir, {}, recipe=recipe.to_dict(), method=recipe.method_name, status=status,
                  error=f"{type(error).__name__}: {message}")
