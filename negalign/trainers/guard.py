"""The non-finite guard every trainer runs under (installed by ``negalign.trainers.common.train_and_finish``).

Each optimizer step, *before* the optimizer applies the update, the guard checks the loss of every micro-batch of the
step and the gradient norm (before clipping). A NaN or infinite value stops the run with ``NonFiniteError``: the
update is not applied and nothing is saved after it, so every checkpoint on disk holds finite weights; the message
names the last one. transformers' ``logging_nan_inf_filter`` (on by default) hides a NaN loss from the logs and
callbacks, which is why the guard reads the values itself rather than the logged loss.

It also keeps the run's loss sum in each checkpoint (``negalign_run.json``, with the recipe), so that a resumed run
reports ``train_loss`` over the whole run and a resume can check that the recipe is the same.

Under DeepSpeed the engine steps inside ``backward``: there the guard still stops the run before anything is saved,
but the last update may already have been applied to the in-memory weights.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from transformers import TrainerCallback

RUN_FILE = "negalign_run.json"  # written into every checkpoint folder


from negalign.errors import NonFiniteError  # noqa: E402,F401  (its home; re-exported here)


def checkpoints(output_dir) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``checkpoint-N`` folders in ``output_dir``, by step."""
    out = []
    p = Path(output_dir)
    if p.is_dir():
        for d in p.iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", d.name)
            if m and d.is_dir():
                out.append((int(m.group(1)), d))
    return sorted(out)


def _value(x) -> float | None:
    if x is None:
        return None
    return float(x.item() if hasattr(x, "item") else x)


class NonFiniteGuard(TrainerCallback):
    """See the module docstring. ``attach(trainer, recipe)`` wraps the trainer's ``training_step`` (to see each
    micro-batch loss) and its pre-clip gradient norm; the check runs in ``on_pre_optimizer_step``."""

    def __init__(self):
        self.trainer = None
        self.recipe = None
        self.prior_loss_sum = 0.0  # loss summed over the steps before a resume (from the checkpoint)
        self.prior_steps = 0
        self._reset_step()
        self._loss_sum = None  # this call's loss sum (a tensor: no device sync per micro-batch)

    def _reset_step(self):
        self._step_loss = None  # the step's micro-batch losses summed: non-finite iff one of them is
        self._norm = None

    def attach(self, trainer, recipe=None) -> "NonFiniteGuard":
        if self.trainer is trainer:
            return self
        self.trainer, self.recipe = trainer, recipe
        step = trainer.training_step

        def training_step(*args, **kwargs):
            loss = step(*args, **kwargs)
            self.note_loss(loss)
            return loss

        trainer.training_step = training_step
        norm_fn = getattr(trainer, "_get_grad_norm", None)  # transformers >= 5: returns the pre-clip norm
        if norm_fn is not None:
            def get_grad_norm(*args, **kwargs):
                self._norm = norm_fn(*args, **kwargs)
                return self._norm

            trainer._get_grad_norm = get_grad_norm
        return self

    def note_loss(self, loss) -> None:
        import torch

        total = (loss.detach().float() if torch.is_tensor(loss) else torch.tensor(float(loss))).sum()
        self._loss_sum = total if self._loss_sum is None else self._loss_sum + total.to(self._loss_sum.device)
        self._step_loss = total if self._step_loss is None else self._step_loss + total.to(self._step_loss.device)

    def _grad_norm(self, model):
        if self._norm is not None:
            return _value(self._norm)
        import torch

        grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        loss = _value(self._step_loss)
        model = model if model is not None else getattr(self.trainer, "model", None)
        norm = self._grad_norm(model) if model is not None else None
        self._reset_step()
        bad = [name for name, v in (("loss", loss), ("gradient norm", norm)) if v is not None and not math.isfinite(v)]
        if bad:
            raise NonFiniteError(self.message(args, state, bad, loss, norm))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """Before a checkpoint or the final model is saved: the weights themselves are finite (an update can overflow
        them even when its loss and gradient were finite)."""
        if control.should_save or control.should_training_stop:
            self._check_weights(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._check_weights(args, state, model)  # before train_and_finish saves the final model

    def _check_weights(self, args, state, model) -> None:
        import torch

        model = model if model is not None else getattr(self.trainer, "model", None)
        if model is not None and not all(bool(torch.isfinite(p.detach()).all()) for p in model.parameters()):
            raise NonFiniteError(self.message(args, state, ["weights"], None, None, after=True))

    def message(self, args, state, bad, loss, norm, after: bool = False) -> str:
        done = [(s, p) for s, p in checkpoints(args.output_dir) if s <= state.global_step]
        if after:  # the step's update overflowed the weights: stopped before saving them
            done = [(st, p) for st, p in done if st < state.global_step]
            what = f"non-finite weights after step {state.global_step}: the run stopped before saving them"
        else:
            what = (f"non-finite {' and '.join(bad)} at step {state.global_step + 1} (loss {loss}, gradient norm "
                    f"{norm}): the run stopped before the update and saved nothing after it")
        last = (f"the last finite checkpoint is {done[-1][1]} (step {done[-1][0]}); resume from it with "
                f"training.resume_from_checkpoint={done[-1][1]} and a lower learning rate"
                if done else "no checkpoint was saved before it (set training.save_steps to keep some)")
        return f"{what}; {last}. Lower the learning rate or check the data and the method's hyper-parameters."

    # --- the whole run's loss, kept in each checkpoint -----------------------------------------------------------
    def loss_sum(self) -> float:
        return self.prior_loss_sum + (_value(self._loss_sum) or 0.0)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            record = {"global_step": state.global_step, "loss_sum": self.loss_sum(),
                      "recipe": self.recipe.to_dict() if self.recipe is not None else None}
            (folder / RUN_FILE).write_text(json.dumps(record, indent=1, default=str))

    def restore(self, checkpoint) -> bool:
        """Read the loss sum of the run up to ``checkpoint``; False when the checkpoint has no record."""
        path = Path(checkpoint) / RUN_FILE
        if not path.is_file():
            return False
        record = json.loads(path.read_text())
        self.prior_loss_sum, self.prior_steps = float(record["loss_sum"]), int(record["global_step"])
        return True


def resolve_checkpoint(resume, output_dir) -> str | None:
    """The checkpoint folder ``resume_from_checkpoint`` names: a path, or for ``True`` the last one in
    ``output_dir`` (None when there is none or ``resume`` is falsy)."""
    if not resume:
        return None
    if resume is True or (isinstance(resume, str) and resume.lower() == "true"):
        found = checkpoints(output_dir)
        return str(found[-1][1]) if found else None
    return os.fspath(resume)
