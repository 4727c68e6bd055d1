"""Tolerances for comparing two float32 computations of the same quantity that differ only in reduction order
(another process layout, other padding, another batch composition), derived from float32 noise instead of guessed.

Why not ``pytest.approx(rel=1e-4)`` on every metric: an aggregate such as the truth-ratio score ``mean(max(0, 1 - R))``
can be ~1e-3 on a tiny model, so a relative tolerance on it is far tighter than the noise of the log-probs it is made
of. Compare the per-item quantities first, with a bound that follows from the length of their sums, then each
aggregate with the absolute bound that propagates from those.

The noise model: one token's log-probability ``log_softmax(h W)[y]`` in float32, recomputed with another reduction
order, moves by a few units in the last place of the logits it is made of. Logits of these models are O(10) (ulp
~1e-6), so ``TOKEN_LOGP_NOISE = 2e-5`` is ~20 ulp per token: above what reduction order does (measured on the
2-process vs 1-process TOFU evaluation of tests/test_distributed.py: at most 1.1e-6 per token), far below what one
optimizer step changes (> 1e-3). A sum over ``n`` tokens may then move by ``n`` times that, a
mean over them by the same per-token amount.
"""

from __future__ import annotations

import math

import pytest

TOKEN_LOGP_NOISE = 2e-5


def _close(a: float, b: float, tol: float, what: str) -> None:
    assert abs(a - b) <= tol, f"{what}: {a!r} vs {b!r} differ by {abs(a - b):.3g} > {tol:.3g}"


def assert_tofu_evals_match(a: dict, b: dict, eps: float = TOKEN_LOGP_NOISE) -> None:
    """Two ``evaluate_tofu`` results of the same weights on the same items (``items`` and ``metrics``/``summary``),
    computed in different layouts. Per item: answer log-prob sums within ``len * eps``, length-normalised log-probs
    within ``eps``, greedy generations identical; then every aggregate within the bound that follows."""
    ma, mb = a.get("metrics", a.get("summary")), b.get("metrics", b.get("summary"))
    assert ma.keys() == mb.keys()
    bound: dict[str, float] = {}
    for kind, items_a in a["items"].items():
        items_b = b["items"][kind]
        assert [it["question"] for it in items_a] == [it["question"] for it in items_b], kind
        d_prob, d_tr = [], []
        for ia, ib in zip(items_a, items_b):
            what = f"{kind}: {ia['question'][:40]!r}"
            assert ia["answer_len"] == ib["answer_len"], what
            _close(ia["answer_logp"], ib["answer_logp"], ia["answer_len"] * eps, what + " answer_logp")
            _close(ia["answer_norm_logp"], ib["answer_norm_logp"], eps, what + " answer_norm_logp")
            if "correct_norm_logp" in ia:
                _close(ia["correct_norm_logp"], ib["correct_norm_logp"], eps, what + " correct_norm_logp")
            assert len(ia["perturbed_norm_logps"]) == len(ib["perturbed_norm_logps"]), what
            for pa, pb in zip(ia["perturbed_norm_logps"], ib["perturbed_norm_logps"]):
                _close(pa, pb, eps, what + " perturbed_norm_logp")
            # R = exp(mean perturbed - correct): the exponent moves by at most 2 eps
            r = ia["truth_ratio"]
            d_tr.append(r * math.expm1(2 * eps) + 1e-12)
            _close(r, ib["truth_ratio"], d_tr[-1], what + " truth_ratio")
            # forget / retain: exp(norm logp), moves by a factor e^eps; real_authors / world_facts: the option
            # probability p_true / (p_true + Σ p_perturbed) is a ratio of such terms, moving by a factor e^(2 eps)
            d_prob.append(ia["prob"] * math.expm1(eps if kind in ("forget", "retain") else 2 * eps) + 1e-12)
            _close(ia["prob"], ib["prob"], d_prob[-1], what + " prob")
            if "generated" in ia:  # greedy decoding: the same tokens unless two logits tie within the noise
                assert ia["generated"] == ib["generated"], what
                assert ia["rouge_l_recall"] == ib["rouge_l_recall"], what
        n = len(items_a)
        bound[f"{kind}_prob"] = sum(d_prob) / n
        bound[f"{kind}_rouge"] = 0.0
        if kind == "forget":  # mean(min(R, 1/R)): d/dR of 1/R is 1/R² where R > 1
            bound["forget_truth_ratio"] = sum(d * max(1.0, 1.0 / it["truth_ratio"] ** 2)
                                              for d, it in zip(d_tr, items_a)) / n
        else:  # mean(max(0, 1 - R)) is 1-Lipschitz in each R
            bound[f"{kind}_truth_ratio"] = sum(d_tr) / n
    if "model_utility" in ma and ma["model_utility"]:
        # H = 9 / Σ 1/x_i: dH/dx_i = H² / (9 x_i²), so |ΔH| <= Σ H² Δx_i / (9 x_i²) (to first order; Δx_i << x_i)
        h = ma["model_utility"]
        parts = [f"{k}_{m}" for k in ("retain", "real_authors", "world_facts") for m in ("prob", "rouge", "truth_ratio")]
        bound["model_utility"] = 1.01 * sum(h * h * bound[p] / (9 * ma[p] ** 2) for p in parts)
    for key, value in ma.items():
        if value is None or key == "forget_quality":  # forget quality is None here unless a retain model is given
            assert mb[key] == (None if value is None else pytest.approx(value)), key
            continue
        _close(value, mb[key], bound.get(key, 0.0) + 1e-12, key)
