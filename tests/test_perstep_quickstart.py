"""``negalign quickstart perstep-arith``: a smoke run with tiny settings (default suite) and the full run (slow)."""

import json
import sys
import time

import pytest
import torch

from negalign.evaluation.claims import check_claims
from negalign.quickstarts.perstep_arith import METHODS


def _run(monkeypatch, argv):
    from negalign.cli import main

    before = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["negalign", *argv])  # the quickstart dispatcher reads the chosen name from argv
    try:
        return main(argv)
    finally:
        torch.set_num_threads(before)


def _check(out, amounts):
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == set(METHODS)
    for name, m in res["methods"].items():
        assert 0.0 <= m["test_accuracy"] <= 1.0, name
        assert set(m["by_amount"]) >= {str(a) for a in amounts}, name
    assert (out / "accuracy_vs_positives.png").stat().st_size > 1000
    table = (out / "table.md").read_text()
    assert all(f"| {name} |" in table for name in METHODS)
    assert res["quickstart"] == "perstep-arith" and "versions" in res
    check_claims(res["claims"])
    assert "| claim | difference | 95% CI | verdict |" in table
    return res


def test_quickstart_smoke(monkeypatch, tmp_path):
    out = tmp_path / "qs"
    t = time.time()
    rc = _run(monkeypatch, ["quickstart", "perstep-arith", "--output-dir", str(out), "--amounts", "8,16",
                            "--sft-multipliers", "4", "--num-steps", "2", "--test-size", "8", "--sft-steps", "6",
                            "--kit-size", "tiny",
                            "--samples-per-prompt", "2", "--num-continuations", "2", "--rl-epochs", "1",
                            "--batch-size", "8"])
    assert rc == 0
    res = _check(out, [8, 16])
    assert res["methods"]["sft"]["by_amount"].keys() >= {"8", "16", "32"}  # SFT alone also at 4x the smallest amount
    # per-step methods really estimated step values and built first-pit pairs
    assert res["prep"]["perstep_dpo_n8"]["samples"] == 16 and "mean_first_pit" in res["prep"]["perstep_dpo_n8"]
    # one verdict per comparison on the 8 test problems; the difference is that of the reported accuracies
    claims = {c["claim"]: c for c in res["claims"]}
    assert set(claims) == {"perstep_dpo accuracy > SFT accuracy (N=8 positives each)",
                           "perstep_awr accuracy > SFT accuracy (N=8 positives each)",
                           "perstep_dpo accuracy > SFT accuracy (N=16 positives each)",
                           "perstep_awr accuracy > SFT accuracy (N=16 positives each)",
                           "rft accuracy > SFT accuracy (N=8)",
                           "dpo_full accuracy ≤ SFT accuracy (N=8: whole pairs do not beat SFT)"}  # no 8N=64 run
    assert all(c["n_items"] == 8 and c["seeds"] == [0] for c in claims.values())
    m = res["methods"]
    assert claims["rft accuracy > SFT accuracy (N=8)"]["difference"] == pytest.approx(
        m["rft"]["test_accuracy"] - m["sft"]["test_accuracy"])
    (bits,) = m["rft"]["correct_by_amount"]["8"]  # one string per seed, one character per test problem
    assert len(bits) == 8 and bits.count("1") / 8 == pytest.approx(m["rft"]["test_accuracy"])
    assert time.time() - t < 300


@pytest.mark.slow
def test_quickstart_full_run_in_budget(monkeypatch, tmp_path):
    out = tmp_path / "qs"
    t = time.time()
    assert _run(monkeypatch, ["quickstart", "perstep-arith", "--output-dir", str(out)]) == 0
    res = _check(out, [64, 128])
    assert res["methods"]["sft"]["by_amount"].keys() >= {"64", "128", "256"}
    assert time.time() - t < 20 * 60  # the budget on a 2-core CPU (the claim itself is reported, not asserted)
