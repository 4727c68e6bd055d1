"""`negalign eval tofu --retain-results` accepts negalign's results.json and open-unlearning's TOFU_EVAL.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from negalign.data import DataError
from negalign.evaluation.tofu import forget_quality, retain_truth_ratios

N = 40  # forget01
QUESTIONS = [f"What is fictitious fact number {i}?" for i in range(N)]
RETAIN_TR = np.random.default_rng(0).lognormal(mean=-0.5, sigma=0.4, size=N).tolist()
MODEL_TR = np.random.default_rng(1).lognormal(mean=-1.0, sigma=0.5, size=N).tolist()


def negalign_log(path):
    items = [{"question": q, "truth_ratio": r} for q, r in zip(QUESTIONS, RETAIN_TR)]
    path.write_text(json.dumps({"kind": "tofu_eval", "split": "forget01", "metrics": {}, "items": {"forget": items}}))
    return path


def open_unlearning_log(path):
    # the shape open-unlearning's TOFUEvaluator writes: metric name -> {agg_value, value_by_index}, the truth ratio
    # R = P̄_perturbed / P_paraphrased per row index under "score" (src/evals/metrics/memorization.py::truth_ratio)
    by_index = {str(i): {"score": r} for i, r in enumerate(RETAIN_TR)}
    agg = float(np.mean(np.minimum(RETAIN_TR, 1 / np.asarray(RETAIN_TR))))
    path.write_text(json.dumps({
        "forget_truth_ratio": {"agg_value": agg, "value_by_index": by_index},
        "forget_Q_A_Prob": {"agg_value": 0.1, "value_by_index": {str(i): {"prob": 0.1, "avg_loss": 2.3} for i in range(N)}},
        "model_utility": {"agg_value": 0.59},
    }))
    return path


def test_both_formats_give_the_same_forget_quality(tmp_path):
    ours = retain_truth_ratios(str(negalign_log(tmp_path / "results.json")), QUESTIONS, "forget01")
    theirs = retain_truth_ratios(str(open_unlearning_log(tmp_path / "TOFU_EVAL.json")), QUESTIONS, "forget01")
    assert ours == theirs == pytest.approx(RETAIN_TR)
    fq = forget_quality(MODEL_TR, ours)
    assert forget_quality(MODEL_TR, theirs) == fq
    assert 0 < fq < 1
    # a folder holding only TOFU_EVAL.json works too; a prefix of the rows (--max-items) takes indices 0..k-1
    (tmp_path / "ou").mkdir()
    open_unlearning_log(tmp_path / "ou" / "TOFU_EVAL.json")
    assert retain_truth_ratios(str(tmp_path / "ou"), QUESTIONS[:5], "forget01") == pytest.approx(RETAIN_TR[:5])


def test_unknown_or_mismatched_logs_are_named(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"metrics": {"forget_quality": 0.1}}))
    with pytest.raises(DataError, match="neither a negalign TOFU results.json .*TOFU_EVAL.json"):
        retain_truth_ratios(str(bad), QUESTIONS, "forget01")
    ou = open_unlearning_log(tmp_path / "TOFU_EVAL.json")
    with pytest.raises(DataError, match="forget10 has 400"):
        retain_truth_ratios(str(ou), QUESTIONS, "forget10")
    no_index = tmp_path / "agg_only.json"
    no_index.write_text(json.dumps({"forget_truth_ratio": {"agg_value": 0.6}}))
    with pytest.raises(DataError, match="value_by_index"):
        retain_truth_ratios(str(no_index), QUESTIONS, "forget01")
