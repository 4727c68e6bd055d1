"""Smoke run of `negalign quickstart madpo-toy` with tiny settings (the full run is marked slow)."""

import math

import pytest

from negalign.evaluation.claims import check_claims
from negalign.quickstarts.madpo_toy import gt_reward, preference_rows
from tests.conftest import run_quickstart


def test_ground_truth_and_bradley_terry_noise():
    assert gt_reward(" great dull superb plot story.") == 1
    assert gt_reward(" great great great great great great great", n_words=5) == 5  # only the asked-for length counts

    class A:
        pairs_per_prompt, words = 200, 5

    prompts = ["a", "b"]
    _, hi = preference_rows(prompts, 0.25, A, seed=0)
    _, lo = preference_rows(prompts, 4.0, A, seed=0)
    assert hi > 0.95 and 0.5 < lo < 0.8  # labels follow the ground truth less as the temperature rises


def _run(tmp_path, *extra, timeout=1200):
    return run_quickstart("madpo-toy", tmp_path / "qs", *extra, timeout=timeout)


def test_madpo_toy_smoke(tmp_path):
    res = _run(tmp_path, "--train-prompts", "8", "--eval-prompts", "3", "--pairs-per-prompt", "1", "--sft-epochs", "1",
               "--rm-steps", "1", "--steps", "1", "--levels", "low", "--eval-samples", "1", "--seeds", "2")
    m = res["levels"]["low"]["methods"]
    assert set(m) == {"dpo", "ipo", "madpo"} and all(math.isfinite(v["gt_reward"]) for v in m.values())
    assert "weight_quantiles" in m["madpo"]["weights"]
    check_claims(res["claims"])
    (c,) = res["claims"]  # one verdict per level, over the 3 held-out prompts of both seeds
    assert c["claim"] == "MADPO gt_reward_sampled ≥ DPO gt_reward_sampled (low quality)"
    assert c["n_items"] == 3 and c["seeds"] == [0, 1]
    items = m["madpo"]["gt_reward_items"]  # [seeds][prompts] greedy rewards; the metric is their mean
    assert len(items) == 2 and all(len(r) == 3 for r in items)
    assert m["madpo"]["gt_reward"] == pytest.approx(sum(map(sum, items)) / 6)
    # the claim pairs the per-prompt mean sampled rewards (greedy ones are near-constant over exchangeable prompts)
    sampled = m["madpo"]["gt_reward_sampled_items"]
    assert len(sampled) == 2 and all(len(r) == 3 for r in sampled)
    assert m["madpo"]["gt_reward_sampled"] == pytest.approx(sum(map(sum, sampled)) / 6)
    assert c["difference"] == pytest.approx(m["madpo"]["gt_reward_sampled"] - m["dpo"]["gt_reward_sampled"])
    assert "| claim | difference | 95% CI | verdict |" in (tmp_path / "qs" / "table.md").read_text()
    assert (tmp_path / "qs" / "seed1" / "low" / "madpo").is_dir()
    assert (tmp_path / "qs" / "table.md").exists() and (tmp_path / "qs" / "gt_reward_by_level.png").exists()


@pytest.mark.slow
def test_madpo_toy_full(tmp_path):
    """The full quickstart (≤ 15 min on the project's 2-core CPU); its numbers are reported, not asserted."""
    res = _run(tmp_path, timeout=3600)
    assert set(res["levels"]) == {"high", "medium", "low"}
