"""negalign.losses pinned to hand-derived numbers and to the exact properties of SPEC.md."""

import math

import pytest
import torch

from negalign import losses as L


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# ---------------------------------------------------------------- NPO family


def test_npo_value_at_reference_is_4_ln2_over_beta_times_half():
    # π_θ = π_ref: L = -(2/β) log σ(0) = (2/β) ln 2. With β = 0.1: 20 ln 2 = 13.8629...
    out = L.npo_loss(t(-5.0), t(-5.0), beta=0.1)
    assert out.item() == pytest.approx(20 * math.log(2), rel=1e-12)


def test_npo_value_off_reference():
    # log-ratio = -2, β = 0.5: L = (2/0.5) log(1 + e^{0.5·(-2)}) = 4 ln(1 + e^{-1}) = 4 · 0.3132617 = 1.2530468
    out = L.npo_loss(t(-7.0), t(-5.0), beta=0.5)
    assert out.item() == pytest.approx(4 * math.log(1 + math.exp(-1)), rel=1e-12)


def test_npo_gradient_is_weight_times_grad_logp():
    # dL/dlogπ_θ = (2/β)·β·σ(β Δ) = 2σ(βΔ) = w = 2π^β/(π^β + π_ref^β)
    pol = t(-3.0, -10.0, 0.5).requires_grad_()
    ref = t(-4.0, -2.0, 0.5)
    beta = 0.7
    L.npo_loss(pol, ref, beta).sum().backward()
    p, r = pol.detach().exp(), ref.exp()
    expected = 2 * p**beta / (p**beta + r**beta)
    torch.testing.assert_close(pol.grad, expected)
    torch.testing.assert_close(L.npo_weight(pol, ref, beta), expected)
    assert pol.grad[2].item() == pytest.approx(1.0)  # w = 1 at π_θ = π_ref


def test_npo_gradient_tends_to_ga_as_beta_to_zero():
    # GA on the sequence-summed log-prob has gradient 1 per example; NPO's is w = 2σ(βΔ) = 1 + βΔ/2 + O(β³), so the
    # gap to GA shrinks linearly in β: |w - 1| ≈ β|Δ|/2.
    ref = t(-8.0, -2.0)
    for beta in (1e-2, 1e-4, 1e-6):
        pol = t(-3.0, -30.0).requires_grad_()
        L.npo_loss(pol, ref, beta=beta).sum().backward()
        gap = (pol.grad - 1).abs()
        expected = beta * (pol.detach() - ref).abs() / 2
        torch.testing.assert_close(gap, expected, rtol=1e-2, atol=0)


def test_npo_bounded_below_and_increasing_while_ga_is_unbounded():
    x = torch.linspace(-200, 5, 50, dtype=torch.float64)
    npo = L.npo_loss(x, torch.zeros_like(x), beta=0.1)
    assert (npo >= 0).all() and (npo[1:] > npo[:-1]).all()
    assert npo[0].item() < 1e-6  # tends to 0 as log π_θ → -∞
    ga = L.ga_loss(x)
    assert ga[0].item() == -200.0  # keeps falling with log π_θ: no floor


def test_ga_token_mean_with_mask():
    lp = t(-1.0, -2.0, -9.0).reshape(1, 3)
    mask = t(1, 1, 0).reshape(1, 3)
    assert L.ga_loss(lp, mask).item() == pytest.approx(-1.5)  # mean of the two unmasked tokens


def test_simnpo_hand_value():
    # logπ = -6 over |y| = 3, β = 2, γ = 1: arg = -(2/3)(-6) - 1 = 3; L = -(2/2) log σ(3) = log(1 + e^{-3}) = 0.0485874
    out = L.simnpo_loss(t(-6.0), t(3.0), beta=2.0, gamma=1.0)
    assert out.item() == pytest.approx(math.log(1 + math.exp(-3)), rel=1e-12)


