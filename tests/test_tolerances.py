"""The layout-comparison helper of tests/tolerances.py must pass float32 reduction-order noise and catch real changes."""

import copy
import math

import pytest

from negalign.evaluation.tofu import model_utility, truth_ratio, truth_ratio_score
from tests.tolerances import TOKEN_LOGP_NOISE, assert_tofu_evals_match


def _eval(shift: float = 0.0) -> dict:
    """A two-split evaluation whose retain truth ratios are all just under 1, so the truth-ratio score is ~1e-3 (the
    shape of the CI failure: a near-zero aggregate). ``shift`` moves every perturbed log-prob by that much."""
    items, metrics = {}, {}
    for kind in ("retain", "real_authors", "world_facts"):
        rows = []
        for i in range(6):
            correct, pert = -2.0 - 0.01 * i, [-2.0 - 0.01 * i - 0.001 + shift] * 3
            r = truth_ratio(correct, pert)
            rows.append({"question": f"q{i}", "answer_len": 10, "answer_logp": 10 * correct,
                         "answer_norm_logp": correct, "perturbed_norm_logps": pert, "truth_ratio": r,
                         "prob": math.exp(correct), "generated": "x", "rouge_l_recall": 0.5})
        items[kind] = rows
        metrics[f"{kind}_prob"] = sum(r["prob"] for r in rows) / 6
        metrics[f"{kind}_rouge"] = 0.5
        metrics[f"{kind}_truth_ratio"] = truth_ratio_score([r["truth_ratio"] for r in rows])
    metrics["model_utility"] = model_utility(
        [metrics[f"{k}_{m}"] for k in ("retain", "real_authors", "world_facts") for m in ("prob", "rouge", "truth_ratio")])
    return {"items": items, "metrics": metrics}


def test_passes_reduction_order_noise_on_a_near_zero_aggregate():
    a, b = _eval(), _eval(shift=2e-7)  # 2e-7 per token: the size of the noise CI saw
    assert a["metrics"]["retain_truth_ratio"] < 2e-3
    # the old comparison failed on exactly this: a relative tolerance on a value near 0
    assert b["metrics"]["retain_truth_ratio"] != pytest.approx(a["metrics"]["retain_truth_ratio"], rel=1e-4, abs=1e-7)
    assert_tofu_evals_match(a, b)


def test_catches_a_real_change():
    a = _eval()
    with pytest.raises(AssertionError, match="perturbed_norm_logp"):
        assert_tofu_evals_match(a, _eval(shift=10 * TOKEN_LOGP_NOISE))
    b = copy.deepcopy(a)
    b["metrics"]["model_utility"] *= 1.1  # an aggregate that does not follow from its items
    with pytest.raises(AssertionError, match="model_utility"):
        assert_tofu_evals_match(a, b)
    b = copy.deepcopy(a)
    b["items"]["retain"][0]["generated"] = "y"
    with pytest.raises(AssertionError, match="retain"):
        assert_tofu_evals_match(a, b)
