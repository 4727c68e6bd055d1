"""Per-step trainers: the AWR loss and its per-token advantages (gradient, sign, positions), first-pit pairs, DPO on
prefixes without EOS, and a few real steps of every method (perstep_dpo, dpo_full, perstep_awr, rft) from a recipe."""

import json

import pytest
import torch

from negalign.data.steps import StepArithData
from negalign.logprobs import naive_token_logps
from negalign.losses import step_weighted_nll, step_weights
from negalign.stepvalues import split_steps
from negalign.trainers.perstep import AWRCollator, awr_rows, build_pairs, chat_prompt, chosen_pool


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


# -------------------------------------------------------------------------------------------------- the pure loss


def test_step_weighted_nll_hand_values_and_gradient():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, 0.0]], requires_grad=True)
    adv = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss = step_weighted_nll(logps, step_weights(adv), mask)
    # L_t = -A_t · logp_t on the mask: row 0: 0.5, -2.0, 1.0; row 1: 0.1, 3.0, (masked) 0
    assert torch.allclose(loss, torch.tensor([[0.5, -2.0, 1.0], [0.1, 3.0, 0.0]]))
    loss.sum().backward()
    # dL/dlogp_t = -A_t on the mask, 0 off it: a descent step raises positive-advantage tokens, lowers negative ones
    assert torch.allclose(logps.grad, torch.tensor([[-0.5, 1.0, -2.0], [-1.0, -1.0, 0.0]]))
    # exp weighting: exp(A/β) capped; never negative
    w = step_weights(torch.tensor([0.0, -1.0, 10.0]), "exp", beta=0.5, max_weight=20.0)
    assert w.tolist() == pytest.approx([1.0, torch.exp(torch.tensor(-2.0)).item(), 20.0])
    with pytest.raises(ValueError):
        step_weights(adv, "softmax")


# ---------------------------------------------------------------------------------- advantages reach the loss


def _valued_rows(tok):
    prompt = chat_prompt([{"role": "user", "content": "Start at 7, add 5, subtract 3."}], tok)
    rows = []
    for resp, values, correct in [("7+5=12\n12-3=9\n#### 9", [0.6, 1.0, 1.0, 1.0], True),
                                  ("7+5=13\n13-3=10\n#### 10", [0.6, 0.0, 0.0, 0.0], False)]:
        steps = split_steps(resp)
        rows.append({"prompt_index": 0, "prompt": prompt, "response": resp, "steps": steps, "values": values,
                     "advantages": [b - a for a, b in zip(values, values[1:])], "first_pit": 0, "correct": correct})
    return rows


def test_per_token_advantages_positions_sign_and_gradient(kit):
    from negalign.trainers.perstep import PerStepAWRTrainer, PerStepConfig

    model, tok = kit
    valued = _valued_rows(tok)
    rows = awr_rows(valued, tok, tok.eos_token, max_per_prompt=4)
    batch = AWRCollator(tok.pad_token_id)(rows)
    # positions: every token of step k carries A_k; prompt and padding carry 0 and are off the mask
    for r, v in zip(rows, valued):
        n_prompt = len(tok(v["prompt"], add_special_tokens=False)["input_ids"])
        assert r["advantages"][:n_prompt] == [0.0] * n_prompt and r["response_mask"][:n_prompt] == [0] * n_prompt
        for k, step in enumerate(v["steps"]):
            toks = [i for i, a, m in zip(r["input_ids"], r["advantages"], r["response_mask"]) if m and a == v["advantages"][k]]
            assert step.strip() in tok.decode(toks)
    assert rows[1]["advantages"][n_prompt] == pytest.approx(-0.6)  # the wrong first step of the negative
    assert rows[0]["advantages"][n_prompt] == pytest.approx(0.4)

    args = PerStepConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False, report_to="none", awr_weighting="linear")
    trainer = PerStepAWRTrainer(model=model, args=args, train_dataset=None, data_collator=AWRCollator(tok.pad_token_id))
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # the same objective written out by hand on full logits: -Σ_t A_t log π(y_t) / (number of response tokens)
    model.zero_grad()
    mask = batch["response_mask"].clone()
    mask[:, 0] = 0
    lp = naive_token_logps(model, batch["input_ids"], batch["attention_mask"], mask)
    manual = -(batch["advantages"] * lp * mask).sum() / mask.sum()
    assert float(loss.detach()) == pytest.approx(float(manual), rel=1e-4)
    manual.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-5, rtol=1e-3), n

    # sign: one small SGD step on the loss raises log π of the positive-advantage step, lowers the pit step's
    with torch.no_grad():
        before = naive_token_logps(model, batch["input_ids"], batch["attention_mask"], mask)
        for n, p in model.named_parameters():
            p -= 0.5 * got[n]
        after = naive_token_logps(model, batch["input_ids"], batch["attention_mask"], mask)
    adv = batch["advantages"]
    delta = ((after - before) * mask)
    assert delta[adv > 0].sum() > 0 and delta[adv < 0].sum() < 0


