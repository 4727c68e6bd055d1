"""TOFU metric functions (negalign.evaluation.tofu) on hand-computed values."""

from __future__ import annotations

import math

import pytest

from negalign.evaluation import tofu


def test_length_normalized_prob():
    # log P = -6 over |y| = 3 tokens: P^(1/3) = exp(-2)
    assert tofu.length_normalized_prob(-6.0, 3) == pytest.approx(math.exp(-2.0))


def test_truth_ratio_is_geometric_mean_of_perturbed_over_correct():
    # perturbed length-normalised probs 0.1 and 0.4 -> geometric mean sqrt(0.04) = 0.2; correct 0.5 -> R = 0.4
    r = tofu.truth_ratio(math.log(0.5), [math.log(0.1), math.log(0.4)])
    assert r == pytest.approx(0.4)


def test_truth_ratio_scores():
    # utility score mean(max(0, 1 - R)) for R = 0.4, 2.0, 1.0: (0.6 + 0 + 0) / 3 = 0.2
    assert tofu.truth_ratio_score([0.4, 2.0, 1.0]) == pytest.approx(0.2)
    # forget score mean(min(R, 1/R)) for R = 0.5, 4.0, 1.0: (0.5 + 0.25 + 1) / 3 = 0.58333
    assert tofu.forget_truth_ratio([0.5, 4.0, 1.0]) == pytest.approx(1.75 / 3)


def test_option_probability():
    # P_true 0.6, perturbed 0.1 + 0.2 + 0.3 = 0.6: 0.6 / 1.2 = 0.5
    assert tofu.option_probability(0.6, [0.1, 0.2, 0.3]) == pytest.approx(0.5)


def test_rouge_l_recall():
    # reference "the cat sat on the mat" (6 tokens); prediction "the cat on a mat": LCS = the, cat, on, mat = 4 -> 4/6
    assert tofu.rouge_l_recall("the cat on a mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert tofu.rouge_l_recall("", "anything") == 0.0


def test_model_utility_is_the_harmonic_mean_of_nine():
    # eight 0.5s and one 0.25: 9 / (8·2 + 4) = 9/20 = 0.45
    assert tofu.model_utility([0.5] * 8 + [0.25]) == pytest.approx(0.45)
    assert tofu.model_utility([0.5] * 8 + [0.0]) == 0.0
    with pytest.raises(ValueError, match="9 numbers"):
        tofu.model_utility([0.5] * 8)


def test_forget_quality_is_the_ks_pvalue():
    # identical samples: KS statistic 0 -> p = 1
    assert tofu.forget_quality([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    # fully separated samples of 3 and 3: D = 1; exact two-sided p = 2 / C(6,3) = 2/20 = 0.1
    assert tofu.forget_quality([0.1, 0.2, 0.3], [0.7, 0.8, 0.9]) == pytest.approx(0.1)
    # 4 vs 4 separated: 2 / C(8,4) = 2/70
    assert tofu.forget_quality([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
