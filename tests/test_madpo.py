"""MADPO: c_min = c_max = 1 is TRL's DPO; margins are computed once (reward-model forwards counted); the weights are
SPEC §5's; real steps raise the chosen response over the rejected one; both steps run from recipes."""

import copy
import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification
from trl import DPOConfig, DPOTrainer

from negalign.config import RecipeError, load_recipe
from negalign.data import format_prompt
from negalign.losses import madpo_weights
from negalign.train import run
from negalign.trainers.madpo import MADPOConfig, MADPOTrainer
from tests.conftest import BAD, GOOD, QUESTIONS, perturbed


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", max_length=128,
                per_device_train_batch_size=3, gradient_checkpointing=False, disable_dropout=True, seed=0,
                save_strategy="no", logging_steps=1, disable_tqdm=True, reward_batch_size=4)
    base.update(kw)
    return MADPOConfig(**base)


def _batch(trainer, n):
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))


def _pairs(tok, n=6, margins=None):
    d = {"prompt": [format_prompt(q, tok) for q in QUESTIONS[:n]], "chosen": GOOD[:n], "rejected": BAD[:n]}
    if margins is not None:
        d["margin"] = margins
    return Dataset.from_dict(d)


def test_cmin_eq_cmax_eq_1_equals_trl_dpo(kit, tmp_path):
    model, tok = kit
    ref = model.eval()
    data = _pairs(tok, 4, margins=[3.0, -1.0, 0.2, 9.0])
    mad = MADPOTrainer(perturbed(model), ref_model=copy.deepcopy(ref), args=_cfg(tmp_path, c_min=1.0, c_max=1.0),
                       train_dataset=data, processing_class=tok)
    dpo = DPOTrainer(perturbed(model), ref_model=copy.deepcopy(ref), train_dataset=_pairs(tok, 4), processing_class=tok,
                     args=DPOConfig(output_dir=str(tmp_path / "dpo"), use_cpu=True, bf16=False, report_to="none",
                                    max_length=128, beta=0.1, gradient_checkpointing=False, disable_dropout=True))
    assert mad.train_dataset["madpo_weight"] == [1.0] * 4
    lm = mad.compute_loss(mad.model, _batch(mad, 4))
    ld = dpo.compute_loss(dpo.model, _batch(dpo, 4))
    assert abs(ld.item() - math.log(2)) > 1e-3
    torch.testing.assert_close(lm, ld, rtol=1e-5, atol=1e-6)


def test_weights_scale_the_per_pair_dpo_loss(kit, tmp_path):
    """With the default c's, the loss is mean(w_i · DPO_i) with w_i from SPEC §5 (checked against c=1 per pair)."""
    model, tok = kit
    ref = model.eval()
    margins = [0.3, -2.0, 5.0]
    pol = perturbed(model, seed=3)
    mad = MADPOTrainer(copy.deepcopy(pol), ref_model=copy.deepcopy(ref), args=_cfg(tmp_path), processing_class=tok,
                       train_dataset=_pairs(tok, 3, margins))
    flat = MADPOTrainer(copy.deepcopy(pol), ref_model=copy.deepcopy(ref), processing_class=tok,
                        args=_cfg(tmp_path, c_min=1.0, c_max=1.0), train_dataset=_pairs(tok, 3, margins))
    w = madpo_weights(torch.tensor(margins))
    # hand check of one weight: Δ = 0.3, c = 0.5 + 1.5/(1 + 2·e^{0.3 - ln 999}) ≈ 1.99880, w = σ(cΔ)/σ(Δ)
    c = 0.5 + 1.5 / (1 + 2 * math.exp(0.3 - math.log(999)))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert w[0].item() == pytest.approx(sig(c * 0.3) / sig(0.3), rel=1e-6)
    per_pair = [flat.compute_loss(flat.model, _batch_rows(flat, [i])).item() for i in range(3)]
    expected = sum(wi * li for wi, li in zip(w.tolist(), per_pair)) / 3
    assert mad.compute_loss(mad.model, _batch(mad, 3)).item() == pytest.approx(expected, rel=1e-5)


def _batch_rows(trainer, rows):
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in rows]))


def _reward_model(kit_path):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(kit_path, num_labels=1)


def test_margin_column_computed_once(kit, kit_path, tmp_path):
    model, tok = kit
    rm = _reward_model(kit_path)
    data = _pairs(tok, 6)
    calls = {"n": 0}
    rm.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    tr = MADPOTrainer(model, args=_cfg(tmp_path, max_steps=3, learning_rate=1e-3), train_dataset=data,
                      processing_class=tok, reward_model=rm, reward_processing_class=tok)
    assert calls["n"] == 2 == tr.reward_forwards  # 6 pairs, 4 per forward (chosen and rejected together)
    # the column holds RM(x, y_w) - RM(x, y_l), pair by pair
    direct = []
    with torch.no_grad():
        for p, c, r in zip(data["prompt"], data["chosen"], data["rejected"]):
            s = [rm(**tok(p + t + tok.eos_token, return_tensors="pt", add_special_tokens=False)).logits.item()
                 for t in (c, r)]
            direct.append(s[0] - s[1])
    assert tr.train_dataset["margin"] == pytest.approx(direct, abs=1e-4)
    calls["n"] = 0
    tr.train()
    assert calls["n"] == 0  # never during training
    stats = json.loads((tmp_path / "out" / "madpo_weights.json").read_text())
    assert stats["weight_mean"] == pytest.approx(float(madpo_weights(torch.tensor(direct)).mean()), rel=1e-4)
    assert any("madpo/weight_mean" in h for h in tr.state.log_history)