def test_nll_and_kl():
    lp = torch.log(t(0.5, 0.25, 0.9)).reshape(1, 3)
    mask = t(1, 1, 0).reshape(1, 3)
    # token-mean NLL of the two unmasked tokens: (ln 2 + ln 4)/2 = 1.5 ln 2
    assert L.nll_loss(lp, mask).item() == pytest.approx(1.5 * math.log(2))
    # KL(p‖q) for p = (1/2, 1/2), q = (1/4, 3/4): ½ ln 2 + ½ ln(2/3)
    p, q = torch.log(t(0.5, 0.5)), torch.log(t(0.25, 0.75))
    assert L.kl_loss(p, q).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert L.kl_loss(p, p).item() == pytest.approx(0.0)


# ---------------------------------------------------------------- DPO, D²O, MADPO


def test_dpo_hand_value():
    # h_w = -1 - (-2) = 1, h_l = -3 - (-1) = -2, β = 0.5: L = -log σ(0.5 · 3) = log(1 + e^{-1.5})
    out = L.dpo_loss(t(-1.0), t(-2.0), t(-3.0), t(-1.0), beta=0.5)
    assert out.item() == pytest.approx(math.log(1 + math.exp(-1.5)), rel=1e-12)


def test_d2o_with_k1_alpha_eq_beta_is_dpo():
    g = torch.Generator().manual_seed(0)
    pw, rw, pl, rl = (torch.randn(16, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    d2o = L.d2o_loss(pw[:, None], rw[:, None], pl, rl, beta=0.3, alpha=0.3)
    torch.testing.assert_close(d2o, L.dpo_loss(pw, rw, pl, rl, beta=0.3))


def test_d2o_hand_value_k3():
    # anchors' log-ratios (1, 2, 3) → mean 2; β = 0.3 → 0.6. negative log-ratio 4, α = 0.1 → 0.4. L = -log σ(0.2)
    pos = t(1.0, 2.0, 3.0).reshape(1, 3)
    out = L.d2o_loss(pos, torch.zeros_like(pos), t(4.0), t(0.0), beta=0.3, alpha=0.1)
    assert out.item() == pytest.approx(math.log(1 + math.exp(-0.2)), rel=1e-12)


def test_madpo_c1_is_dpo():
    margins = t(-10.0, -1.0, 0.0, 0.3, 5.0, 20.0)
    w = L.madpo_weights(margins, c_min=1.0, c_max=1.0)
    torch.testing.assert_close(w, torch.ones(6))
    pw, rw, pl, rl = t(-1, -2, -3, -4, -5, -6), t(-2, -2, -2, -2, -2, -2), t(-3, -3, -1, -2, -9, -1), t(-1, -1, -1, -1, -1, -1)
    torch.testing.assert_close(L.madpo_loss(pw, rw, pl, rl, w.double(), 0.1), L.dpo_loss(pw, rw, pl, rl, 0.1))


def test_madpo_weight_hand_values():
    # defaults c_min 0.5, c_max 2, λ 1, τ = ln 999; ratio (2-1)/(1-0.5) = 2.
    # |Δ| = τ: c = 0.5 + 1.5/(1 + 2·1) = 1.0 → w = σ(Δ)/σ(Δ) = 1
    tau = math.log(999)
    assert L.madpo_weights(t(tau)).item() == pytest.approx(1.0, rel=1e-6)
    # Δ = 0: c = 0.5 + 1.5/(1 + 2/999) and w = σ(0)/σ(0) = 1 whatever c is
    assert L.madpo_weights(t(0.0)).item() == pytest.approx(1.0, rel=1e-6)
    # Δ = 1: c = 0.5 + 1.5/(1 + 2·e^{1-τ}) ; w = σ(c)/σ(1)
    c = 0.5 + 1.5 / (1 + 2 * math.exp(1 - tau))
    sig = lambda z: 1 / (1 + math.exp(-z))
    assert L.madpo_weights(t(1.0)).item() == pytest.approx(sig(c) / sig(1.0), rel=1e-6)
    # Δ ≤ -τ: w = 1 (the pair is left alone)
    assert L.madpo_weights(t(-10.0)).item() == pytest.approx(1.0)


# ---------------------------------------------------------------- NSR family


def test_nsr_advantage_table():
    r = t(1.0, 0.0)
    assert L.nsr_advantages(r, "psr").tolist() == [1.0, 0.0]
    assert L.nsr_advantages(r, "nsr").tolist() == [0.0, -1.0]
    assert L.nsr_advantages(r, "w_reinforce", lam=0.1).tolist() == pytest.approx([0.1, -1.0])
    assert L.nsr_advantages(r, "reinforce").tolist() == [1.0, -1.0]
    with pytest.raises(ValueError, match="unknown NSR mode"):
        L.nsr_advantages(r, "grpo")


def test_nsr_keeps_all_wrong_group_where_grpo_zeroes_it():
    rewards = torch.zeros(4)
    assert (L.nsr_advantages(rewards, "nsr") == -1).all()
    grpo = rewards - rewards.mean()  # group baseline: every advantage vanishes
    assert (grpo == 0).all()
    # the NSR gradient on an all-wrong group is non-zero: -A ∇logπ with A = -1
    logps = torch.full((4, 3), -1.0, requires_grad=True)
    L.ppo_clip_loss(logps, logps.detach(), L.nsr_advantages(rewards, "nsr")).sum().backward()
    assert torch.allclose(logps.grad, torch.ones(4, 3))  # d/dlogπ of -(ρ·(-1)) = +ρ = 1


def test_ppo_clip_hand_values():
    # ρ = e^{0.5} = 1.6487 > 1.2, A = +1: clipped to 1.2 → L = -1.2 and no gradient through the clip
    lp = torch.tensor([[0.5]], requires_grad=True)
    out = L.ppo_clip_loss(lp, torch.zeros(1, 1), torch.tensor([1.0]))
    assert out.item() == pytest.approx(-1.2)
    out.sum().backward()
    assert lp.grad.item() == 0.0
    # A = -1, ρ = e^{0.5}: min(-ρ, -1.2) = -ρ → L = ρ, gradient ρ (unclipped side)
    lp2 = torch.tensor([[0.5]], requires_grad=True)
    out2 = L.ppo_clip_loss(lp2, torch.zeros(1, 1), torch.tensor([-1.0]))
    out2.sum().backward()
    assert out2.item() == pytest.approx(math.exp(0.5)) and lp2.grad.item() == pytest.approx(math.exp(0.5))


# ---------------------------------------------------------------- NFT


def test_nft_on_policy_gradient_equals_dr_grpo():
    # Strictly on-policy (old = θ, R = 1), ω = 1 - r̂: ∇ Σ ω·L_t = -Σ (r - r̂) ∇log π_θ(y_t)  (Dr. GRPO, no std)
    g = torch.Generator().manual_seed(1)
    logps = (torch.randn(6, 5, generator=g, dtype=torch.float64) - 2).requires_grad_()
    mask = (torch.rand(6, 5, generator=g) > 0.2).double()
    correct = torch.tensor([1, 0, 0, 1, 1, 0])
    r_hat = torch.tensor([0.5, 0.5, 0.25, 0.75, 0.6, 0.98], dtype=torch.float64)
    per_tok = L.nft_loss(logps, logps.detach(), correct, r_hat, mask)
    omega = L.nft_prompt_weight(r_hat)
    (omega[:, None] * per_tok).sum().backward()
    nft_grad = logps.grad.clone()

    logps.grad = None
    adv = correct.double() - r_hat
    (-(adv[:, None] * logps * mask)).sum().backward()
    torch.testing.assert_close(nft_grad, logps.grad)


def test_nft_straight_through_clamp_off_policy():
    # Incorrect response, r̂ = 0.5, log ratio ln 1.5 → R = 1.5: v = (1 - 0.75)/0.5 = 0.5 < ε_neg = 1 → forward
    # L = -log 1 = 0, but the gradient passes through v: dL/dlogπ = -(1/max(v,ε)) · dv/dlogπ = -(1/1)·(-r̂R/(1-r̂)) = 1.5
    lp = torch.tensor([[math.log(1.5)]], dtype=torch.float64, requires_grad=True)
    out = L.nft_loss(lp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([0]), torch.tensor([0.5], dtype=torch.float64),
                     torch.ones(1, 1))
    assert out.item() == pytest.approx(0.0)
    out.sum().backward()
    assert lp.grad.item() == pytest.approx(1.5)
    # Correct response at R = 1.5: L = -log 1.5, gradient -1
    lp2 = torch.tensor([[math.log(1.5)]], dtype=torch.float64, requires_grad=True)
    out2 = L.nft_loss(lp2, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([1]), torch.tensor([0.5], dtype=torch.float64),
                      torch.ones(1, 1))
    assert out2.item() == pytest.approx(-math.log(1.5))
    out2.sum().backward()
    assert lp2.grad.item() == pytest.approx(-1.0)


def test_nft_incorrect_unclamped_value_and_ratio_cap():
    # R = 0.5 (θ lowered the wrong token), r̂ = 0.5: v = (1 - 0.25)/0.5 = 1.5 > ε → L = -ln 1.5
    out = L.nft_loss(torch.tensor([[math.log(0.5)]]), torch.zeros(1, 1), torch.tensor([0]), torch.tensor([0.5]), torch.ones(1, 1))
    assert out.item() == pytest.approx(-math.log(1.5), rel=1e-6)
    # log ratio 50 is capped at 10 for a correct response: L = -10
    out = L.nft_loss(torch.tensor([[50.0]]), torch.zeros(1, 1), torch.tensor([1]), torch.tensor([0.5]), torch.ones(1, 1))
    assert out.item() == pytest.approx(-10.0)


def test_nft_prompt_weights():
    r = torch.tensor([0.2, 0.5])
    torch.testing.assert_close(L.nft_prompt_weight(r), torch.tensor([0.8, 0.5]))
    torch.testing.assert_close(L.nft_prompt_weight(r, "sqrt"), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(L.nft_prompt_weight(r, "one"), torch.ones(2))


# ---------------------------------------------------------------- per-step


def test_step_advantages_and_first_pit_hand_example():
    # Q_0..Q_4 = 0.6, 0.8, 0.2, 0.2, 0.0 → A = (+0.2, -0.6, 0, -0.2); lowest prefix value is step 3 (0-based: Q_4)
    q = t(0.6, 0.8, 0.2, 0.2, 0.0)
    torch.testing.assert_close(L.step_advantages(q), t(0.2, -0.6, 0.0, -0.2))
    assert L.first_pit(q).item() == 3
    # ties: Q = (1, 0.4, 0, 0, 0.4) → the first step reaching the minimum 0 is step 1
    assert L.first_pit(t(1.0, 0.4, 0.0, 0.0, 0.4)).item() == 1
    # batched
    qb = torch.stack([q, t(1.0, 0.4, 0.0, 0.0, 0.4)])
    assert L.first_pit(qb).tolist() == [3, 1]
    assert L.step_advantages(qb).shape == (2, 4)


# ---------------------------------------------------------------- pass@k (SPEC §7)


def test_pass_at_k_exact_values():
    from negalign.evaluation import pass_at_k

    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # c/n at k = 1
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 1 - 3/10 = 0.7
    assert pass_at_k(100, 3, 50) == pytest.approx(1 - math.comb(97, 50) / math.comb(100, 50))
    assert pass_at_k(8, 6, 4) == 1.0  # fewer than k wrong samples: some draw of k always contains a correct one
    # stable where the binomials overflow a float
    assert 0.0 < pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
