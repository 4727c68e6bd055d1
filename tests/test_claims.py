"""negalign.evaluation.claims: paired bootstrap intervals and verdicts (hand-checkable cases)."""

import math

import numpy as np
import pytest

from negalign.evaluation.claims import (CLAIM_KEYS, check_claims, claims_table, paired_claim, paired_interval,
                                       two_way_interval, verdict)


def test_verdict_sides():
    assert verdict(0.1, 0.3, ">") == "reproduced" and verdict(0.1, 0.3, "<") == "contradicted"
    assert verdict(-0.3, -0.1, "≥") == "contradicted" and verdict(-0.3, -0.1, "<=") == "reproduced"
    assert verdict(-0.1, 0.1, ">") == "inconclusive" and verdict(-0.1, 0.1, "<") == "inconclusive"
    # "within 0.1 of": difference > -0.1
    assert verdict(-0.05, 0.02, ">", threshold=-0.1) == "reproduced"
    assert verdict(-0.3, -0.2, ">", threshold=-0.1) == "contradicted"
    assert verdict(float("nan"), float("nan"), ">") == "inconclusive" and verdict(None, None, "<") == "inconclusive"
    with pytest.raises(ValueError):
        verdict(0, 1, "=")


def test_large_clear_effect_is_reproduced_and_reversed_is_contradicted():
    # 50 problems: arm a solves 45, arm b 10 (b's solved ones a subset of a's): difference = 35/50 = 0.7 exactly
    a = np.array([1] * 45 + [0] * 5)
    b = np.array([1] * 10 + [0] * 40)
    c = paired_claim("a ≥ b", a, b, ">")
    assert set(c) == set(CLAIM_KEYS) and c["n_items"] == 50 and c["seeds"] == [0]
    assert c["difference"] == pytest.approx(0.7)
    assert 0.5 < c["ci_low"] < 0.7 < c["ci_high"] < 0.85 and c["verdict"] == "reproduced"
    r = paired_claim("b ≥ a", b, a, ">")
    assert r["difference"] == pytest.approx(-0.7) and r["verdict"] == "contradicted"
    assert paired_claim("b < a", b, a, "<")["verdict"] == "reproduced"


def test_zero_effect_with_noise_is_inconclusive():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, 200)
    b = a + np.tile([0.5, -0.5], 100)  # per-item noise that sums to exactly zero: difference 0
    c = paired_claim("a > b", a, b, ">")
    assert c["difference"] == pytest.approx(0.0, abs=1e-12)
    assert c["ci_low"] < 0 < c["ci_high"] and c["verdict"] == "inconclusive"


def test_interval_matches_normal_approximation():
    # d = a - b takes +1 on 60 items and -1 on 40 (n = 100): mean 0.2, sd = sqrt(1 - 0.04) = 0.98 (population),
    # so the normal 95% interval is 0.2 ± 1.96 · 0.98 / sqrt(100) = [0.008, 0.392]; the bootstrap agrees closely.
    a = np.array([1] * 60 + [0] * 40)
    b = np.array([0] * 60 + [1] * 40)
    diff, lo, hi, n, s = paired_interval(a, b)
    half = 1.96 * math.sqrt(1 - 0.2**2) / math.sqrt(100)
    assert diff == pytest.approx(0.2) and (n, s) == (100, 1)
    assert lo == pytest.approx(0.2 - half, abs=0.03) and hi == pytest.approx(0.2 + half, abs=0.03)


def test_same_inputs_same_interval():
    rng = np.random.default_rng(3)
    a, b = rng.random(40), rng.random(40)
    assert paired_claim("x", a, b) == paired_claim("x", a, b)
    assert paired_interval(a, b, random_state=0) != paired_interval(a, b, random_state=1)  # the seed is what fixes it


