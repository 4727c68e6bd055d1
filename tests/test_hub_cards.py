"""Model cards for every method (negalign.hub.build_card from negalign.methods). Only the network boundary is mocked:
``huggingface_hub.HfApi.create_repo`` and ``HfApi.upload_folder`` are replaced by recorders (the ``hub_calls``
fixture of tests/test_hub.py); the folder check, the card, its YAML metadata and the README handling are real."""

from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub import ModelCard

from negalign import methods
from negalign.config import METHODS as CONFIG_METHODS
from negalign.config import RecipeError
from negalign.hub import attach_to_trainer, build_card, push
from tests.test_hub import hub_calls  # noqa: F401  (fixture)

# the data section each family's shipped recipes use, and the Hub data set the card must name for it
LOCAL = "LOCAL"  # replaced by an existing local folder (a local copy of the data set)
DATA = {
    "unlearning": ({"name": "tofu", "path": LOCAL, "forget_split": "forget10"}, ["locuslab/TOFU"]),
    "rlvr": ({"name": "gsm8k", "path": "openai/gsm8k"}, ["openai/gsm8k"]),
    "per-step": ({"name": "gsm8k", "path": LOCAL}, ["openai/gsm8k"]),
    "preference": ({"name": "preference", "path": methods.IMDB_PAIRS[0]}, list(methods.IMDB_PAIRS)),
    "sft": ({"name": "qa", "path": LOCAL}, None),  # a generic local file: no Hub data set to name
}


def _folder(kit_path, tmp_path, method, model, data=None, name="run"):
    folder = tmp_path / name
    shutil.copytree(kit_path, folder)
    family = methods.METHODS[method].family
    data = dict(data or DATA[family][0])
    if data.get("path") == LOCAL:
        data["path"] = str(tmp_path)  # exists, so it is a local copy, not a Hub id
    recipe = {"model": model, "data": data, "method": {"name": method}, "training": {}, "peft": None, "output": {}}
    (folder / "results.json").write_text(json.dumps({"metrics": {"train_loss": 0.5}, "recipe": recipe,
                                                     "method": method}))
    return folder


def test_every_configured_method_has_a_record():
    assert set(methods.METHODS) == set(CONFIG_METHODS)
    for name, rec in methods.METHODS.items():
        assert rec.name == name and rec.title and rec.summary and rec.tags
        if rec.paper is not None:
            assert rec.paper.url == f"https://arxiv.org/abs/{rec.paper.arxiv}"
            assert rec.paper.bibtex.startswith("@") and rec.paper.key in rec.paper.bibtex
    with pytest.raises(RecipeError, match="Did you mean 'simnpo'"):
        methods.get("simnpoo")


def test_unlearning_papers_come_from_the_method_record():
    from negalign.trainers import unlearn

    assert unlearn.NPO_PAPER == methods.NPO.trl() and unlearn.SIMNPO_PAPER == methods.SIMNPO.trl()
    assert unlearn.TOFU_PAPER_CITATION == methods.TOFU.bibtex


@pytest.mark.parametrize("method", sorted(CONFIG_METHODS))
def test_card_of_each_method(method, kit_path, tmp_path, hub_calls):  # noqa: F811
    rec = methods.METHODS[method]
    folder = _folder(kit_path, tmp_path, method, {"name_or_path": "Qwen/Qwen2.5-0.5B"})
    push(folder, f"someone/{method}")
    assert [c[0] for c in hub_calls] == ["create_repo", "upload_folder"]
    assert "README.md" in hub_calls[1][1]["files"]
    card = ModelCard.load(folder / "README.md")
    d = card.data
    assert d.base_model == "Qwen/Qwen2.5-0.5B" and d.library_name == "transformers"
    assert {"negalign", "trl", method, rec.family} <= set(d.tags)
    # a W-REINFORCE / D2O / per-step model is not an unlearning model (the old card tagged every run so)
    assert ("unlearning" in d.tags) == (rec.family == "unlearning")
    assert d.datasets == DATA[rec.family][1]
    assert d.pipeline_tag == rec.pipeline_tag and d.language == ["en"]
    assert f"**{rec.title}**" in card.text
    if rec.paper is not None:
        assert rec.paper.bibtex in card.text and rec.paper.url in card.text
    # TOFU is cited for runs on TOFU only (the old card cited NPO and TOFU for every run)
    assert ("maini2024tofu" in card.text) == (rec.family == "unlearning")
    if rec.paper is not methods.NPO:
        assert "zhang2024negative" not in card.text


