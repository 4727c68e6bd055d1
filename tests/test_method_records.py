"""One record per method (negalign.methods): the trainer module and the preset defaults are read through it; NFT's
prompt weights are one table in negalign.losses; one reference-model loader."""

from __future__ import annotations

import importlib

import pytest
import torch

from negalign import config, methods

# the hand-written table negalign.config.METHODS was before it was read from the records
CONFIG_METHODS_BEFORE = {
    "sft": "negalign.trainers.sft",
    **{m: "negalign.trainers.unlearn" for m in ("ga", "grad_diff", "npo", "npo_rt", "npo_kl", "simnpo", "idk_dpo")},
    **{m: "negalign.trainers.nsr" for m in ("psr", "nsr", "w_reinforce", "reinforce", "grpo", "grpo_trl")},
    "nft": "negalign.trainers.nft",
    "d2o": "negalign.trainers.d2o",
    **{m: "negalign.trainers.madpo" for m in ("madpo_reward", "madpo", "dpo")},
    **{m: "negalign.trainers.perstep" for m in ("perstep_dpo", "perstep_awr", "dpo_full", "rft")},
}


def test_config_methods_come_from_the_records():
    assert config.METHODS == CONFIG_METHODS_BEFORE
    assert list(config.METHODS) == list(CONFIG_METHODS_BEFORE)  # the order error messages list them in


@pytest.mark.parametrize("name", ["npo", "simnpo", "w_reinforce", "grpo", "nft", "madpo", "perstep_dpo", "sft"])
def test_defaults_through_the_record_are_the_trainer_presets(name):
    rec = methods.get(name)
    assert rec.defaults() == getattr(importlib.import_module(rec.trainer), "METHOD_DEFAULTS", {}).get(name, {})
    # and the recipe's config is built from them (a few hand-picked values of SPEC's presets)
    expected = {"npo": {"beta": 0.1}, "simnpo": {"beta": 4.5, "gamma": 0.125}, "w_reinforce": {"mode": "w_reinforce"},
                "grpo": {"beta": 0.001}, "nft": {"beta": 0.0}, "madpo": {"precompute_ref_log_probs": True},
                "perstep_dpo": {"pair_mode": "first_pit"}, "sft": {"completion_only_loss": True}}[name]
    assert {k: rec.defaults()[k] for k in expected} == expected


def test_nft_prompt_weights_are_one_table():
    from negalign.losses import NFT_OMEGAS, nft_prompt_weight
    from negalign.trainers.nft import NFTConfig

    r = torch.tensor([0.2, 0.5])
    # 1 - r̂ = [0.8, 0.5]; sqrt((1 - r̂) / r̂) = [sqrt(4), sqrt(1)] = [2, 1]; one = [1, 1]
    expected = {"one_minus_r": [0.8, 0.5], "sqrt": [2.0, 1.0], "one": [1.0, 1.0]}
    assert set(NFT_OMEGAS) == set(expected)
    for name, want in expected.items():
        torch.testing.assert_close(nft_prompt_weight(r, name), torch.tensor(want))
    with pytest.raises(ValueError, match="unknown NFT prompt weight 'half'"):
        nft_prompt_weight(r, "half")
    with pytest.raises(ValueError, match=r"omega must be one of \('one_minus_r', 'sqrt', 'one'\)"):
        NFTConfig(output_dir="unused", omega="half", beta=0.0, use_cpu=True, bf16=False)


def test_one_reference_loader(kit_path):
    from negalign.models import load_reference_model
    from negalign.trainers.common import reference_model

    assert load_reference_model({"name_or_path": kit_path}) is None  # no ref_name_or_path: the trainer decides
    section = {"name_or_path": kit_path, "ref_name_or_path": kit_path, "dtype": "bfloat16"}
    assert load_reference_model(section).dtype == torch.bfloat16  # the section's dtype, as the policy's
    assert load_reference_model(section, dtype=torch.float32).dtype == torch.float32  # the policy's dtype wins
    from types import SimpleNamespace

    from negalign.errors import DataError

    with pytest.raises(DataError, match=r"model folder not found: runs-typo/ref/x \(model.ref_name_or_path\)"):
        reference_model(SimpleNamespace(model={"ref_name_or_path": "runs-typo/ref/x"}))
