"""The npo-tofu quickstart: a smoke run with tiny settings in the default suite, the full run marked slow."""

from __future__ import annotations

import argparse
import json
import time

import pytest

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
    assert set(res["claims"]) == {"npo_rt_forget_quality_above_finetuned", "npo_rt_utility_at_least_80pct_of_finetuned",
                                  "ga_loses_utility"}
    return res


def test_quickstart_smoke_tiny_settings(shared_data, tmp_path):
    # every stage (data, two fine-tunings, five unlearning runs with in-training evaluation, table, JSON, plot) with
    # settings too small to mean anything: this checks the wiring, not the claim
    t = time.time()
    args = _args(["--output-dir", str(tmp_path / "qs"), "--data", str(shared_data / "tofu"), "--size", "tiny",
                  "--retain-authors", "1", "--knowledge-items", "3", "--sft-epochs", "1", "--unlearn-steps", "1",
                  "--eval-every", "1", "--eval-items", "3", "--max-new-tokens", "4", "--batch-size", "2",
                  "--sft-batch-size", "16"])
    assert npo_tofu.main(args) == 0
    res = _check(tmp_path / "qs")
    assert "forget01" in res["data"] and res["curves"]["npo"][0]["step"] == 0 and res["curves"]["npo"][-1]["step"] == 1
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
