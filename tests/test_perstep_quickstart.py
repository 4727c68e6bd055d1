"""``negalign quickstart perstep-arith``: a smoke run with tiny settings (default suite) and the full run (slow)."""

import json
import sys
import time

import numpy as np
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
    # the positives curve: SFT at N, 2N, 4N (N = 8, multiplier 4), every other method at N placed on it
    curve = res["positives_curve"]
    assert curve["amount"] == 8 and curve["n_items"] == 8 and curve["seeds"] == [0]
    assert [p["positives"] for p in curve["sft"]] == [8, 16, 32] and [p["multiple"] for p in curve["sft"]] == [1, 2, 4]
    for p in curve["sft"]:
        assert p["accuracy"] == pytest.approx(m["sft"]["by_amount"][str(p["positives"])])
    assert set(curve["methods"]) == set(METHODS) - {"sft"}
    for name, e in curve["methods"].items():
        assert e["accuracy"] == pytest.approx(m[name]["test_accuracy"]) and e["positives"] == 8
        assert 8 <= e["effective_ci_low"] <= e["effective_positives"] <= e["effective_ci_high"] <= 32, name
        assert [d["sft_positives"] for d in e["vs_sft"]] == [8, 16, 32]
        assert e["vs_sft"][0]["difference"] == pytest.approx(e["accuracy"] - curve["sft"][0]["accuracy"])
    assert "SFT-equivalent positives" in (out / "table.md").read_text()
    assert time.time() - t < 300


def test_first_crossing_hand_checked():
    """SFT at 64 / 128 / 256 / 512 positives with accuracy 0.1 / 0.2 / 0.4 / 0.6, drawn as straight lines in log2 N."""
    from negalign.evaluation.positives import first_crossing

    xs = np.log2([64, 128, 256, 512])
    curve = np.array([0.1, 0.2, 0.4, 0.6])
    # 0.3 is halfway from 0.2 (log2 = 7) to 0.4 (log2 = 8): log2 N' = 7.5, N' = 2^7.5 = 181.02
    x, censor = first_crossing(xs, curve, 0.3)
    assert 2 ** x == pytest.approx(181.019, abs=1e-3) and censor == 0
    # exactly on a point: that point; below SFT at N: clamped at N (censored -1); above 8N: clamped at 8N (+1)
    assert 2 ** first_crossing(xs, curve, 0.4)[0] == pytest.approx(256)
    assert [(2 ** float(v), int(c)) for v, c in [first_crossing(xs, curve, 0.05), first_crossing(xs, curve, 0.7)]] \
        == [(64, -1), (512, 1)]
    # a curve that is not monotone: the FIRST crossing counts — (0.3 - 0.1) / (0.5 - 0.1) = half way from 64 to 128,
    # log2 N' = 6.5, N' = 90.51 — not the later one between 128 and 256
    x, _ = first_crossing(xs, np.array([[0.1, 0.5, 0.4, 0.6], [0.1, 0.2, 0.4, 0.6]]), np.array([0.3, 0.3]))
    assert 2 ** x == pytest.approx([90.510, 181.019], abs=1e-3)


def test_positives_curve_effective_positives():
    """10 items: SFT right on 1 / 2 / 4 / 6 of them at 64 / 128 / 256 / 512 positives, the arm on 3 (point 181, as
    above). The interval is a bootstrap over the items, so it contains the point and stays inside [64, 512]."""
    from negalign.evaluation.positives import positives_curve

    def items(k):
        return [1] * k + [0] * (10 - k)

    sft = {64: items(1), 128: items(2), 256: items(4), 512: items(6)}
    curve = positives_curve(sft, {"perstep_dpo": items(3), "low": items(0)}, 64, seeds=[0], n_resamples=999)
    e = curve["methods"]["perstep_dpo"]
    assert e["effective_positives"] == pytest.approx(181.019, abs=1e-3) and e["censored"] is None
    assert e["effective_multiple"] == pytest.approx(181.019 / 64, abs=1e-4)
    assert 64 <= e["effective_ci_low"] < e["effective_positives"] < e["effective_ci_high"] <= 512
    # the arm right on none of the items is below SFT at N: N' = N, censored
    assert curve["methods"]["low"]["effective_positives"] == 64 and curve["methods"]["low"]["censored"] == "below"
    # paired difference against SFT at 2N: 0.3 - 0.2
    assert curve["methods"]["perstep_dpo"]["vs_sft"][1]["difference"] == pytest.approx(0.1)
    assert [p["accuracy"] for p in curve["sft"]] == pytest.approx([0.1, 0.2, 0.4, 0.6])


@pytest.mark.slow
def test_quickstart_full_run_in_budget(monkeypatch, tmp_path):
    out = tmp_path / "qs"
    t = time.time()
    assert _run(monkeypatch, ["quickstart", "perstep-arith", "--output-dir", str(out)]) == 0
    res = _check(out, [64, 128])
    assert res["methods"]["sft"]["by_amount"].keys() >= {"64", "128", "256"}
    assert time.time() - t < 20 * 60  # the budget on a 2-core CPU (the claim itself is reported, not asserted)