def test_pipeline_tags_differ_for_the_reward_model(kit_path, tmp_path):
    folder = _folder(kit_path, tmp_path, "madpo_reward", {"name_or_path": "Qwen/Qwen2.5-0.5B"})
    assert build_card(folder).data.pipeline_tag == "text-classification"


def test_adapter_card_resolves_the_base_of_a_local_folder(kit_path, tmp_path, hub_calls):  # noqa: F811
    # the base model is a local folder: a negalign run that itself started from a Hub model (its results.json says so)
    sft = _folder(kit_path, tmp_path, "sft", {"name_or_path": "Qwen/Qwen2.5-Math-1.5B"}, name="sft-run")
    folder = _folder(kit_path, tmp_path, "perstep_dpo", {"name_or_path": str(sft)}, name="lora-run")
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(sft), "peft_type": "LORA"}))
    push(folder, "someone/lora")
    d = ModelCard.load(folder / "README.md").data
    assert d.library_name == "peft" and d.base_model == "Qwen/Qwen2.5-Math-1.5B"
    assert {"peft", "lora", "per-step"} <= set(d.tags)


def test_adapter_without_a_known_base_is_refused_until_given(kit_path, tmp_path, hub_calls, capsys):  # noqa: F811
    bare = tmp_path / "bare-base"  # a local folder that records no origin
    bare.mkdir()
    folder = _folder(kit_path, tmp_path, "npo", {"name_or_path": str(bare)})
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(bare)}))
    with pytest.raises(RecipeError, match="--base-model"):
        push(folder, "someone/x")
    assert hub_calls == []
    from negalign.cli import main

    assert main(["push", str(folder), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "library_name: peft" in out and "base_model" not in out.split("---")[1] and "records no Hub origin" in out
    push(folder, "someone/x", base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert ModelCard.load(folder / "README.md").data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_kit_model_has_no_base_model_and_says_why(kit_path, tmp_path):
    folder = _folder(kit_path, tmp_path, "nsr", {"kit": {"size": "tiny"}})
    card = build_card(folder)
    assert card.data.base_model is None and "offline kit model" in card.text


def test_measured_metrics_become_model_index_results(kit_path, tmp_path):
    folder = _folder(kit_path, tmp_path, "npo_rt", {"name_or_path": "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"})
    ev = tmp_path / "tofu-eval.json"
    ev.write_text(json.dumps({"metrics": {"forget_quality": 0.25, "model_utility": 0.5}, "split": "forget10"}))
    results = {r.metric_type: r for r in build_card(folder, "someone/npo", str(ev)).data.eval_results}
    assert results["forget_quality"].metric_value == 0.25 and results["model_utility"].metric_value == 0.5
    assert results["forget_quality"].dataset_type == "locuslab/TOFU" and results["forget_quality"].dataset_split == "forget10"

    rl = _folder(kit_path, tmp_path, "w_reinforce", {"name_or_path": "Qwen/Qwen2.5-Math-1.5B"}, name="rl")
    pk = tmp_path / "passk.json"  # negalign eval passk's layout: one entry per model, matched by path
    pk.write_text(json.dumps({"models": {"other": {"path": "/elsewhere", "pass_at_k": {"1": 0.1}},
                                         "mine": {"path": str(rl), "pass_at_k": {"1": 0.4, "4": 0.7}}},
                              "data": "gsm8k", "split": "test", "n": 4}))
    card = build_card(rl, "someone/wr", str(pk))
    got = {(r.metric_name, r.metric_value, r.dataset_type) for r in card.data.eval_results}
    assert got == {("pass@1", 0.4, "openai/gsm8k"), ("pass@4", 0.7, "openai/gsm8k")}
    assert "unlearning" not in card.data.tags and "No TOFU evaluation" not in card.text


def test_failed_upload_keeps_the_old_readme(kit_path, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    folder = _folder(kit_path, tmp_path, "nft", {"name_or_path": "Qwen/Qwen2.5-Math-1.5B"})
    (folder / "README.md").write_text("TRL's card")

    def fail(self, **kw):
        raise OSError("network down")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, **kw: "https://huggingface.co/someone/nft")
    monkeypatch.setattr(HfApi, "upload_folder", fail)
    with pytest.raises(OSError, match="network down"):
        push(folder, "someone/nft")
    assert (folder / "README.md").read_text() == "TRL's card"


class _FakeTrainer:
    """What attach_to_trainer uses of a TRL trainer: args, is_world_process_zero, save_model."""

    def __init__(self, out):
        from types import SimpleNamespace

        self.args = SimpleNamespace(output_dir=str(out), hub_model_id="someone/d2o-run", hub_private_repo=False,
                                    hub_token=None)
        self._name, self.saved = "DPO", 0

    def is_world_process_zero(self):
        return True

    def save_model(self, output_dir=None, _internal_call=False):
        self.saved += 1


def test_trl_card_hook_and_push_to_hub_give_the_same_card(kit_path, tmp_path, hub_calls):  # noqa: F811
    from negalign.config import load_recipe
    from tests.conftest import ROOT

    folder = _folder(kit_path, tmp_path, "d2o", {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"})
    recipe = load_recipe(ROOT / "recipes/d2o_saferlhf.yaml", [f"output_dir={folder}"])
    trainer = _FakeTrainer(folder)
    attach_to_trainer(trainer, recipe)
    assert trainer._name == "D²O" and trainer._paper["id"] == "2403.03419"  # not TRL's "DPO"
    trainer.create_model_card(model_name="d2o-run", dataset_name="ignored")  # what TRL calls at save time
    at_save = (folder / "README.md").read_text()
    trainer.push_to_hub()  # TRL's push path goes through negalign.hub.push
    assert trainer.saved == 1 and [c[0] for c in hub_calls] == ["create_repo", "upload_folder"]
    assert hub_calls[1][1]["repo_id"] == "someone/d2o-run"
    pushed = (folder / "README.md").read_text()
    assert ModelCard(at_save).data.to_dict() == ModelCard(pushed).data.to_dict()
    assert "PKU-Alignment/PKU-SafeRLHF" in pushed and "duan2024negating" in pushed and "\\nDPO" not in pushed


def test_a_real_d2o_run_writes_negalign_card_at_checkpoint_time(tmp_path, one_thread):
    """TRL's DPOTrainer writes its card (trainer name "DPO", TRL's template) at each checkpoint; through
    ``train_and_finish`` the D2O trainer writes negalign's instead."""
    from negalign.config import load_recipe
    from negalign.train import run
    from tests.test_d2o import BAD, QUESTIONS

    data = tmp_path / "neg.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "rejected": b}) + "\n" for q, b in zip(QUESTIONS, BAD)))
    recipe = load_recipe(data={
        "model": {"kit": {"dir": str(tmp_path / "kit"), "arch": "qwen2", "size": "tiny", "vocab_size": 512}},
        "data": {"name": "negatives", "path": str(data)},
        "method": {"name": "d2o", "num_anchors": 2, "anchor_max_new_tokens": 6},
        "training": {"max_steps": 1, "per_device_train_batch_size": 3, "save_strategy": "steps", "save_steps": 1,
                     "gradient_checkpointing": False, "max_length": 96, "disable_tqdm": True},
        "output": {"dir": str(tmp_path / "out")},
    })
    run(recipe)
    assert (tmp_path / "out" / "checkpoint-1").is_dir()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert {"negalign", "d2o", "preference"} <= set(card.data.tags) and "generated_from_trainer" not in card.data.tags
    assert "**D²O**" in card.text and "duan2024negating" in card.text and "rafailov2023direct" not in card.text


# ------------------------------------------------------------------------ what a pip user's push found (issue #16)


def test_kit_model_inside_the_run_is_not_uploaded(kit_path, tmp_path, hub_calls):  # noqa: F811
    from huggingface_hub.utils import filter_repo_objects

    # a run on a kit model builds it in OUTPUT/kit (the default model.kit.dir); a recipe may name another folder in it
    folder = _folder(kit_path, tmp_path, "nsr", {"kit": {"dir": str(tmp_path / "run" / "kits" / "arith")}})
    shutil.copytree(kit_path, folder / "kit")
    shutil.copytree(kit_path, folder / "kits" / "arith")
    caches = ["perstep_cache/samples-0.jsonl", "perstep_cache/values-incorrect/v.json", "anchors.jsonl",
              "ref_forget_logps.json"]  # the per-step, D2O and unlearning trainers' caches in output_dir
    for name in caches:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("{}")
    push(folder, "someone/nsr", base_model="Qwen/Qwen2.5-Math-1.5B")
    upload = hub_calls[1][1]
    # the filter HfApi.upload_folder applies to the folder's files (the mocked call receives the patterns)
    uploaded = set(filter_repo_objects(upload["files"], ignore_patterns=upload["ignore_patterns"]))
    # before: IGNORE had no kit pattern, so kit/model.safetensors and kits/arith/* went to the Hub with the model
    assert not any(f.startswith(("kit/", "kits/")) for f in uploaded) and not set(caches) & uploaded
    assert {"model.safetensors", "config.json", "README.md", "results.json"} <= uploaded


def test_recipe_license_goes_into_the_card(kit_path, tmp_path):
    from negalign.config import load_recipe
    from tests.conftest import ROOT

    # before: output.license was an unknown key ("unknown key output.license") and the card had no license
    recipe = load_recipe(ROOT / "recipes/npo_tofu.yaml", ["output.license=apache-2.0"])
    assert recipe.output["license"] == "apache-2.0"
    folder = _folder(kit_path, tmp_path, "npo_rt", {"name_or_path": "Qwen/Qwen2.5-0.5B"})
    assert build_card(folder, recipe=recipe.to_dict(), method="npo_rt").data.license == "apache-2.0"
    assert build_card(folder, recipe=recipe.to_dict(), method="npo_rt", license="mit").data.license == "mit"
    assert build_card(folder).data.license is None  # a recipe without one: no license claimed


def test_uploaded_adapter_config_names_the_hub_base(kit_path, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    sft = _folder(kit_path, tmp_path, "sft", {"name_or_path": "Qwen/Qwen2.5-Math-1.5B"}, name="sft-run")
    folder = _folder(kit_path, tmp_path, "perstep_dpo", {"name_or_path": str(sft)}, name="lora-run")
    local = json.dumps({"base_model_name_or_path": str(sft), "peft_type": "LORA", "r": 8})
    (folder / "adapter_config.json").write_text(local)
    sent = {}

    def upload_folder(self, repo_id, folder_path, **kw):  # the network boundary: what would be sent, read now
        from pathlib import Path

        sent.update(json.loads((Path(folder_path) / "adapter_config.json").read_text()))

    monkeypatch.setattr(HfApi, "create_repo", lambda self, **kw: "https://huggingface.co/someone/lora")
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    push(folder, "someone/lora")
    # before: the uploaded adapter_config.json named the local folder, so AutoPeftModel.from_pretrained("someone/lora")
    # looked for /tmp/.../sft-run on the user's machine
    assert sent == {"base_model_name_or_path": "Qwen/Qwen2.5-Math-1.5B", "peft_type": "LORA", "r": 8}
    assert (folder / "adapter_config.json").read_text() == local  # the local adapter still loads from its folder
    card = (folder / "README.md").read_text()
    assert 'peft.AutoPeftModelForCausalLM.from_pretrained("someone/lora")' in card
    assert 'AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-Math-1.5B"), "someone/lora")' in card
    assert "REPO" not in card  # before: "from_pretrained(REPO)", a placeholder
    from negalign.cli import main

    assert main(["push", str(folder), "--dry-run"]) == 0  # no --repo-id yet: the owner is a visible placeholder
    assert 'AutoPeftModelForCausalLM.from_pretrained("USER/lora-run")' in capsys.readouterr().out


def test_cli_push_without_network_is_one_line(kit_path, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    from negalign.cli import main

    folder = _folder(kit_path, tmp_path, "grpo", {"name_or_path": "Qwen/Qwen2.5-Math-1.5B"})
    (folder / "README.md").write_text("TRL's card")

    def offline(self, **kw):  # what huggingface_hub raises at the network boundary under HF_HUB_OFFLINE=1
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: offline mode is enabled.")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # before: the OfflineModeIsEnabled traceback escaped `negalign push`
    assert main(["push", str(folder), "--repo-id", "someone/grpo"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "OfflineModeIsEnabled" in err and "unset it to upload" in err
    assert (folder / "README.md").read_text() == "TRL's card"