def test_several_seeds_resample_seeds_and_items():
    rng = np.random.default_rng(4)
    a, b = rng.random((3, 30)), rng.random((3, 30))
    pooled = paired_claim("a > b", a, b, seeds=[5, 6, 7])
    assert pooled["seeds"] == [5, 6, 7] and pooled["n_items"] == 30
    assert pooled["difference"] == pytest.approx(a.mean() - b.mean())
    assert pooled["ci_low"] < pooled["difference"] < pooled["ci_high"]
    assert (pooled["ci_low"], pooled["ci_high"]) == two_way_interval(a - b)  # the crossed bootstrap, same seed
    with pytest.raises(ValueError):
        paired_claim("x", a, b, seeds=[0])
    with pytest.raises(ValueError):
        paired_claim("x", a, b[:, :29])


def test_a_shift_common_to_one_seed_widens_the_interval():
    # d2o-toy's D2O − base by seed was −0.26 / −0.03 / −0.38. Make every item of seed s differ by exactly that shift
    # (plus item noise that is the same in every seed). The old rule averaged each item over the seeds first, so
    # each item's difference was the same −0.223 and the interval was a point: "decided" from three runs that
    # disagree by 0.35. Resampling the seeds too: the resampled mean is the mean of three draws from the shifts, and
    # P(all three draws = −0.38) = P(all = −0.03) = 1/27 ≈ 3.7 % > 2.5 %, so the percentile interval is exactly
    # [−0.38 + item part, −0.03 + item part] — with the item noise of mean 0 and small spread, about [−0.39, −0.02].
    shifts = np.array([-0.26, -0.03, -0.38])
    noise = np.random.default_rng(0).normal(0, 0.01, 40)
    noise -= noise.mean()
    b = np.zeros((3, 40))
    a = shifts[:, None] + noise[None, :]
    c = paired_claim("a < b", a, b, "<", seeds=[0, 1, 2])
    assert c["difference"] == pytest.approx(shifts.mean())
    assert c["ci_low"] == pytest.approx(-0.38, abs=0.01) and c["ci_high"] == pytest.approx(-0.03, abs=0.01)
    old_rule = paired_claim("a < b", a.mean(axis=0), b.mean(axis=0), "<")  # items averaged over seeds first
    assert old_rule["ci_high"] - old_rule["ci_low"] < 0.01 < c["ci_high"] - c["ci_low"]


def test_degenerate_inputs():
    c = paired_claim("a > b", [1, 1, 1], [0, 0, 0])  # every item differs by exactly 1: nothing to resample
    assert (c["difference"], c["ci_low"], c["ci_high"], c["verdict"]) == (1.0, 1.0, 1.0, "reproduced")
    same = paired_claim("a > b", [1, 0, 1], [1, 0, 1])
    assert same["ci_low"] == same["ci_high"] == 0.0 and same["verdict"] == "inconclusive"
    one = paired_claim("a > b", [1], [0])  # a single item has no interval
    assert one["ci_low"] is None and one["verdict"] == "inconclusive"
    # binary outcomes with few items (BCa can fail): still a finite interval
    few = paired_claim("a > b", [1, 0, 1, 1], [0, 0, 1, 0])
    assert few["ci_low"] is not None and few["ci_low"] <= few["difference"] <= few["ci_high"]


def test_schema_and_table():
    claims = [paired_claim("D2O harmful_rate < base harmful_rate", [0, 0.1, 0.2, 0.0], [0.5, 0.6, 0.4, 0.7], "<"),
              paired_claim("one item", [1], [0])]
    check_claims(claims)
    table = claims_table(claims)
    assert table.splitlines()[0] == "| claim | difference | 95% CI | verdict | items × seeds |"
    assert "| D2O harmful_rate < base harmful_rate | -0.475 |" in table and "**reproduced** | 4 × 1 |" in table
    assert "| one item | +1.000 | n/a | **inconclusive** | 1 × 1 |" in table
    with pytest.raises(ValueError):
        check_claims([{**claims[0], "verdict": "maybe"}])
    with pytest.raises(ValueError):
        check_claims({"d2o": True})
