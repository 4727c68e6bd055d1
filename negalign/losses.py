"""The objectives of negalign, as pure functions on tensors.

Every function here takes plain tensors and returns the loss *before reduction* (per example ``[B]`` or per token
``[B, T]``) unless its name says otherwise. Nothing here knows about models, tokenizers or trainers: the trainers in
``negalign.trainers`` gather log-probabilities and call these functions, so the maths lives in exactly one place.

Conventions (as in SPEC.md):
    ``*_logps`` of shape ``[B]`` are sequence log-probabilities ``log π(y|x) = Σ_t log π(y_t | x, y_<t)`` summed over
    response tokens only; of shape ``[B, T]`` they are per-token log-probabilities with a ``mask`` of the same shape
    (1 for response tokens, 0 for prompt and padding).

Only ``torch`` and ``math`` are imported, by design (see DESIGN.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "ga_loss",
    "npo_loss",
    "npo_weight",
    "simnpo_loss",
    "idk_dpo_loss",
    "nll_loss",
    "kl_loss",
    "dpo_loss",
    "d2o_loss",
    "madpo_weights",
    "madpo_loss",
    "nsr_advantages",
    "ppo_clip_loss",
    "nft_loss",
    "nft_prompt_weight",
    "straight_through_clamp_min",
    "step_advantages",
    "first_pit",
    "masked_mean",
]

NSR_MODES = ("psr", "nsr", "w_reinforce", "reinforce")


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (over all of them, or along ``dim``)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


# --------------------------------------------------------------------------------------------------------------------
# 1. Unlearning: GA, NPO, SimNPO, IdkDPO and the retain terms (Zhang et al. 2024; Fan et al. 2024; Maini et al. 2024)
# --------------------------------------------------------------------------------------------------------------------


def ga_loss(policy_logps: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "example") -> torch.Tensor:
    """Gradient ascent on the forget set: ``L = + log π_θ(y|x)`` (minimising it raises the NLL).

    ``policy_logps``: ``[B]`` per-example log-probability (the TOFU baseline uses the token mean), or ``[B, T]``
    per-token log-probabilities together with ``mask`` ``[B, T]``, in which case the token mean is taken.
    Returns ``[B]``. Unbounded below: the "catastrophic collapse" NPO was designed to avoid.

    ``reduction="pooled"`` (with ``[B, T]`` and ``mask``) returns a scalar ``Σ_{b,t} m·log π / Σ_{b,t} m``: one token
    mean over the whole batch, i.e. minus Hugging Face's model loss, which open-unlearning's ``GradAscent`` uses.
    """
    if mask is not None:
        if reduction == "pooled":
            return pooled_token_mean(policy_logps, mask)  # []
        return masked_mean(policy_logps, mask, dim=-1)  # [B]
    return policy_logps  # [B]


def pooled_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Σ_{b,t} m_bt · v_bt / Σ_{b,t} m_bt`` over a ``[B, T]`` batch (long answers weigh more than short ones).

    This is the reduction of Hugging Face's causal-LM loss (``CrossEntropyLoss(ignore_index=-100)`` mean over every
    labelled token of the batch). Returns a scalar; 0 when the mask is empty."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)  # []


def npo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative Preference Optimization (Zhang et al. 2024, arXiv:2404.05868), per example.

        L = -(2/β) · log σ(-β · (log π_θ(y|x) - log π_ref(y|x)))  =  (2/β) · log(1 + (π_θ/π_ref)^β)

    ``policy_logps``, ``ref_logps``: ``[B]`` summed response log-probs. Returns ``[B]``, bounded below by 0 and
    increasing in ``log π_θ``. Its gradient is ``npo_weight(...) · ∇ log π_θ``.
    """
    log_ratio = policy_logps - ref_logps  # [B]
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio)  # [B]


