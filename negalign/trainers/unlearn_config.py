"""Configuration and method presets of the unlearning trainer (``negalign.trainers.unlearn``).

``METHOD_DEFAULTS`` maps ``ga, grad_diff, npo, npo_rt, npo_kl, simnpo`` to their settings (SPEC.md §1). The paper's
names are kept: ``npo`` is the forget term only, ``npo_rt`` adds the retain NLL (open-unlearning's ``NPO`` trainer
config is ``npo_rt``: ``configs/trainer/NPO.yaml`` has ``alpha: 1.0, retain_loss_type: NLL``). Where the reference
implementations differ from negalign's defaults the difference is a field below (``loss_reduction``,
``kl_reduction``, ``simnpo_delta_placement``); docs/unlearning.md has the table of settings against open-unlearning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from negalign.trainers import compat

compat.check("trl.trainer.base_config")  # TRL's private _BaseConfig (negalign.trainers.compat lists every such name)
from trl.trainer.base_config import _BaseConfig  # noqa: E402

from negalign import methods as _methods
from negalign.trainers.unlearn_terms import FORGET_TERMS

FORGET_LOSSES = tuple(FORGET_TERMS)  # the forget-term table (negalign.trainers.unlearn_terms)
RETAIN_LOSSES = ("none", "nll", "kl")
REF_CACHE_NAME = "ref_forget_logps.json"
# logprob_checkpoint_head -> token_logps(checkpoint_head=...): None recomputes only across more than one chunk
HEAD_CHECKPOINT = {"auto": None, "always": True, "never": False}


@dataclass
class UnlearnConfig(_BaseConfig):
    """TRL configuration of :class:`UnlearnTrainer`: TRL's base config plus the unlearning objective."""

    forget_loss: str = field(
        default="npo",
        metadata={"help": "Forget term: ga (gradient ascent, token-mean log-prob), npo (Zhang et al. 2024), simnpo "
                  "(Fan et al. 2024, reference-free, length-normalised) or idk_dpo (DPO of a refusal over the forget "
                  "answer, scaled by 2/β; TOFU's baseline). The table: negalign.trainers.unlearn_terms."},
    )
    retain_loss: str = field(
        default="none",
        metadata={"help": "Retain term: none, nll (token-mean NLL of retain answers; NPO+RT, GradDiff) or kl "
                  "(token-level KL(π_ref ‖ π_θ) on retain answer tokens; needs a reference forward on retain rows)."},
    )
    beta: float = field(default=0.1, metadata={"help": "β of NPO (paper 0.1), SimNPO (paper 4.5) or IdkDPO "
                                                   "(open-unlearning 0.1)."})
    simnpo_gamma: float = field(
        default=0.0, metadata={"help": "SimNPO reward margin (paper γ, open-unlearning δ; default 0)."}
    )
    simnpo_delta_placement: str = field(
        default="inside",
        metadata={"help": "Where SimNPO's margin sits: inside (σ(β·(-log π/|y| - δ)): open-unlearning's and the "
                  "authors' code) or outside (σ(-β·log π/|y| - γ): the paper's equation)."},
    )
    loss_reduction: str = field(
        default="example",
        metadata={"help": "Token reduction of the ga forget term and the nll retain term: example (token mean per "
                  "example, then the batch mean) or pooled (one token mean over the whole micro-batch: Hugging Face's "
                  "model loss, which open-unlearning's GradAscent / GradDiff / NPO retain term use)."},
    )
    kl_reduction: str = field(
        default="answer_tokens",
        metadata={"help": "Reduction of the kl retain term: answer_tokens (mean KL over the retain answer tokens) or "
                  "batchmean (open-unlearning: KL summed over every position of the padded retain batch [B, L], "
                  "prompt and padding included, divided by B·L)."},
    )
    gamma: float = field(default=1.0, metadata={"help": "Weight γ of the forget term in L = γ·L_forget + α·L_retain."})
    alpha: float = field(default=1.0, metadata={"help": "Weight α of the retain term in L = γ·L_forget + α·L_retain."})
    max_length: int = field(
        default=512, metadata={"help": "Maximum tokens of prompt + answer; longer answers are cut at the end."}
    )
    logprob_chunk_size: int = field(
        default=1024, metadata={"help": "Response positions per LM-head chunk (bounds the logits held in memory)."}
    )
    logprob_checkpoint_head: str = field(
        default="auto",
        metadata={"help": "Recompute each LM-head chunk in the backward (activation checkpointing) or keep its "
                  "logits: always (at most logprob_chunk_size × V logits held; negalign's behaviour before "
                  "2026-12-03), never (no second head forward; N × V float32 logits held for the batch's N answer "
                  "tokens), or auto (recompute only when the answer tokens fill more than one chunk). Measured on "
                  "SmolLM2-135M (V = 49,152), 2026-12-03: with one chunk the recompute left the peak unchanged "
                  "(1,889 vs 1,889 MiB in bench logprob-memory; 2,793 MiB either way in bench step-cost) and cost a "
                  "second head forward (an NPO+RT step on 8 + 8 TOFU rows: 22.9 vs 20.8 s CPU), hence auto."},
    )
    ref_batch_size: int | None = field(
        default=None,
        metadata={"help": "Batch size of the one-off reference pass over the forget set (default: "
                  "2 × per_device_train_batch_size)."},
    )
    ref_cache: bool = field(
        default=True,
        metadata={"help": "Save the forget reference log-probs to output_dir/ref_forget_logps.json and reuse them when "
                  "the model and data fingerprint match (resume skips the reference pass)."},
    )
    tofu_eval_steps: list[int] | None = field(
        default=None,
        metadata={"help": "Global steps at which to run the TOFU evaluation during training (needs data.name tofu); "
                  "results go to output_dir/tofu_eval/step-N/results.json."},
    )
    tofu_eval_retain_results: str | None = field(
        default=None,
        metadata={"help": "The retain model's TOFU eval on the same forget split, for forget quality during training: "
                  "negalign's results.json or open-unlearning's TOFU_EVAL.json."},
    )
    tofu_eval_max_new_tokens: int = field(
        default=200, metadata={"help": "Greedy generation length of the TOFU ROUGE during training (TOFU: 200)."}
    )
    tofu_eval_max_items: int | None = field(
        default=None, metadata={"help": "Evaluate at most N items per TOFU split during training (faster)."}
    )

    def __post_init__(self):
        if self.forget_loss not in FORGET_LOSSES:
            raise ValueError(f"forget_loss must be one of {FORGET_LOSSES}, got {self.forget_loss!r}")
        if self.retain_loss not in RETAIN_LOSSES:
            raise ValueError(f"retain_loss must be one of {RETAIN_LOSSES}, got {self.retain_loss!r}")
        for name, value, allowed in (("simnpo_delta_placement", self.simnpo_delta_placement, ("inside", "outside")),
                                     ("loss_reduction", self.loss_reduction, ("example", "pooled")),
                                     ("kl_reduction", self.kl_reduction, ("answer_tokens", "batchmean")),
                                     ("logprob_checkpoint_head", self.logprob_checkpoint_head,
                                      ("auto", "always", "never"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        super().__post_init__()


CONFIG_CLASS = UnlearnConfig
# Method presets (SPEC.md §1): the recipe's method.name picks one; explicit method keys override it.
METHOD_DEFAULTS = {
    "ga": {"forget_loss": "ga", "retain_loss": "none"},
    "grad_diff": {"forget_loss": "ga", "retain_loss": "nll"},
    "npo": {"forget_loss": "npo", "retain_loss": "none", "beta": 0.1},
    "npo_rt": {"forget_loss": "npo", "retain_loss": "nll", "beta": 0.1},
    "npo_kl": {"forget_loss": "npo", "retain_loss": "kl", "beta": 0.1},
    # open-unlearning's configs/trainer/SimNPO.yaml: β 4.5, δ 0, forget weight γ 0.125, α 1, retain NLL
    # (the authors' TOFU config: npo_coeff 0.1375, β 2.5)
    "simnpo": {"forget_loss": "simnpo", "retain_loss": "nll", "beta": 4.5, "simnpo_gamma": 0.0, "gamma": 0.125},
    # open-unlearning's configs/trainer/DPO.yaml (IdkDPO): β 0.1, γ 1, α 1, retain NLL
    "idk_dpo": {"forget_loss": "idk_dpo", "retain_loss": "nll", "beta": 0.1},
}

_RETAIN_NAMES = {"none": "", "nll": "+RT", "kl": "+KL"}
_TITLES = {("ga", "nll"): "GradDiff", ("idk_dpo", "nll"): "IdkDPO"}  # the names the methods go by
# the papers live in the method records (negalign.methods); TRL's ``_paper`` shape {"title", "id", "citation"}
NPO_PAPER = _methods.NPO.trl()
SIMNPO_PAPER = _methods.SIMNPO.trl()
TOFU_PAPER_CITATION = _methods.TOFU.bibtex


def method_title(forget_loss: str, retain_loss: str) -> str:
    if (forget_loss, retain_loss) in _TITLES:
        return _TITLES[forget_loss, retain_loss]
    return FORGET_TERMS[forget_loss].title + _RETAIN_NAMES[retain_loss]
