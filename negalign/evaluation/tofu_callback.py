"""TOFU evaluation during training: ``TofuEvalCallback`` runs ``negalign.evaluation.tofu.evaluate_tofu`` at chosen
global steps (the forget-quality-vs-utility curve of an unlearning run)."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from negalign.evaluation.tofu import MAX_NEW_TOKENS, evaluate_tofu, load_eval_rows, write_eval


def _whole_parameters(model):
    """Under DeepSpeed ZeRO-3 a context in which every process holds all of ``model``'s parameters (a collective:
    every process enters it); otherwise a no-op."""
    import contextlib

    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


class TofuEvalCallback(TrainerCallback):
    """Run the TOFU evaluation at chosen global steps during training (``history`` keeps summaries).

    ``steps`` may include 0 (before the first update). Results go to ``output_dir/step-N/results.json``. Under several
    processes every process evaluates its slice of each split (under ZeRO-3 with the parameters gathered), so no
    process idles at a collective while another evaluates; the main process writes the results."""

    def __init__(self, data_path, forget_split, steps, tokenizer, retain_results=None, max_items=None,
                 output_dir=None, batch_size=32, max_new_tokens=MAX_NEW_TOKENS, system_prompt=None, progress=False,
                 template=None):
        self.data_path, self.forget_split, self.steps = data_path, forget_split, sorted(set(int(s) for s in steps))
        self.tokenizer, self.retain_results, self.max_items = tokenizer, retain_results, max_items
        self.output_dir, self.batch_size, self.max_new_tokens = output_dir, batch_size, max_new_tokens
        self.system_prompt, self.progress, self.template = system_prompt, progress, template
        self.history: list[dict] = []
        load_eval_rows(data_path, forget_split, max_items=1)  # fail early on bad data

    def _run(self, state, model):
        with _whole_parameters(model):
            res = evaluate_tofu(model, self.tokenizer, self.data_path, self.forget_split, self.retain_results,
                                self.max_items, self.batch_size, self.max_new_tokens, self.system_prompt,
                                self.progress and state.is_world_process_zero, template=self.template)
        self.history.append({"step": state.global_step, **res["summary"]})
        if self.output_dir and state.is_world_process_zero:
            write_eval(Path(self.output_dir) / f"step-{state.global_step}", res, step=state.global_step)
        state.log_history.append({"step": state.global_step, **{f"tofu/{k}": v for k, v in res["summary"].items()}})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if 0 in self.steps and state.global_step == 0:
            self._run(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self._run(state, model)