def npo_weight(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO's implicit per-example gradient weight ``w = 2 π_θ^β / (π_θ^β + π_ref^β) = 2 σ(β (log π_θ - log π_ref))``.

    ``w = 1`` at π_θ = π_ref, and ``w → 0`` as π_θ falls below π_ref (NPO slows itself down). Returns ``[B]``, detached.
    """
    return (2.0 * torch.sigmoid(beta * (policy_logps - ref_logps))).detach()  # [B]


def simnpo_loss(
    policy_logps: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float = 0.0, placement: str = "outside"
) -> torch.Tensor:
    """SimNPO (Fan et al. 2024, arXiv:2410.07163): reference-free, length-normalised NPO, per example.

        L = -(2/β) · log σ( -(β/|y|) · log π_θ(y|x) - γ )            placement="outside" (the paper's equation)
        L = -(2/β) · log σ( β · (-(1/|y|) · log π_θ(y|x) - γ) )      placement="inside"  (the authors' code and
                                                                      open-unlearning: the margin δ is scaled by β)

    ``policy_logps``: ``[B]`` summed response log-probs; ``lengths``: ``[B]`` number of response tokens ``|y|``.
    Defaults in the paper: β = 4.5, γ = 0 (where both placements agree). Returns ``[B]``.
    """
    lengths = lengths.to(policy_logps.dtype).clamp(min=1.0)
    if placement == "inside":
        return -(2.0 / beta) * F.logsigmoid(beta * (-policy_logps / lengths - gamma))  # [B]
    if placement != "outside":
        raise ValueError(f"placement must be 'outside' or 'inside', got {placement!r}")
    return -(2.0 / beta) * F.logsigmoid(-(beta / lengths) * policy_logps - gamma)  # [B]


def nll_loss(logps: torch.Tensor, mask: torch.Tensor, reduction: str = "example") -> torch.Tensor:
    """Token-mean negative log-likelihood per example: ``-mean_t log π(y_t|·)``. ``[B, T]`` → ``[B]``.

    The ``nll`` retain term (NPO+RT, and GradDiff when paired with ``ga``). ``reduction="pooled"`` returns the scalar
    ``-Σ m·log π / Σ m`` over the whole batch (Hugging Face's model loss; open-unlearning's retain NLL)."""
    if reduction == "pooled":
        return -pooled_token_mean(logps, mask)  # []
    return -masked_mean(logps, mask, dim=-1)  # [B]


def kl_loss(ref_logprobs: torch.Tensor, policy_logprobs: torch.Tensor) -> torch.Tensor:
    """Token-level ``KL(π_ref ‖ π_θ) = Σ_v π_ref(v) (log π_ref(v) - log π_θ(v))``, the ``kl`` retain term.

    ``ref_logprobs``, ``policy_logprobs``: ``[..., V]`` full-vocabulary log-probabilities (log-softmax outputs) at the
    same positions. Returns ``[...]`` (one value per position; mask and reduce outside). Callers should pass chunks of
    positions (see ``negalign.logprobs.chunked_token_kl``) rather than a whole batch's vocabulary at once.
    """
    return (ref_logprobs.exp() * (ref_logprobs - policy_logprobs)).sum(-1)


def kl_batchmean(kl_per_position: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.kl_div(..., reduction="batchmean")`` on logits flattened to ``[B·T, V]``: the per-position
    KL ``[B, T]`` (every position, prompt and padding included) summed and divided by ``B·T``. open-unlearning's
    ``compute_kl_divergence`` (the ``KL`` retain term). Returns a scalar."""
    return kl_per_position.sum() / max(kl_per_position.numel(), 1)  # []


def idk_dpo_loss(
    policy_alternate_logps: torch.Tensor,
    ref_alternate_logps: torch.Tensor,
    policy_forget_logps: torch.Tensor,
    ref_forget_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """IdkDPO (TOFU, Maini et al. 2024, arXiv:2401.06121; open-unlearning's ``DPO`` trainer), per example: DPO with a
    refusal ("I don't know", TOFU's ``idontknow.jsonl``) as the chosen answer and the forget answer as the rejected
    one, scaled by 2/β as NPO is (open-unlearning's ``compute_dpo_loss``):

        L = -(2/β) · log σ( β · [(log π_θ(y_idk|x) - log π_ref(y_idk|x)) - (log π_θ(y_f|x) - log π_ref(y_f|x))] )

    All inputs ``[B]`` summed answer log-probs. Returns ``[B]`` = ``(2/β) · dpo_loss(...)``; without the refusal
    terms it is ``npo_loss``.
    """
    return (2.0 / beta) * dpo_loss(policy_alternate_logps, ref_alternate_logps, policy_forget_logps, ref_forget_logps,
                                   beta)  # [B]


# --------------------------------------------------------------------------------------------------------------------
# 2. Preference losses: DPO, D²O (Duan et al. 2024), MADPO (2025)
# --------------------------------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO's sigmoid loss (Rafailov et al. 2023), per example.

        L = -log σ( β · [(log π_θ(y_w) - log π_ref(y_w)) - (log π_θ(y_l) - log π_ref(y_l))] )

    All inputs ``[B]`` summed response log-probs. Returns ``[B]``.
    """
    h_w = policy_chosen_logps - ref_chosen_logps  # [B]
    h_l = policy_rejected_logps - ref_rejected_logps  # [B]
    return -F.logsigmoid(beta * (h_w - h_l))  # [B]


def d2o_loss(
    policy_pos_logps: torch.Tensor,
    ref_pos_logps: torch.Tensor,
    policy_neg_logps: torch.Tensor,
    ref_neg_logps: torch.Tensor,
    beta: float,
    alpha: float,
) -> torch.Tensor:
    """Distributional Dispreference Optimization (Duan et al. 2024, arXiv:2403.03419), per example.

        L = -log σ( (β/K) · Σ_i [log π_θ(y_i|x) - log π_ref(y_i|x)]  -  α · [log π_θ(y_l|x) - log π_ref(y_l|x)] )

    ``policy_pos_logps``, ``ref_pos_logps``: ``[B, K]`` summed log-probs of the K self-generated anchors ``y_i ~ π_ref``;
    ``policy_neg_logps``, ``ref_neg_logps``: ``[B]`` of the human negative ``y_l``. Returns ``[B]``.
    With K = 1 and α = β this is ``dpo_loss`` with the anchor as chosen and the negative as rejected.
    """
    k = policy_pos_logps.shape[-1]
    pos = (beta / k) * (policy_pos_logps - ref_pos_logps).sum(-1)  # [B]
    neg = alpha * (policy_neg_logps - ref_neg_logps)  # [B]
    return -F.logsigmoid(pos - neg)  # [B]


def madpo_weights(
    margins: torch.Tensor,
    c_min: float = 0.5,
    c_max: float = 2.0,
    lam: float = 1.0,
    tau: float = math.log(999),
) -> torch.Tensor:
    """MADPO per-instance weights from reward-model margins (Margin-Adaptive DPO, 2025).

        c(|Δ|) = c_min + (c_max - c_min) / (1 + ((c_max - 1)/(1 - c_min)) · exp(λ(|Δ| - τ)))
        w      = σ(c·Δ) / σ(Δ)   if Δ > -τ,   else 1

    ``margins``: ``[B]`` detached ``Δ = RM(x, y_w) - RM(x, y_l)``. Returns ``[B]`` weights. ``c_min = c_max = 1`` gives
    ``w = 1`` (plain DPO). Pairs with a small margin get ``c ≈ c_max`` (sharper), confident ones ``c → c_min``.
    """
    margins = margins.detach().float()
    if c_min == c_max:
        c = torch.full_like(margins, c_min)
    elif c_min == 1.0:  # the ratio (c_max - 1)/(1 - c_min) is infinite: c sits at c_min
        c = torch.full_like(margins, c_min)
    else:
        ratio = (c_max - 1.0) / (1.0 - c_min)
        c = c_min + (c_max - c_min) / (1.0 + ratio * torch.exp(lam * (margins.abs() - tau)))  # [B]
    # σ(cΔ)/σ(Δ) computed in log space for stability at large |Δ|
    w = torch.exp(F.logsigmoid(c * margins) - F.logsigmoid(margins))  # [B]
    return torch.where(margins > -tau, w, torch.ones_like(w))  # [B]


def madpo_loss(
    policy_chosen_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    weights: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """MADPO: DPO's per-example loss times the precomputed ``madpo_weights``. Returns ``[B]``."""
    return weights.detach() * dpo_loss(
        policy_chosen_logps, ref_chosen_logps, policy_rejected_logps, ref_rejected_logps, beta
    )


# --------------------------------------------------------------------------------------------------------------------
# 3. NSR / PSR / W-REINFORCE (Zhu et al. 2025) and the PPO surrogate
# --------------------------------------------------------------------------------------------------------------------


def nsr_advantages(rewards: torch.Tensor, mode: str, lam: float = 0.1) -> torch.Tensor:
    """Constant per-response advantages of Zhu et al. 2025 (arXiv:2506.01347): no group baseline, no std scaling.

        mode          correct (r=1)   incorrect (r=0)
        psr           +1              0
        nsr           0               -1
        w_reinforce   +λ              -1
        reinforce     +1              -1

    ``rewards``: ``[N]`` binary verifier rewards (a reward ≥ 0.5 counts as correct). Returns ``[N]`` float advantages.
    An all-wrong group keeps its −1 advantages (GRPO would give it zero).
    """
    if mode not in NSR_MODES:
        raise ValueError(f"unknown NSR mode {mode!r}; expected one of {NSR_MODES}")
    correct = (rewards >= 0.5).to(torch.float32)
    pos_weight = {"psr": 1.0, "nsr": 0.0, "w_reinforce": lam, "reinforce": 1.0}[mode]
    neg_weight = {"psr": 0.0, "nsr": 1.0, "w_reinforce": 1.0, "reinforce": 1.0}[mode]
    return pos_weight * correct - neg_weight * (1.0 - correct)  # [N]


def ppo_clip_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, epsilon: float = 0.2
) -> torch.Tensor:
    """PPO's clipped surrogate, per token (Schulman et al. 2017).

        L_t = -min( ρ_t A, clip(ρ_t, 1-ε, 1+ε) A ),   ρ_t = π_θ(y_t|·) / π_old(y_t|·)

    ``logps``, ``old_logps``: ``[B, T]``; ``advantages``: ``[B]`` (one per response) or ``[B, T]`` (per token).
    Returns ``[B, T]``; mask and reduce outside. On-policy (ρ = 1) its gradient is ``-A ∇log π_θ``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # [B, 1]
    ratio = torch.exp(logps - old_logps.detach())  # [B, T]
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon)
    return -torch.min(ratio * advantages, clipped * advantages)  # [B, T]


# --------------------------------------------------------------------------------------------------------------------
# 4. NFT — Negative-aware Fine-Tuning (Chen et al. 2025)
# --------------------------------------------------------------------------------------------------------------------


def straight_through_clamp_min(values: torch.Tensor, minimum: float) -> torch.Tensor:
    """``max(v, minimum)`` in the forward pass, identity in the backward pass (NFT's ``max_g``)."""
    return values + (values.clamp(min=minimum) - values).detach()


def nft_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    correct: torch.Tensor,
    correct_rate: torch.Tensor,
    mask: torch.Tensor,
    eps_pos: float = 0.0,
    eps_neg: float = 1.0,
) -> torch.Tensor:
    """NFT's per-token loss (Chen et al. 2025, arXiv:2505.18116), before prompt weighting and reduction.

        R_t = exp(min(log π_θ(y_t|·) - log π_old(y_t|·), 10))
        correct response:    L_t = -log max_g(R_t, ε_pos)
        incorrect response:  L_t = -log max_g((1 - r̂·R_t) / (1 - r̂), ε_neg)

    where ``max_g`` is a straight-through clamp (forward ``max(v, ε)``, gradient of ``v``). The incorrect branch trains
    the *implicit negative policy* ``(π_old - r̂ π_θ)/(1 - r̂)`` by maximum likelihood on the wrong answers.

    ``logps``, ``old_logps``, ``mask``: ``[B, T]``; ``correct``: ``[B]`` bool/0-1; ``correct_rate``: ``[B]`` the
    (clamped) group accuracy r̂ of each response's prompt. Returns ``[B, T]`` with masked positions 0.
    On-policy (π_θ = π_old) its gradient, weighted by ω = 1 - r̂, is the Dr. GRPO gradient with ``A = r - r̂``.
    """
    log_ratio = torch.clamp(logps - old_logps.detach(), max=10.0)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    r_hat = correct_rate.to(logps.dtype).unsqueeze(-1)  # [B, 1]
    pos = -torch.log(straight_through_clamp_min(ratio, eps_pos))  # [B, T]
    neg_ratio = (1.0 - r_hat * ratio) / (1.0 - r_hat)  # [B, T]
    neg = -torch.log(straight_through_clamp_min(neg_ratio, eps_neg))  # [B, T]
    is_correct = correct.to(torch.bool).unsqueeze(-1)  # [B, 1]
    loss = torch.where(is_correct, pos, neg)  # [B, T]
    return loss * mask.to(loss.dtype)


# NFT's prompt weights ω(r̂) by name (``NFTConfig.omega``); r̂ ``[B]`` is the clamped group accuracy, ω is ``[B]``
NFT_OMEGAS = {
    "one_minus_r": lambda r: 1.0 - r,  # the reference
    "sqrt": lambda r: torch.sqrt((1.0 - r) / r),
    "one": torch.ones_like,
}


def nft_prompt_weight(correct_rate: torch.Tensor, scheme: str = "one_minus_r") -> torch.Tensor:
    """NFT's prompt weight ω from the clamped group accuracy r̂: ``1 - r̂`` (default), ``sqrt((1-r̂)/r̂)`` or ``1``
    (the table ``NFT_OMEGAS``)."""
    if scheme not in NFT_OMEGAS:
        raise ValueError(f"unknown NFT prompt weight {scheme!r}; expected one of {tuple(NFT_OMEGAS)}")
    return NFT_OMEGAS[scheme](correct_rate)


# --------------------------------------------------------------------------------------------------------------------
# 6. Per-step negatives (Setlur et al. 2024)
# --------------------------------------------------------------------------------------------------------------------


def step_advantages(values: torch.Tensor) -> torch.Tensor:
    """Per-step advantages ``A_i = Q_i - Q_{i-1}`` (Setlur et al. 2024, arXiv:2406.14532).

    ``values``: ``[..., m+1]`` Monte-Carlo values of the prefixes, ``Q_0`` (bare prompt) first. Returns ``[..., m]``.
    """
    return values[..., 1:] - values[..., :-1]


def first_pit(values: torch.Tensor) -> torch.Tensor:
    """The first pit: 0-based index of the step whose prefix value is lowest (the first on ties).

    ``values``: ``[..., m+1]`` including ``Q_0``. Returns ``[...]`` long, i.e. ``argmin(values[..., 1:])``.
    """
    return torch.argmin(values[..., 1:], dim=-1)


# --------------------------------------------------------------------------------------------------------------------
# 6b. Per-step advantage weighting (Setlur et al. 2024): the `perstep_awr` objective
# --------------------------------------------------------------------------------------------------------------------


def step_weights(token_advantages: torch.Tensor, weighting: str = "linear", beta: float = 1.0,
                 max_weight: float = 20.0) -> torch.Tensor:
    """Per-token weights from per-token step advantages (each token carries its step's ``A_i``).

    ``linear``: ``w = A`` (SPEC §6: the loss is ``-Σ_i A_i · log π_θ(step_i | x, steps_<i)``, negative steps pushed down);
    ``exp``: ``w = min(exp(A/β), max_weight)`` (advantage-weighted regression, every weight positive).
    ``token_advantages``: ``[B, T]``. Returns ``[B, T]``, detached."""
    a = token_advantages.detach()
    if weighting == "linear":
        return a
    if weighting == "exp":
        return torch.clamp(torch.exp(a / beta), max=max_weight)
    raise ValueError(f"unknown step weighting {weighting!r}; expected 'linear' or 'exp'")


def step_weighted_nll(logps: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantage-weighted log-likelihood per token: ``L_t = -w_t · log π_θ(y_t | x, y_<t)``, 0 outside ``mask``.

    ``logps``, ``weights``, ``mask``: ``[B, T]`` (``weights`` from ``step_weights``, treated as constants).
    Summed over the tokens of step ``i`` this is ``-A_i · log π_θ(step_i | x, steps_<i)``. Its gradient with respect
    to ``logps[b, t]`` is ``-w[b, t]`` on the mask. Returns ``[B, T]``; reduce outside."""
    return -(weights.detach() * logps) * mask.to(logps.dtype)


__all__ += ["step_weights", "step_weighted_nll"]
