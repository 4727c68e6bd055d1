"""The npo-tofu quickstart: a smoke run with tiny settings in the default suite, the full run marked slow."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from negalign.evaluation.claims import check_claims
from negalign.quickstarts import npo_tofu

KEYS = ("forget_quality", "model_utility", "forget_rouge", "forget_truth_ratio")
NAMES = ("finetuned", "retain", "ga", "grad_diff", "npo", "npo_rt", "simnpo")


def _args(argv):
    parser = argparse.ArgumentParser()
    npo_tofu.add_arguments(parser)
    return parser.parse_args(argv)


def _check(out):
    res = json.loads((out / "results.json").read_text())
    for name in NAMES:
        for key in KEYS:
            assert key in res["metrics"]["methods"][name], (name, key)
            assert res["metrics"]["methods"][name][key] is not None, (name, key)
    assert (out / "fq_vs_mu.png").stat().st_size > 1000
    # SPEC §8: a list of {claim, difference, ci_low, ci_high, verdict, n_items, seeds} (the old code wrote a dict of
    # booleans, which check_claims refuses)
    check_claims(res["claims"])
    assert [c["claim"].split(" ")[0] for c in res["claims"]] == ["GA", "NPO+RT", "NPO+RT", "NPO+RT", "NPO+RT", "NPO+RT",
                                                                 "NPO+RT"]
    assert all(c["seeds"] == res["seeds"] for c in res["claims"])
    assert set(res["forget_quality_per_seed"]) == set(NAMES[2:])
    table_md = (out / "table.md").read_text()
    assert all(c["claim"] in table_md for c in res["claims"])
    return res


def test_quickstart_smoke_tiny_settings(shared_data, tmp_path):
    # every stage (data, two fine-tunings, five unlearning runs with in-training evaluation for each of two seeds,
    # table, claims, JSON, plot) with settings too small to mean anything: this checks the wiring, not the claim
    t = time.time()
    args = _args(["--output-dir", str(tmp_path / "qs"), "--data", str(shared_data / "tofu"), "--size", "tiny",
                  "--retain-authors", "1", "--knowledge-items", "3", "--sft-epochs", "1", "--unlearn-steps", "1",
                  "--eval-every", "1", "--eval-items", "3", "--max-new-tokens", "4", "--batch-size", "2",
                  "--sft-batch-size", "16", "--seeds", "2"])
    assert npo_tofu.main(args) == 0
    res = _check(tmp_path / "qs")
    assert "forget01" in res["data"] and res["curves"]["npo"][0]["step"] == 0 and res["curves"]["npo"][-1]["step"] == 1
    # the second seed's unlearning runs have their own folder and seed (data order and training), pooled in the claims;
    # the fine-tuned model they start from is the one shared model
    assert res["seeds"] == [0, 1] and all(len(v) == 2 for v in res["forget_quality_per_seed"].values())
    second = json.loads((tmp_path / "qs" / "seed1" / "npo_rt" / "results.json").read_text())["recipe"]
    assert second["training"]["seed"] == 1 and second["data"]["seed"] == 1
    assert second["model"]["name_or_path"] == str(tmp_path / "qs" / "finetuned")
    print(f"smoke run: {time.time() - t:.0f}s")


def test_quickstart_synthetic_fallback_builds_a_tofu_shaped_folder(tmp_path):
    folder, what = npo_tofu.build_mini_tofu(tmp_path, None, 2, synthetic=True)
    assert "synthetic" in what
    from negalign.evaluation.tofu import load_eval_rows

    rows = load_eval_rows(str(folder), "forget01")
    assert len(rows["forget"]) == 12 and all(len(r["perturbed_answer"]) == 3 for r in rows["forget"])
    from negalign.data.tofu import TofuData

    loader = TofuData(path=str(folder), forget_split="forget01", retain_split="retain99")
    assert len(loader.forget_rows()) == 12 and len(loader.retain_rows()) > 12


@pytest.mark.slow
def test_quickstart_full(shared_data, tmp_path):
    args = _args(["--output-dir", str(tmp_path / "qs"), "--data", str(shared_data / "tofu")])
    assert npo_tofu.main(args) == 0
    res = _check(tmp_path / "qs")
    # the measured claims are reported, not asserted (docs table); only the fine-tuning must have taken hold:
    # the fine-tuned model puts more probability on the forget answers than the model that never saw them
    assert res["methods"]["finetuned"]["forget_prob"] > res["methods"]["retain"]["forget_prob"]


# ------------------------------------------------------------------------------------------------------------------
# the claims (negalign.quickstarts.tofu_claims): per-item values built by hand, no model
# ------------------------------------------------------------------------------------------------------------------


def _item(q, prob=0.5, rouge=0.5, tr=1.0):
    return {"question": q, "prob": prob, "rouge_l_recall": rouge, "truth_ratio": tr}


def _evaluation(forget_tr, utility=0.5, forget_rouge=0.5):
    """A TOFU evaluation's ``items``: forget questions with the given truth ratios, 4 retain + 2 + 2 utility items
    with every component ``utility`` (truth ratio 1 − utility, so max(0, 1 − R) = utility too)."""
    retain_rouge = utility
    return {"forget": [_item(f"f{i}", rouge=forget_rouge, tr=r) for i, r in enumerate(forget_tr)],
            "retain": [_item(f"r{i}", utility, retain_rouge, 1 - utility) for i in range(4)],
            "real_authors": [_item(f"a{i}", utility, utility, 1 - utility) for i in range(2)],
            "world_facts": [_item(f"w{i}", utility, utility, 1 - utility) for i in range(2)]}


def test_utility_score_and_truth_ratio_distance_by_hand():
    from negalign.quickstarts.tofu_claims import truth_ratio_distance, utility_scores

    ev = {"retain": [_item("r", 0.5, 0.2, 0.4)], "real_authors": [_item("a", 0.9, 0.3, 1.5)], "world_facts": []}
    # (0.5 + 0.2 + max(0, 1 − 0.4)) / 3 = 1.3 / 3; (0.9 + 0.3 + max(0, 1 − 1.5)) / 3 = 0.4
    assert utility_scores(ev) == pytest.approx([1.3 / 3, 0.4])
    # matched by question, not position; |log e − log 1| = 1, |log e^-2 − log 1| = 2 (a factor e either way is 1)
    import math

    ev = {"forget": [_item("x", tr=math.e), _item("y", tr=math.exp(-2))]}
    ret = {"forget": [_item("y", tr=1.0), _item("x", tr=1.0)]}
    assert truth_ratio_distance(ev, ret) == pytest.approx([1.0, 2.0])


def test_forget_quality_claim_verdicts():
    import numpy as np

    from negalign.quickstarts.tofu_claims import forget_quality_claim

    ret = np.linspace(0.5, 1.5, 20)
    # the retain model's own truth ratios: KS p = 1 on every resample → FQ − 0.05 = 0.95 exactly, reproduced
    same = forget_quality_claim("same", [ret, ret], ret, seeds=[0, 1], n_resamples=199)
    assert same["difference"] == pytest.approx(0.95) and same["ci_low"] == pytest.approx(0.95)
    assert same["verdict"] == "reproduced" and same["n_items"] == 20 and same["seeds"] == [0, 1]
    # wholly above the retain model's on every question (and so on every resample): D = 1, p = 2 / C(40, 20) ≈ 1e-11
    far = forget_quality_claim("far", [ret + 10], ret, seeds=[3], n_resamples=199)
    assert far["verdict"] == "contradicted" and far["ci_high"] < -0.049
    # 3 questions: even wholly separated samples give p = 2 / C(6, 3) = 0.1 ≥ 0.05, so the test cannot reject and
    # the claim is not decided although every resample is ≥ 0.05
    tiny = forget_quality_claim("tiny", [[10.0, 11.0, 12.0]], [1.0, 2.0, 3.0], seeds=[0], n_resamples=199)
    assert tiny["ci_low"] >= 0.0 and tiny["verdict"] == "inconclusive"


def test_claims_pool_seeds_and_share_the_finetuned_model():
    from negalign.quickstarts.tofu_claims import npo_tofu_claims

    ret_tr = [0.5 + 0.05 * i for i in range(20)]
    items = {"finetuned": _evaluation([10 * r for r in ret_tr], utility=0.6, forget_rouge=0.9),
             "retain": _evaluation(ret_tr),
             # GA: utility 0.1 in seed 0 and 0.3 in seed 1 → mean 0.2, 0.4 below the fine-tuned model's 0.6
             "ga": [_evaluation(ret_tr, utility=0.1), _evaluation(ret_tr, utility=0.3)],
             "npo_rt": [_evaluation(ret_tr, utility=0.55, forget_rouge=0.2)] * 2}
    claims = npo_tofu_claims(items, seeds=[0, 1])
    check_claims(claims)
    by = {c["claim"].split(" (")[0]: c for c in claims}
    assert all(c["seeds"] == [0, 1] for c in claims)
    ga = by["GA utility < fine-tuned"]
    assert ga["difference"] == pytest.approx(-0.4) and ga["n_items"] == 8 and ga["verdict"] == "reproduced"
    # 0.55 − 0.8 × 0.6 = +0.07 on every item, for the utility score and the retain ROUGE-L alike
    assert by["NPO+RT utility ≥ 0.8 × fine-tuned"]["difference"] == pytest.approx(0.07)
    assert by["NPO+RT retain ROUGE-L ≥ 0.8 × fine-tuned"]["difference"] == pytest.approx(0.07)
    assert by["NPO+RT forget ROUGE-L < fine-tuned"]["difference"] == pytest.approx(-0.7)
    # fine-tuned truth ratios are 10× the retain model's (distance log 10), NPO+RT's equal them (distance 0)
    import math

    near = [c for c in claims if c["claim"].startswith("NPO+RT forget truth ratio")][0]
    assert near["difference"] == pytest.approx(-math.log(10)) and near["verdict"] == "reproduced"
    fq = [c for c in claims if "forget quality" in c["claim"]][0]
    assert fq["difference"] == pytest.approx(0.95) and fq["verdict"] == "reproduced"
