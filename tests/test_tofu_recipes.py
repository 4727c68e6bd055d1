"""Every TOFU recipe mirrors the open-unlearning config it names, field by field; published numbers are cited only
next to a recipe that matches them. The open-unlearning side is written here as data, resolved from its files:
configs/trainer/{finetune,GradAscent,GradDiff,NPO,SimNPO,DPO}.yaml, configs/experiment/unlearn/tofu/{default,idk}.yaml
(the same training arguments and splits), configs/model/Llama-3.2-1B-Instruct.yaml, configs/generation/default.yaml,
configs/data/datasets/TOFU_QA_*.yaml and scripts/tofu_unlearn.sh (4 per device x 4 accumulation x 2 GPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from negalign.config import load_recipe
from negalign.data.templates import resolve_template
from negalign.trainers.common import data_loader

ROOT = Path(__file__).resolve().parents[1]

OU_COMMON = {
    "model": "open-unlearning/tofu_Llama-3.2-1B-Instruct_full", "torch_dtype": "bfloat16",
    "data_path": "locuslab/TOFU", "forget_split": "forget10", "retain_split": "retain90", "max_length": 512,
    "apply_chat_template": True, "system_prompt": "You are a helpful assistant.", "date_string": "10 Apr 2025",
    "learning_rate": 1e-5, "num_train_epochs": 10, "weight_decay": 0.01, "warmup_epochs": 1.0,
    "effective_batch": 4 * 4 * 2, "optim": "paged_adamw_32bit", "lr_scheduler_type": "linear", "bf16": True,
    "seed": 0, "max_new_tokens": 200,
    # Hugging Face's model loss (GA, retain NLL) and kl_div(..., reduction="batchmean") over all positions (KL)
    "token_reduction": "pooled", "kl_reduction": "batchmean",
}
OU_TRAINERS = {
    "GradAscent": {"forget": "ga", "retain_loss_type": None},
    "GradDiff": {"forget": "ga", "retain_loss_type": "NLL", "gamma": 1.0, "alpha": 1.0},
    "NPO": {"forget": "npo", "retain_loss_type": "NLL", "beta": 0.1, "gamma": 1.0, "alpha": 1.0},
    "NPO with trainer.method_args.retain_loss_type=KL": {"forget": "npo", "retain_loss_type": "KL", "beta": 0.1,
                                                         "gamma": 1.0, "alpha": 1.0},
    "SimNPO": {"forget": "simnpo", "retain_loss_type": "NLL", "beta": 4.5, "delta": 0.0, "gamma": 0.125, "alpha": 1.0,
               "delta_placement": "inside"},  # forget_loss = nll/|y| - delta; -logsigmoid(beta * forget_loss)
    # IdkDPO: experiment=unlearn/tofu/idk.yaml; the DPO class defaults beta to 1.0, DPO.yaml sets 0.1
    "DPO": {"forget": "idk_dpo", "retain_loss_type": "NLL", "beta": 0.1, "gamma": 1.0, "alpha": 1.0},
}
# open-unlearning docs/repro.md, Llama-3.2-1B-Instruct, forget10: (forget quality, model utility)
PUBLISHED = {"GradAscent": ("1.06e-239", "0"), "GradDiff": ("1.06e-239", "0.49"), "NPO": ("0.02", "0.46"),
             "SimNPO": ("2.47e-203", "0.54"), "DPO": ("4.64e-12", "0.23")}
# settings that do not change the update, documented in docs/unlearning.md: paged_adamw_32bit is AdamW with its
# state in paged memory (bitsandbytes)
EQUIVALENT_OPTIM = {"paged_adamw_32bit": "adamw_torch"}

RECIPES = {
    "ga_tofu": "GradAscent",
    "grad_diff_tofu": "GradDiff",
    "npo_tofu": "NPO",
    "npo_rt_tofu": "NPO",
    "npo_kl_tofu": "NPO with trainer.method_args.retain_loss_type=KL",
    "simnpo_tofu": "SimNPO",
    "idk_dpo_tofu": "DPO",
}


def test_every_tofu_recipe_is_listed():
    assert sorted(p.stem for p in (ROOT / "recipes").glob("*_tofu.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_mirrors_open_unlearning(name):
    path = ROOT / "recipes" / f"{name}.yaml"
    ou_name = RECIPES[name]
    ou = {**OU_COMMON, **OU_TRAINERS[ou_name]}
    recipe = load_recipe(str(path))
    cfg = recipe.build_config()
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert f"open-unlearning trainer={ou_name} " in header.replace("\n# ", " ")

    # model, data, prompt
    assert recipe.model["name_or_path"] == ou["model"] and recipe.model["dtype"] == ou["torch_dtype"]
    loader = data_loader(recipe)
    assert (loader.path, loader.forget_split, loader.retain_split) == (ou["data_path"], ou["forget_split"],
                                                                       ou["retain_split"])
    t = resolve_template(loader.template, None, loader.system_prompt, loader.date_string)
    assert (t.kind == "chat") == ou["apply_chat_template"]
    assert (t.system_prompt, t.date_string) == (ou["system_prompt"], ou["date_string"])
    assert cfg.max_length == ou["max_length"]

    # method terms and weights
    assert cfg.forget_loss == ou["forget"]
    assert cfg.retain_loss == {None: "none", "NLL": "nll", "KL": "kl"}[ou["retain_loss_type"]]
    for ours, theirs in (("beta", "beta"), ("gamma", "gamma"), ("alpha", "alpha"), ("simnpo_gamma", "delta")):
        if theirs in ou:
            assert getattr(cfg, ours) == pytest.approx(ou[theirs]), ours
    if "delta_placement" in ou:
        assert cfg.simnpo_delta_placement == ou["delta_placement"]
    assert cfg.loss_reduction == ou["token_reduction"] and cfg.kl_reduction == ou["kl_reduction"]

    # optimisation
    assert cfg.learning_rate == pytest.approx(ou["learning_rate"])
    assert cfg.num_train_epochs == ou["num_train_epochs"]
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps == ou["effective_batch"]
    assert cfg.warmup_steps == pytest.approx(ou["warmup_epochs"] / ou["num_train_epochs"])  # a fraction of all steps
    assert cfg.weight_decay == pytest.approx(ou["weight_decay"])
    assert cfg.optim.value == EQUIVALENT_OPTIM.get(ou["optim"], ou["optim"])
    assert str(cfg.lr_scheduler_type.value) == ou["lr_scheduler_type"]
    assert cfg.bf16 is ou["bf16"] and cfg.seed == ou["seed"]
    assert cfg.tofu_eval_max_new_tokens == ou["max_new_tokens"]

    # published numbers only next to the config they were measured with
    cited = "Published" in header
    assert cited == (ou_name in PUBLISHED)
    if cited:
        fq, mu = PUBLISHED[ou_name]
        assert f"forget quality {fq}, model utility {mu}" in header.replace("\n# ", " ")
