"""The foundation trains something real from a recipe: SFT of a kit model on TOFU through TRL's SFTTrainer."""

import json

from negalign.config import load_recipe
from negalign.train import run
from tests.conftest import ROOT


def test_sft_recipe_trains_and_writes_results(shared_data, tmp_path):
    recipe = load_recipe(
        ROOT / "recipes/quickstart/sft_tofu_tiny.yaml",
        [f"data.path={shared_data / 'tofu'}", f"output_dir={tmp_path / 'out'}", f"model.kit.dir={tmp_path / 'kit'}",
         "data.max_samples=160", "num_train_epochs=2", "logging_steps=1", "learning_rate=1e-2"],
    )
    metrics = run(recipe)
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    assert len(losses) == 20
    # a random-init model starts near ln(vocab) ≈ 7.6 nats; 20 steps must take at least half a nat off the answers' NLL
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["method"] == "sft" and res["recipe"]["method"]["name"] == "sft"
    assert res["versions"]["trl"].startswith("1.16") and "train_loss" in res["metrics"]
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "tokenizer.json").exists()