# ------------------------------------------------------------------------------------------------------ pairs


def test_first_pit_pairs_and_chosen_pool():
    examples = [{"prompt": "p0", "completion": [{"role": "assistant", "content": "gold0"}], "answer": "1"},
                {"prompt": "p1", "completion": [{"role": "assistant", "content": "gold1"}], "answer": "2"}]
    samples = [{"prompt_index": 0, "response": "own0", "correct": True},
               {"prompt_index": 0, "response": "own0", "correct": True},  # duplicate: kept once
               {"prompt_index": 0, "response": "bad", "correct": False},
               {"prompt_index": 1, "response": "bad1", "correct": False}]
    assert chosen_pool(examples, samples, "self_then_gold") == {0: ["own0"], 1: ["gold1"]}
    assert chosen_pool(examples, samples, "self") == {0: ["own0"], 1: []}
    assert chosen_pool(examples, samples, "gold") == {0: ["gold0"], 1: ["gold1"]}
    pool = chosen_pool(examples, samples, "self_then_gold")
    valued = [
        {"prompt_index": 0, "prompt": "P0 ", "response": "a\nb\nc\n#### 3", "steps": ["a\n", "b\n", "c\n", "#### 3"],
         "first_pit": 1},
        {"prompt_index": 1, "prompt": "P1 ", "response": "x\n#### 9", "steps": ["x\n", "#### 9"], "first_pit": 1},
    ]
    pairs = build_pairs(valued, pool, "<E>", "first_pit", max_pairs_per_prompt=4)
    # rejected = prefix up to and including the first pit; no EOS unless the prefix is the whole response
    assert pairs[0] == {"prompt": "P0 ", "chosen": "own0<E>", "rejected": "a\nb\n", "rejected_eos": False}
    assert pairs[1] == {"prompt": "P1 ", "chosen": "gold1<E>", "rejected": "x\n#### 9<E>", "rejected_eos": True}
    full = build_pairs(valued, pool, "<E>", "full", max_pairs_per_prompt=4)
    assert full[0]["rejected"] == "a\nb\nc\n#### 3<E>" and full[0]["rejected_eos"]
    assert len(build_pairs(valued * 3, pool, "<E>", "first_pit", max_pairs_per_prompt=2)) == 4


def test_dpo_trainer_leaves_prefixes_unterminated_and_caches_reference(kit, tmp_path):
    from datasets import Dataset

    from negalign.trainers.perstep import PerStepConfig, PerStepDPOTrainer

    model, tok = kit
    prompt = chat_prompt([{"role": "user", "content": "Start at 1, add 2."}], tok)
    rows = [{"prompt": prompt, "chosen": "1+2=3\n#### 3" + tok.eos_token, "rejected": "1+2=4\n", "rejected_eos": False},
            {"prompt": prompt, "chosen": "1+2=3\n#### 3" + tok.eos_token, "rejected": "1+2=4\n#### 4" + tok.eos_token,
             "rejected_eos": True}]
    args = PerStepConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=1,
                         per_device_train_batch_size=2, precompute_ref_log_probs=True, gradient_checkpointing=False)
    trainer = PerStepDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    ds = trainer.train_dataset
    assert ds[0]["rejected_ids"][-1] != tok.eos_token_id and tok.decode(ds[0]["rejected_ids"]) == "1+2=4\n"
    assert ds[1]["rejected_ids"][-1] == tok.eos_token_id and ds[0]["chosen_ids"][-1] == tok.eos_token_id
    assert "ref_rejected_logps" in ds.column_names  # π_sft's log-probs computed once, before training
    # the cached reference equals π_sft's log-prob of the unterminated prefix
    ids = torch.tensor([ds[0]["prompt_ids"] + ds[0]["rejected_ids"]])
    mask = torch.zeros_like(ids)
    mask[0, len(ds[0]["prompt_ids"]):] = 1
    with torch.no_grad():
        ref = naive_token_logps(model, ids, torch.ones_like(ids), mask).sum()
    assert ds[0]["ref_rejected_logps"] == pytest.approx(float(ref), abs=1e-3)


# ------------------------------------------------------------------------------------------- real runs, recipes


def _recipe(kit_path, method, out, **method_keys):
    from negalign.config import load_recipe

    return load_recipe(data={
        "model": {"name_or_path": kit_path, "dtype": "float32"},
        "data": {"name": "steparith", "num_problems": 6, "num_steps": 2, "test_size": 10},
        "method": {"name": method, "samples_per_prompt": 2, "num_continuations": 2, "max_new_tokens": 16,
                   "generation_backend": "hf", "generation_batch_size": 16, **method_keys},
        "training": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1,
                     "save_strategy": "no", "max_length": 128},
        "output": {"dir": str(out)},
    })


@pytest.fixture(scope="module")
def arith_kit(tmp_path_factory):
    from negalign.models import build_kit_model

    corpus = StepArithData(num_problems=200, num_steps=2, test_size=10).texts()
    return build_kit_model(tmp_path_factory.mktemp("arithkit") / "kit", corpus, size="tiny", vocab_size=320)


