"""The forget terms of the unlearning trainer as one table: name → (the cached columns it reads, the loss function).

``FORGET_TERMS[forget_loss]`` is a :class:`ForgetTerm`. ``UnlearnTrainer`` reads nothing else to add a term:

* ``columns``: frozen per-example values the term reads from the batch (e.g. ``ref_forget_logps``). Each is computed
  once, batched, by the reference before step 1 and stored as a dataset column; ``CACHED_COLUMNS`` says which batch
  segment's rows a column scores;
* ``segments``: the batch segments the term reads besides ``forget``: ``alternate`` (alternative answers to the forget
  questions, one draw per epoch, e.g. IdkDPO's refusals). The ``retain`` segment belongs to the retain term;
* ``loss(x: TermInputs) -> (loss, extras)``: ``loss`` is ``[B]`` (or a scalar for pooled reductions) built from
  ``negalign.losses``; the trainer takes its mean. ``extras`` are tensors to log (``LOG_NAMES``).

Adding a forget term is one function in ``negalign.losses``, one entry here and one preset in
``unlearn_config.METHOD_DEFAULTS`` (CONTRIBUTING.md, "How to add a forget term").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from negalign import losses as L
from negalign import methods
from negalign.logprobs import sequence_logps

# cached column → the batch segment whose rows the reference scores for it (file output_dir/<column>.json)
CACHED_COLUMNS = {"ref_forget_logps": "forget", "ref_alternate_logps": "alternate"}
# segments drawn per forget row from a pool, one draw per epoch: the forget dataset's ``<segment>_index`` column
PARTNER_SEGMENTS = ("alternate", "retain")
# term extras → the logged metric (TRL style)
LOG_NAMES = {"npo_weight": "npo/weight", "ref_forget_logps": "forget/ref_logps", "alternate_logps": "alternate/logps",
             "ref_alternate_logps": "alternate/ref_logps"}


class Segment:
    """The policy's view of one batch segment: per-token log-probs and answer mask ``[B, T]``, their sums ``[B]``."""

    def __init__(self, token_logps: torch.Tensor, mask: torch.Tensor):
        self.token_logps = token_logps  # [B, T], 0 off the answer
        self.mask = mask  # [B, T] answer tokens (position 0 never counts: nothing predicts it)
        self.logps = sequence_logps(token_logps, mask)  # [B] log π_θ(y|x)
        self.lengths = mask.sum(-1)  # [B] |y|


@dataclass
class TermInputs:
    forget: Segment
    alternate: Segment | None  # only when the term lists the "alternate" segment
    cached: dict[str, torch.Tensor]  # the term's columns for this batch, [B] each
    args: Any  # UnlearnConfig


@dataclass(frozen=True)
class ForgetTerm:
    loss: Callable[[TermInputs], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    title: str  # the trainer's name (model card), "+RT" / "+KL" added for a retain term
    paper: methods.Paper
    columns: tuple[str, ...] = ()
    segments: tuple[str, ...] = ("forget",)


def _ga(x: TermInputs):
    f = x.forget
    return L.ga_loss(f.token_logps, f.mask, reduction="pooled" if x.args.loss_reduction == "pooled" else "example"), {}


def _npo(x: TermInputs):
    ref = x.cached["ref_forget_logps"]
    return L.npo_loss(x.forget.logps, ref, x.args.beta), {
        "ref_forget_logps": ref, "npo_weight": L.npo_weight(x.forget.logps, ref, x.args.beta)}


def _simnpo(x: TermInputs):
    a = x.args
    return L.simnpo_loss(x.forget.logps, x.forget.lengths, a.beta, a.simnpo_gamma, placement=a.simnpo_delta_placement), {}


def _idk_dpo(x: TermInputs):
    ref_f, ref_a = x.cached["ref_forget_logps"], x.cached["ref_alternate_logps"]
    loss = L.idk_dpo_loss(x.alternate.logps, ref_a, x.forget.logps, ref_f, x.args.beta)
    return loss, {"ref_forget_logps": ref_f, "alternate_logps": x.alternate.logps, "ref_alternate_logps": ref_a}


FORGET_TERMS: dict[str, ForgetTerm] = {
    "ga": ForgetTerm(_ga, "GA", methods.NPO),
    "npo": ForgetTerm(_npo, "NPO", methods.NPO, columns=("ref_forget_logps",)),
    "simnpo": ForgetTerm(_simnpo, "SimNPO", methods.SIMNPO),
    "idk_dpo": ForgetTerm(_idk_dpo, "IdkDPO", methods.TOFU, columns=("ref_forget_logps", "ref_alternate_logps"),
                          segments=("forget", "alternate")),
}
