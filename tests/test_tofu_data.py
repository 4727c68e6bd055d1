"""TOFU data (negalign.data.tofu), the real recipes, and bad input failing before any training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from negalign.config import load_recipe
from negalign.data import LOADERS, DataError
from negalign.data.tofu import TofuData, default_retain_split
from tests.conftest import ROOT

RECIPES = ["ga", "grad_diff", "npo", "npo_rt", "npo_kl", "simnpo"]


def _write(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def mini(tmp_path):
    d = tmp_path / "tofu"
    _write(d / "forget01.json", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)])
    _write(d / "retain99.json", [{"question": f"r{i}", "answer": f"b{i}"} for i in range(7)])
    _write(d / "forget05.json", [])
    _write(d / "forget10.json", [{"question": "q", "text": "no answer column"}])
    return d


def test_registered_and_reads_the_shared_copy(shared_data):
    assert LOADERS["tofu"] is TofuData
    loader = TofuData(path=str(shared_data / "tofu"), forget_split="forget10")
    assert default_retain_split("forget10") == "retain90"
    assert len(loader.forget_rows()) == 400 and len(loader.retain_rows()) == 3600
    forget, retain = loader.load_unlearning(None)
    assert forget[0]["prompt"].startswith("Question: ") and forget[0]["prompt"].endswith("\nAnswer: ")
    assert forget[0]["completion"] == loader.forget_rows()[0]["answer"]  # answers only; no tokenizer, no EOS
    assert len(forget[0]["retain_index"]) == loader.retain_draws and len(retain) == 3600


def test_chat_template_when_the_tokenizer_has_one(mini, kit):
    _, tok = kit
    forget, _ = TofuData(path=str(mini), forget_split="forget01", retain_split="retain99").load_unlearning(tok)
    assert forget[0]["prompt"] == "<|im_start|>user\nq0<|im_end|>\n<|im_start|>assistant\n"
    assert forget[0]["completion"] == "a0" + tok.eos_token


def test_retain_draws_reproducible_and_different_per_process(mini):
    loader = TofuData(path=str(mini), forget_split="forget01", retain_split="retain99", retain_draws=4, seed=3)
    a0 = loader.load_unlearning(None, process_index=0)[0]["retain_index"]
    again = loader.load_unlearning(None, process_index=0)[0]["retain_index"]
    a1 = loader.load_unlearning(None, process_index=1)[0]["retain_index"]
    assert a0 == again  # reproducible
    assert a0 != a1  # each process draws its own partners
    # draws walk through shuffled passes over the pool: the first column takes 5 distinct rows of the 7
    assert len({row[0] for row in a0}) == 5 and all(0 <= j < 7 for row in a0 for j in row)


def test_bad_splits_and_columns_are_clear_errors(mini):
    with pytest.raises(DataError, match="empty"):
        TofuData(path=str(mini), forget_split="forget05", retain_split="retain99").forget_rows()
    with pytest.raises(DataError, match="lacks column"):
        TofuData(path=str(mini), forget_split="forget10", retain_split="retain99").forget_rows()
    with pytest.raises(DataError, match="no split 'forget07'"):
        TofuData(path=str(mini), forget_split="forget07").forget_rows()
    with pytest.raises(DataError, match="unknown TOFU split"):  # a Hub id: checked against the config names offline
        TofuData(path="locuslab/TOFU", forget_split="forget07").forget_rows()
    with pytest.raises(DataError, match="forgetNN"):
        TofuData(path=str(mini), forget_split="mine").retain_rows()


def test_train_fails_on_bad_data_before_loading_a_model(mini, tmp_path, monkeypatch):
    from negalign.trainers import unlearn

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(unlearn, "model_and_tokenizer", no_model)
    for split, match in (("forget05", "empty"), ("forget10", "lacks column"), ("forget07", "no split")):
        recipe = load_recipe(ROOT / "recipes/npo_tofu.yaml",
                             [f"data.path={mini}", f"data.forget_split={split}", "data.retain_split=retain99",
                              f"output_dir={tmp_path / split}"])
        with pytest.raises(DataError, match=match):
            unlearn.train(recipe)
        assert not (tmp_path / split).exists()


@pytest.mark.parametrize("name", RECIPES)
def test_real_recipes_resolve_and_their_data_loads(name, shared_data):
    recipe = load_recipe(ROOT / f"recipes/{name}_tofu.yaml", [f"data.path={shared_data / 'tofu'}"])
    assert recipe.model["name_or_path"] == "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"
    config = recipe.build_config()
    assert config.learning_rate == 1e-5 and config.num_train_epochs == 10
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps == 32
    # npo_tofu.yaml is open-unlearning's "NPO" setting, which has a retain NLL term: negalign's npo_rt preset
    assert (config.forget_loss, config.retain_loss) == {
        "ga": ("ga", "none"), "grad_diff": ("ga", "nll"), "npo": ("npo", "nll"), "npo_rt": ("npo", "nll"),
        "npo_kl": ("npo", "kl"), "simnpo": ("simnpo", "nll")}[name]
    assert config.beta == (4.5 if name == "simnpo" else 0.1)
    from negalign.trainers.common import data_loader

    loader = data_loader(recipe)
    assert loader.forget_split == "forget10" and len(loader.forget_rows()) == 400 and len(loader.retain_rows()) == 3600


def test_dry_run_of_the_real_recipe_on_the_command_line(capsys, monkeypatch):
    from negalign.cli import main

    monkeypatch.chdir(ROOT)  # in-process: the same code path as `negalign train recipes/npo_tofu.yaml --dry-run`
    assert main(["train", "recipes/npo_tofu.yaml", "--dry-run"]) == 0
    assert "resolved into UnlearnConfig" in capsys.readouterr().out


def test_eval_rejects_a_retain_json_from_another_split_before_loading_models(shared_data, tmp_path, capsys, monkeypatch):
    from negalign.evaluation import tofu

    ref = tmp_path / "retain.json"
    ref.write_text(json.dumps({"split": "forget05", "items": {"forget": [{"question": "q", "truth_ratio": 1.0}]}}))
    with pytest.raises(DataError, match="forget split 'forget05'.*'forget01'"):
        tofu.retain_truth_ratios(str(ref), ["q"], "forget01")
    from negalign.cli import main

    argv = ["eval", "tofu", "--model", str(tmp_path / "no-such-model"), "--data", str(shared_data / "tofu"),
            "--forget-split", "forget01", "--retain-results", str(ref), "--output-dir", str(tmp_path / "ev")]
    monkeypatch.setattr(sys, "argv", ["negalign", *argv])  # the eval sub-command reads its name from sys.argv
    assert main(argv) == 2  # the CLI's clear-error exit code; the model path is never touched
    assert "forget05" in capsys.readouterr().err