@pytest.mark.parametrize("method, keys", [
    ("perstep_dpo", {}),
    ("perstep_dpo", {"pair_mode": "full"}),  # dpo_full
    ("perstep_awr", {"awr_positive_weight": 1.0}),
    ("rft", {}),
])
def test_each_method_trains_and_changes_weights(arith_kit, tmp_path, method, keys):
    from safetensors.torch import load_file

    from negalign.train import run

    out = tmp_path / "out"
    metrics = run(_recipe(arith_kit, method, out, **keys))
    before, after = load_file(f"{arith_kit}/model.safetensors"), load_file(out / "model.safetensors")
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert changed, "no weight moved"
    res = json.loads((out / "results.json").read_text())
    stats = res["metrics"]["perstep"]
    assert stats["prompts"] == 6 and stats["samples"] == 12
    cache = out / "perstep_cache"
    assert list(cache.glob("samples-*.jsonl"))
    if keys.get("pair_mode") == "full":  # whole-pair DPO needs no step values
        assert not (cache / "values-incorrect").exists()
    if method == "perstep_awr" or keys.get("pair_mode", "first_pit") == "first_pit" and method == "perstep_dpo":
        which = "all" if method == "perstep_awr" else "incorrect"
        values = [json.loads(l) for l in (cache / f"values-{which}" / "values.jsonl").read_text().splitlines()]
        assert values and all(len(v["values"]) == len(v["steps"]) + 1 for v in values)
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(l == l for l in losses)


def test_prepare_only_and_cache_reuse(arith_kit, tmp_path, monkeypatch):
    import negalign.generation
    from negalign.train import run

    out = tmp_path / "out"
    m = run(_recipe(arith_kit, "perstep_dpo", out, prepare_only=True))
    assert m["prepared"] and not (out / "model.safetensors").exists()
    files = {p: p.read_text() for p in (out / "perstep_cache").rglob("*.jsonl")}
    assert any("continuations" in p.name for p in files) and any("samples" in p.name for p in files)

    def no_engine(*a, **k):
        raise AssertionError("a generation engine was built although everything is cached")

    monkeypatch.setattr(negalign.generation, "make_engine", no_engine)
    run(_recipe(arith_kit, "perstep_dpo", out))  # the training run reuses the cached samples and values
    for p, text in files.items():
        assert p.read_text() == text, f"{p.name} changed"
    assert (out / "model.safetensors").exists()


def test_recipe_dry_runs_without_downloads(capsys, monkeypatch):
    from negalign.cli import main
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for recipe in ("recipes/perstep_gsm8k.yaml", "recipes/perstep_gsm8k_sft.yaml"):
        assert main(["train", recipe, "--dry-run"]) == 0
        assert "resolved into" in capsys.readouterr().out
    assert main(["train", "recipes/perstep_gsm8k.yaml", "method.name=perstep_awr", "method.value_estimator=mean",
                 "method.awr_weighting=exp", "--dry-run"]) == 0
    assert "PerStepConfig" in capsys.readouterr().out
    with pytest.raises(ValueError, match="pair_mode"):
        main(["train", "recipes/perstep_gsm8k.yaml", "method.pair_mode=whole", "--dry-run"])


def test_gsm8k_recipe_runs_end_to_end_on_a_kit_model(shared_data, tmp_path, monkeypatch):
    """The GSM8K recipe itself (real data from ../shared/data), with a kit model standing in for Qwen2.5-Math."""
    from negalign.config import load_recipe
    from negalign.data import GSM8KData
    from negalign.models import build_kit_model
    from negalign.train import run
    from tests.conftest import ROOT

    texts = GSM8KData(path=str(shared_data / "gsm8k"), max_samples=200).texts()
    kit_dir = build_kit_model(tmp_path / "kit", texts, size="tiny", vocab_size=400)
    out = tmp_path / "out"
    recipe = load_recipe(ROOT / "recipes/perstep_gsm8k.yaml", [
        f"model.name_or_path={kit_dir}", "model.dtype=float32", f"data.path={shared_data / 'gsm8k'}",
        "data.max_samples=3", "samples_per_prompt=2", "num_continuations=2", "max_new_tokens=12",
        "generation_backend=hf", f"cache_dir={tmp_path / 'cache'}", f"output_dir={out}", "max_steps=1",
        "per_device_train_batch_size=2", "gradient_accumulation_steps=1", "activation_checkpointing=false",
        "max_length=512"])
    metrics = run(recipe)
    assert metrics["perstep"]["prompts"] == 3 and metrics["perstep"]["pairs"] >= 1
    values = [json.loads(l) for l in (tmp_path / "cache" / "values-incorrect" / "values.jsonl").read_text().splitlines()]
    assert values and all(v["answer"] and len(v["values"]) == len(v["steps"]) + 1 for v in values)
    assert (out / "results.json").exists()