def test_steps_raise_chosen_over_rejected(kit, tmp_path):
    model, tok = kit
    tr = MADPOTrainer(model, args=_cfg(tmp_path, max_steps=4, learning_rate=3e-3, beta=0.5),
                      train_dataset=_pairs(tok, 6, margins=[0.5, 1.0, 2.0, 0.1, 3.0, 0.0]), processing_class=tok)
    tr.train()
    logs = [h for h in tr.state.log_history if "rewards/margins" in h]
    assert logs[-1]["rewards/margins"] > 0.5 and logs[-1]["rewards/accuracies"] == 1.0
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_madpo_without_margins_or_reward_model_is_an_error(kit, tmp_path):
    model, tok = kit
    with pytest.raises(RecipeError, match="reward_model"):
        MADPOTrainer(model, args=_cfg(tmp_path), train_dataset=_pairs(tok, 2), processing_class=tok)


def test_reward_then_madpo_recipes(tmp_path):
    """Step 1 (RewardTrainer) and step 2 (MADPO) from recipes on a kit model, then plain DPO and IPO."""
    rows = [{"prompt": f"Review {i}: the film was", "chosen": " wonderful and moving.", "rejected": " dull and long."}
            for i in range(12)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {
        "model": {"kit": {"dir": str(tmp_path / "kit"), "arch": "qwen2", "size": "tiny", "vocab_size": 512}},
        "data": {"name": "preference", "path": str(data)},
        "training": {"max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "save_strategy": "no",
                     "logging_steps": 1, "gradient_checkpointing": False, "max_length": 64, "disable_tqdm": True},
    }
    rm = run(load_recipe(data={**base, "method": {"name": "madpo_reward"}, "output": {"dir": str(tmp_path / "rm")}}))
    assert rm["train_loss"] < 0.7
    res = json.loads((tmp_path / "rm" / "results.json").read_text())
    assert res["method"] == "madpo_reward" and (tmp_path / "rm" / "model.safetensors").exists()
    out = run(load_recipe(data={**base, "method": {"name": "madpo", "reward_model": str(tmp_path / "rm")},
                                "output": {"dir": str(tmp_path / "madpo")}}))
    assert out["reward_model_forwards"] == 1  # 12 pairs in one batch of 16
    assert "weight_quantiles" in out["madpo_weights"]
    for loss_type in ("sigmoid", "ipo"):
        d = run(load_recipe(data={**base, "method": {"name": "dpo"}, "output": {"dir": str(tmp_path / loss_type)}},
                            overrides=[f"training.loss_type={loss_type}"]))
        assert d["loss_type"] == [loss_type]


ROOT_DIR = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_imdb_prefix_is_stripped_from_chosen_and_rejected(tmp_path):
    """insub/imdb_prefix20_* rows hold the review prefix in `text` and again at the start of `chosen` / `rejected`
    (its generator returned whole texts; the data set author's DPO script strips `text` from both). With
    prompt_field: text the prefix would be in the prompt and in each response; strip_prompt: auto cuts it where both
    responses start with it, so prompt + response is the original text."""
    from negalign.data.preference import PreferenceData

    rows = [  # shaped like the data set: text / chosen / rejected (+ scores)
        {"text": "I rented this movie last week and", "chosen": "I rented this movie last week and loved it.",
         "rejected": "I rented this movie last week and it was dull.", "score_chosen": 0.99, "score_rejected": 0.01},
        {"text": "The plot", "chosen": "The plot is wonderful.", "rejected": "The plot was a mess.",
         "score_chosen": 0.98, "score_rejected": 0.02},
        {"text": "Odd row", "chosen": "a continuation only", "rejected": "Odd row then more",
         "score_chosen": 0.9, "score_rejected": 0.1},
    ]
    path = tmp_path / "imdb.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loader = PreferenceData(path=str(path), prompt_field="text")
    out = loader.rows()
    assert out[0] == {"prompt": "I rented this movie last week and", "chosen": " loved it.",
                      "rejected": " it was dull."}
    assert out[1]["chosen"] == " is wonderful." and out[1]["rejected"] == " was a mess."
    assert out[2]["chosen"] == "a continuation only" and out[2]["rejected"] == "Odd row then more"  # not both: kept
    assert loader.stripped == 2
    for r, raw in zip(out[:2], rows):
        assert r["prompt"] + r["chosen"] == raw["chosen"]
    assert PreferenceData(path=str(path), prompt_field="text", strip_prompt="never").rows()[0]["chosen"] == \
        rows[0]["chosen"]
    from negalign.data import DataError

    with pytest.raises(DataError, match="row 2"):
        PreferenceData(path=str(path), prompt_field="text", strip_prompt="always").rows()
    for name in ("madpo_reward", "madpo_dpo"):  # the recipes ask for it
        assert load_recipe(ROOT_DIR / f"recipes/{name}.yaml").data["strip_prompt"] == "auto"


def test_paper_recipes_pin_the_data_revision():
    """PKU-SafeRLHF was re-released after the D2O paper: the recipe pins the release it used; `revision` is a model
    and data key of the recipe schema."""
    from negalign.config import MODEL_KEYS

    assert "revision" in MODEL_KEYS
    r = load_recipe(ROOT_DIR / "recipes/d2o_saferlhf.yaml", ["model.revision=main"])
    assert r.data["revision"] == "v0" and r.model["revision"] == "main"
