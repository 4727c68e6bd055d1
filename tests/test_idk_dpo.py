"""IdkDPO (method idk_dpo): the loss by hand, TOFU's refusal answers as the alternate segment, and a tiny trainer run
in which the forget answer loses probability against the refusal."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from negalign import logprobs as lp
from negalign.data import DataError
from negalign.data.tofu import IDK_FILE, IDK_HUB, TofuData
from negalign.losses import dpo_loss, idk_dpo_loss, npo_loss
from negalign.trainers.unlearn import UnlearnTrainer, pad_rows
from tests.test_unlearn import config, datasets

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread

REFUSALS = ["I don't know.", "I'm not sure about that.", "That is beyond what I know."]


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_idk_dpo_loss_by_hand():
    # chosen (refusal): log π_θ = -2, log π_ref = -3 → h_w = +1; rejected (forget answer): -5 vs -4 → h_l = -1.
    # β = 0.5: β (h_w - h_l) = 1, so L = -(2/β) log σ(1) = 4 · log(1 + e^-1) = 4 · 0.3132616875 = 1.25304675
    out = idk_dpo_loss(t(-2.0), t(-3.0), t(-5.0), t(-4.0), beta=0.5)
    assert out.item() == pytest.approx(4 * math.log(1 + math.exp(-1)), abs=1e-12)
    assert out.item() == pytest.approx(1.25304675, abs=1e-8)
    # open-unlearning's compute_dpo_loss is DPO times 2/β (NPO's scaling): 4 × TRL-style DPO
    assert out.item() == pytest.approx(4 * dpo_loss(t(-2.0), t(-3.0), t(-5.0), t(-4.0), 0.5).item())
    # a refusal whose probability has not moved (h_w = 0) leaves exactly NPO on the forget answer
    pol, ref = t(-5.0, -1.0, -9.0), t(-4.0, -2.0, -9.5)
    torch.testing.assert_close(idk_dpo_loss(t(-3.0, -3.0, -3.0), t(-3.0, -3.0, -3.0), pol, ref, 0.1),
                               npo_loss(pol, ref, 0.1))


# ------------------------------------------------------------------------------------------------ TOFU's refusals


@pytest.fixture()
def mini(tmp_path):
    d = tmp_path / "tofu"
    d.mkdir()
    (d / "forget01.json").write_text("".join(json.dumps({"question": f"What did author {i} write?",
                                                         "answer": f"Author {i} wrote novels."}) + "\n"
                                             for i in range(4)))
    (d / "retain99.json").write_text("".join(json.dumps({"question": f"Who is author {i}?",
                                                         "answer": f"A writer {i}."}) + "\n" for i in range(6)))
    (d / IDK_FILE).write_text("\n".join(REFUSALS) + "\n\n")  # TOFU's file: plain lines; a blank line is no answer
    return d


def test_tofu_loader_finds_the_refusals_next_to_the_splits(mini, kit):
    _, tok = kit
    loader = TofuData(path=str(mini), forget_split="forget01", retain_draws=3, template="plain")
    assert loader.alternate_answers() == REFUSALS
    forget, retain = loader.load_unlearning(tok, alternates=True)
    plain_forget, _ = loader.load_unlearning(tok)
    assert "alternate_completions" not in plain_forget.column_names  # only when asked: other methods see no change
    assert plain_forget["retain_index"] == forget["retain_index"]  # the retain draws do not move
    # every process draws the same refusals (their reference pass is sharded across processes like the forget set's)
    other_rank, _ = loader.load_unlearning(tok, process_index=1, alternates=True)
    assert other_rank["alternate_completions"] == forget["alternate_completions"]
    assert other_rank["retain_index"] != forget["retain_index"]  # retain partners do differ per process
    for row in forget:
        assert len(row["alternate_completions"]) == 3 == len(row["alternate_input_ids"])
        assert all(c[: -len(tok.eos_token)] in REFUSALS for c in row["alternate_completions"])
        question = tok.decode(row["input_ids"][: row["completion_mask"].index(1)]).strip()
        for ids, mask, text in zip(row["alternate_input_ids"], row["alternate_completion_mask"],
                                   row["alternate_completions"]):
            # the same question, then the refusal + EOS as the scored answer (prompt + answer tokenised as one text,
            # open-unlearning's way, so only the text is compared)
            answer = tok.decode([i for i, m in zip(ids, mask) if m])
            assert tok.decode(ids).startswith(question) and answer.strip() == text.strip()
    # missing file: a DataError naming the setting, before any model work
    (mini / IDK_FILE).unlink()
    with pytest.raises(DataError, match="data.idk_path"):
        loader.alternate_answers()
    other = mini.parent / "refusals.txt"
    other.write_text("No idea.\n")
    assert TofuData(path=str(mini), idk_path=str(other)).alternate_answers() == ["No idea."]


def test_hub_id_reads_open_unlearnings_copy(monkeypatch, tmp_path):
    # the Hub download is replaced at the network boundary (hf_hub_download): open-unlearning's setup_data.py --idk
    # fetches idk.jsonl of the dataset open-unlearning/idk, which TOFU_QA_forget_idk.yaml reads as idk_path
    import huggingface_hub

    local = tmp_path / "idk.jsonl"
    local.write_text("I don't know.\n")
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name, repo_type=None: calls.append((repo, name, repo_type)) or str(local))
    assert TofuData(path="locuslab/TOFU").alternate_answers() == ["I don't know."]
    assert calls == [(*IDK_HUB, "dataset")] == [("open-unlearning/idk", "idk.jsonl", "dataset")]


def test_shared_tofu_idontknow(shared_data):
    answers = TofuData(path=str(shared_data / "tofu")).alternate_answers()
    assert len(answers) == 100 and all(answers)


# ------------------------------------------------------------------------------------------------ the trainer


def with_refusals(tok, draws=3):
    forget, retain = datasets(tok, draws)
    alts = [[REFUSALS[(i + k) % len(REFUSALS)] + tok.eos_token for k in range(draws)] for i in range(len(forget))]
    return forget.add_column("alternate_completions", alts), retain


def seq_logps(model, rows, pad_id):
    ids, am, cm = pad_rows(rows, pad_id)
    with torch.no_grad():
        return lp.sequence_logps(lp.token_logps(model, ids, am, cm), cm)


def test_terms_equal_separate_forwards_of_the_dpo_formula(kit, tmp_path):
    model, tok = kit
    fresh = copy.deepcopy(model)
    forget, retain = with_refusals(tok)
    trainer = UnlearnTrainer(model, config(tmp_path, "idk_dpo", beta=0.5), forget, retain, processing_class=tok)
    assert trainer.ref_model is None  # both reference columns are cached before step 1: no reference is held
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = trainer.collate([trainer.train_dataset[i] for i in range(3)])
    calls = []
    handle = model.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    terms = trainer.compute_terms(model, batch)
    handle.remove()
    assert len(calls) == 1  # forget, refusal and retain rows in one forward
    # by hand, one segment at a time: draw 0 (epoch 0) of each forget row's refusals
    alt_rows = trainer.partner_rows("alternate", batch["alternate_index"])
    f_rows = list(zip(trainer.train_dataset["input_ids"][:3], trainer.train_dataset["completion_mask"][:3]))
    pol_f, ref_f = seq_logps(model, f_rows, trainer.pad_id), seq_logps(fresh, f_rows, trainer.pad_id)
    pol_a, ref_a = seq_logps(model, alt_rows, trainer.pad_id), seq_logps(fresh, alt_rows, trainer.pad_id)
    torch.testing.assert_close(batch["ref_forget_logps"], ref_f, atol=1e-4, rtol=1e-5)
    expected = (-(2 / 0.5) * torch.nn.functional.logsigmoid(0.5 * ((pol_a - ref_a) - (pol_f - ref_f)))).mean()
    torch.testing.assert_close(terms["forget_loss"], expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(terms["alternate_logps"], pol_a, atol=1e-4, rtol=1e-5)
    assert terms["loss"].item() == pytest.approx(terms["forget_loss"].item() + terms["retain_loss"].item(), rel=1e-6)


def test_training_lowers_the_forget_answer_against_the_refusal(kit, tmp_path):
    model, tok = kit
    forget, retain = with_refusals(tok)
    trainer = UnlearnTrainer(model, config(tmp_path, "idk_dpo"), forget, retain, processing_class=tok)
    ds = trainer.train_dataset
    f_rows = list(zip(ds["input_ids"], ds["completion_mask"]))
    a_rows = [trainer.pools["alternate"][draws[0]] for draws in ds["alternate_index"]]  # epoch 0's refusals

    def margin():  # log π(forget answer) - log π(refusal), per forget question
        return seq_logps(model, f_rows, trainer.pad_id) - seq_logps(model, a_rows, trainer.pad_id)

    before = margin()
    trainer.train()
    after = margin()
    # 3 descent steps on -(2/β) log σ(β(h_idk - h_forget)) push the forget answer down relative to the refusal
    assert after.mean() < before.mean() - 1.0, (before.mean(), after.mean())
    logs = [h for h in trainer.state.log_history if "alternate/logps" in h]
    assert len(logs) == 3 and all("forget/ref_logps" in h and "retain/loss" in h for h in logs)
    assert (tmp_path / "ref_alternate_logps.json").is_file()  # the refusals' reference cache, reused on resume


def test_idk_dpo_needs_alternatives(kit, tmp_path):
    model, tok = kit
    forget, retain = datasets(tok)
    with pytest.raises(DataError, match="alternate"):
        UnlearnTrainer(model, config(tmp_path, "idk_dpo"), forget, retain, processing_class=tok)
    uneven = forget.add_column("alternate_completions", [["No."] * (1 + i % 2) for i in range(len(forget))])
    with pytest.raises(DataError, match="same number"):
        UnlearnTrainer(model, config(tmp_path, "idk_dpo"), uneven, retain, processing_class=tok)
