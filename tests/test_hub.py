"""negalign push / push_to_hub. Only the network boundary is mocked: huggingface_hub.HfApi.create_repo and
HfApi.upload_folder are replaced by recorders; the folder check, the model card and the call arguments are real."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from negalign.config import RecipeError
from negalign.hub import push


@pytest.fixture()
def hub_calls(monkeypatch):
    """Record the two network calls instead of making them (the mocked network boundary)."""
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None, **kw):
        calls.append(("create_repo", {"repo_id": repo_id, "private": private, "exist_ok": exist_ok}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, **kw):
        from pathlib import Path

        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        calls.append(("upload_folder", {"repo_id": repo_id, "files": files, **kw}))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


@pytest.fixture()
def trained_folder(kit_path, tmp_path):
    folder = tmp_path / "npo-model"
    shutil.copytree(kit_path, folder)
    recipe = {"model": {"name_or_path": "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"},
              "method": {"name": "npo_rt", "beta": 0.1}, "data": {"name": "tofu", "forget_split": "forget10"}}
    (folder / "results.json").write_text(json.dumps({"metrics": {"train_loss": 1.5}, "recipe": recipe,
                                                     "method": "npo_rt", "versions": {"trl": "1.16.0"}}))
    ev = tmp_path / "eval" / "results.json"
    ev.parent.mkdir()
    ev.write_text(json.dumps({"metrics": {"forget_quality": 0.123, "model_utility": 0.456, "forget_rouge": 0.2},
                              "split": "forget10", "items": {}}))
    return folder, ev


def test_push_uploads_weights_tokenizer_and_card(trained_folder, hub_calls):
    folder, ev = trained_folder
    url = push(folder, "someone/npo-tofu", private=True, eval_results=str(ev))
    assert url == "https://huggingface.co/someone/npo-tofu"
    assert hub_calls[0] == ("create_repo", {"repo_id": "someone/npo-tofu", "private": True, "exist_ok": True})
    name, upload = hub_calls[1]
    assert name == "upload_folder" and upload["repo_id"] == "someone/npo-tofu"
    assert {"model.safetensors", "tokenizer.json", "config.json", "README.md", "results.json"} <= set(upload["files"])
    card = (folder / "README.md").read_text()
    assert "**NPO+RT**" in card and "base_model: open-unlearning/tofu_Llama-3.2-1B-Instruct_full" in card
    assert "| Forget quality (KS p-value vs retain model) | 0.123 |" in card and "| Model utility" in card
    assert "forget_split: forget10" in card and "@inproceedings{zhang2024negative" in card and "maini2024tofu" in card


def test_push_refuses_a_folder_without_safetensors_or_tokenizer(trained_folder, hub_calls):
    folder, _ = trained_folder
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(RecipeError, match="no tokenizer"):
        push(folder, "someone/x")
    (folder / "model.safetensors").unlink()
    with pytest.raises(RecipeError, match="no safetensors"):
        push(folder, "someone/x")
    with pytest.raises(RecipeError, match="user/name"):
        push(folder, "no-slash")
    assert hub_calls == []


def test_cli_push(trained_folder, hub_calls, monkeypatch):
    from negalign.cli import main

    folder, ev = trained_folder
    monkeypatch.setattr(sys, "argv", ["negalign", "push", str(folder), "--repo-id", "someone/m", "--eval-results", str(ev)])
    assert main(["push", str(folder), "--repo-id", "someone/m", "--eval-results", str(ev)]) == 0
    assert [c[0] for c in hub_calls] == ["create_repo", "upload_folder"]


def test_recipe_push_to_hub_calls_push_at_the_end_of_training(shared_data, tmp_path, hub_calls):
    from negalign.config import load_recipe
    from negalign.train import run
    from tests.conftest import ROOT

    recipe = load_recipe(ROOT / "recipes/quickstart/npo_tofu_tiny.yaml",
                         [f"data.path={shared_data / 'tofu'}", f"output_dir={tmp_path / 'out'}",
                          f"model.kit.dir={tmp_path / 'kit'}", "max_steps=1", "output.push_to_hub=true",
                          "output.repo_id=someone/tiny-npo", "data.max_forget=4", "data.max_retain=8"])
    run(recipe)
    assert [c[0] for c in hub_calls] == ["create_repo", "upload_folder"]
    assert hub_calls[1][1]["repo_id"] == "someone/tiny-npo"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "**NPO+RT**" in card and "## Recipe" in card
    # TRL's own card (written at save time) was replaced by negalign's: no "generated_from_trainer" template text
    assert "generated_from_trainer" not in card and "tags:\n- negalign\n" in card
