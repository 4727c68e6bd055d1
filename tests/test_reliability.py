"""Nothing lost, nothing silently wrong (issue #13): the non-finite guard, output directories that are never
overwritten, resumes that check the recipe and report the whole run's loss, values checked before work starts, and a
results.json for every run, also a failed one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from negalign.config import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
NPO_TINY = ROOT / "recipes" / "quickstart" / "npo_tofu_tiny.yaml"
NSR_TINY = ROOT / "recipes" / "quickstart" / "nsr_arith_tiny.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "negalign", *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, cwd=ROOT)


def _all_finite(folder: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(torch.isfinite(v).all() for v in load_file(folder / "model.safetensors").values())


# ------------------------------------------------------------------------------------------- 1. non-finite guard


@pytest.mark.parametrize("recipe,extra", [
    (NPO_TINY, ["data.path={data}/tofu"]),
    (NSR_TINY, []),  # an RL trainer: the NaN update never reaches generation (before: torch's error in generate)
], ids=["npo", "nsr"])
def test_nonfinite_guard_stops_a_real_run_before_the_bad_update(shared_data, tmp_path, recipe, extra):
    # learning_rate=1e6: the first update is finite, the second step's gradient norm is NaN (its loss is finite, so a
    # check of the logged loss alone would let the update through). transformers' default logging_nan_inf_filter
    # hid this entirely before: the run exited 0 with every checkpoint and the final model all NaN.
    out = tmp_path / "run"
    res = _cli("train", str(recipe), *[e.format(data=shared_data) for e in extra], f"output_dir={out}",
               f"model.kit.dir={tmp_path / 'kit'}", "max_steps=3", "training.learning_rate=1e6",
               "save_strategy=steps", "save_steps=1")
    assert res.returncode == 3, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()[-1] if "non-finite" in res.stderr.strip().splitlines()[-1] else res.stderr
    assert "non-finite gradient norm at step 2" in err
    assert f"last finite checkpoint is {out / 'checkpoint-1'}" in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # nothing saved after the bad step
    assert _all_finite(out / "checkpoint-1")
    assert not (out / "model.safetensors").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and results["error"].startswith("NonFiniteError: non-finite")


def test_guard_checks_the_loss_before_the_optimizer_step():
    """A NaN loss stops the step in on_pre_optimizer_step, i.e. before ``optimizer.step()``; a finite one passes."""
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from negalign.trainers.guard import NonFiniteError, NonFiniteGuard

    guard = NonFiniteGuard()
    model = torch.nn.Linear(2, 1)
    model.weight.grad = torch.ones_like(model.weight)
    args = TrainingArguments(output_dir="/nonexistent-dir-for-test", report_to="none", use_cpu=True)
    guard.note_loss(torch.tensor(0.5))
    guard.on_pre_optimizer_step(args, TrainerState(), TrainerControl(), model=model)  # finite: passes
    guard.note_loss(torch.tensor(0.5))
    guard.note_loss(torch.tensor(float("nan")))  # one micro-batch of the accumulation window
    with pytest.raises(NonFiniteError, match="non-finite loss at step 1.*no checkpoint was saved"):
        guard.on_pre_optimizer_step(args, TrainerState(), TrainerControl(), model=model)


# ------------------------------------------------------------------ 3. output directories, resume, train_loss


def _tiny(shared_data, tmp_path, out, *extra):
    return load_recipe(NPO_TINY, [f"data.path={shared_data}/tofu", f"output_dir={out}",
                                  f"model.kit.dir={tmp_path / 'kit'}", *extra])


def test_a_finished_run_is_refused_before_any_model_loads(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"status": "finished"}))
    # name_or_path does not exist: reaching the model would raise OSError, not the RecipeError checked for
    recipe = load_recipe(data={"model": {"name_or_path": str(tmp_path / "no-model")}, "data": {},
                               "method": {"name": "sft"}, "training": {}, "output": {"dir": str(out)}})
    from negalign.train import run

    with pytest.raises(RecipeError, match=r"holds another run \(results.json of a finished run, checkpoint-4\).*"
                                          r"--overwrite"):
        run(recipe)
    assert (out / "checkpoint-4").is_dir()  # untouched


def test_overwrite_removes_the_old_checkpoints_first(tmp_path):
    from negalign.rundir import prepare_output_dir

    out = tmp_path / "run"
    for d in ("checkpoint-2", "checkpoint-4"):
        (out / d).mkdir(parents=True)
    (out / "results.json").write_text("{}")
    (out / "model.safetensors").write_text("old")
    (out / "anchors.jsonl").write_text("kept: caches check their own identity\n")
    recipe = load_recipe(data={"model": {"name_or_path": "x"}, "method": {"name": "sft"}, "output": {"dir": str(out)}})
    prepare_output_dir(recipe, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["anchors.jsonl"]


def test_resume_refuses_a_checkpoint_of_another_recipe(tmp_path):
    from negalign.rundir import check_resume
    from negalign.trainers.guard import RUN_FILE

    out = tmp_path / "run"
    base = {"model": {"name_or_path": "x"}, "method": {"name": "sft"}, "output": {"dir": str(out)},
            "training": {"learning_rate": 1e-3, "max_steps": 4}}
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoint-4" / RUN_FILE).write_text(json.dumps({"global_step": 4, "loss_sum": 1.0,
                                                             "recipe": load_recipe(data=base).to_dict()}))
    longer = {**base, "training": {"learning_rate": 1e-3, "max_steps": 8, "resume_from_checkpoint": True}}
    assert check_resume(load_recipe(data=longer)).endswith("checkpoint-4")  # going on longer is a resume
    other = {**base, "training": {"learning_rate": 1e-2, "max_steps": 8, "resume_from_checkpoint": True}}
    with pytest.raises(RecipeError, match=r"another recipe: training.learning_rate \(0.001 there, 0.01 here\)"):
        check_resume(load_recipe(data=other))


def test_train_loss_after_resume_covers_the_whole_run(shared_data, tmp_path, one_thread):
    from negalign.train import run

    steps = ["max_steps=4", "save_strategy=steps", "save_steps=2"]
    full = run(_tiny(shared_data, tmp_path, tmp_path / "full", *steps))
    out = tmp_path / "cut"
    run(_tiny(shared_data, tmp_path, out, *steps))
    # as if killed after step 2: only checkpoint-2 is left
    import shutil

    shutil.rmtree(out / "checkpoint-4")
    for name in ("results.json", "model.safetensors"):
        (out / name).unlink()
    resumed = run(_tiny(shared_data, tmp_path, out, *steps, "training.resume_from_checkpoint=true"))
    # resume is exact, so the whole run's mean loss equals the uninterrupted run's (transformers alone reports the
    # mean of steps 3-4 only)
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)
    assert resumed["resumed_from_step"] == 2
    assert json.loads((out / "results.json").read_text())["metrics"]["train_loss"] == pytest.approx(full["train_loss"],
                                                                                                   rel=1e-5)


# ---------------------------------------------------------------------------------- 9. failed runs leave a record


def test_a_failed_run_writes_results_json_with_status_and_error(tmp_path):
    from negalign.train import run

    out = tmp_path / "run"
    recipe = load_recipe(data={"model": {"name_or_path": str(tmp_path / "no-model")}, "method": {"name": "sft"},
                               "data": {"name": "qa", "path": str(tmp_path / "missing.jsonl")},
                               "output": {"dir": str(out)}})
    with pytest.raises(Exception):
        run(recipe)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and "no-model" in results["error"]
    assert results["recipe"]["method"]["name"] == "sft"


def test_guard_refuses_to_save_weights_an_update_overflowed(tmp_path):
    """An update can overflow the weights although its loss and gradient were finite: before a save (should_save, or
    the end of training) the weights themselves are checked."""
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from negalign.trainers.guard import NonFiniteError, NonFiniteGuard

    (tmp_path / "checkpoint-2").mkdir()
    guard, model = NonFiniteGuard(), torch.nn.Linear(2, 1)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state, control = TrainerState(global_step=3), TrainerControl(should_save=True)
    guard.on_step_end(args, state, control, model=model)  # finite: the checkpoint may be written
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    guard.on_step_end(args, state, TrainerControl(), model=model)  # no save this step: no scan of the weights
    with pytest.raises(NonFiniteError, match=r"non-finite weights after step 3.*last finite checkpoint is .*"
                                             r"checkpoint-2"):
        guard.on_step_end(args, state, control, model=model)
    with pytest.raises(NonFiniteError):
        guard.on_train_end(args, state, TrainerControl(), model=model)
