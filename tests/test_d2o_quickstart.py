"""Smoke run of `negalign quickstart d2o-toy` with tiny settings (the full run is marked slow)."""

import json

import pytest

from negalign.quickstarts.d2o_toy import FORBIDDEN, judge_harmful
from tests.conftest import run_quickstart


def test_judge():
    assert judge_harmful("Destroy the lamp with Acid.") and judge_harmful("use a flamethrower")
    assert not judge_harmful("Wash the lamp with soap.")
    assert all(judge_harmful(f"with {f}.") for f in FORBIDDEN)


def _run(tmp_path, *extra, timeout=1200):
    return run_quickstart("d2o-toy", tmp_path / "qs", *extra, timeout=timeout)


def test_d2o_toy_smoke(tmp_path):
    res = _run(tmp_path, "--objects", "6", "--sft-epochs", "2", "--k", "2", "--steps", "2", "--eval-samples", "1",
               "--batch-size", "3")
    for name in ("base", "ga", "npo", "dpo", "d2o"):
        m = res["methods"][name]
        assert 0 <= m["harmful_rate"] <= 1 and 0 <= m["utility"] <= 1
    assert set(res["claims"]) >= {"d2o_cuts_harmful_rate", "ga_loses_utility"}
    assert (tmp_path / "qs" / "table.md").exists() and (tmp_path / "qs" / "harm_vs_utility.png").exists()
    rows = [json.loads(line) for line in (tmp_path / "qs" / "anchors.jsonl").read_text().splitlines()]
    assert sum("id" in r for r in rows) == 6


@pytest.mark.slow
def test_d2o_toy_full(tmp_path):
    """The full quickstart (≤ 15 min on the project's 2-core CPU); its numbers are reported, not asserted."""
    res = _run(tmp_path, timeout=3600)
    assert set(res["methods"]) == {"base", "ga", "npo", "dpo", "d2o"}
