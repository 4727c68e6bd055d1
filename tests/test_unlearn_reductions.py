"""Reductions of the unlearning terms against plain computations: Hugging Face's pooled token mean (open-unlearning's
GradAscent / GradDiff / retain NLL), kl_div(batchmean) over every position (its KL retain term), and where SimNPO's
margin sits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from negalign.losses import ga_loss, kl_batchmean, kl_loss, nll_loss, simnpo_loss
from negalign.trainers.unlearn import METHOD_DEFAULTS, UnlearnConfig, UnlearnTrainer, pad_rows
from tests.conftest import perturbed

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_batch(seed=0, B=3, T=7, V=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 0]])
    logps = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return logits, targets, mask, logps


def test_pooled_ga_and_nll_equal_hugging_face_cross_entropy():
    logits, targets, mask, logps = _random_batch()
    labels = torch.where(mask.bool(), targets, torch.full_like(targets, -100))
    # the plain computation: CrossEntropyLoss(ignore_index=-100), mean over every labelled token of the batch
    hf = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert nll_loss(logps, mask, reduction="pooled") == pytest.approx(hf.item(), rel=1e-6)
    assert ga_loss(logps, mask, reduction="pooled") == pytest.approx(-hf.item(), rel=1e-6)
    # the per-example reduction weighs the 2-token row as much as the 5-token rows: a different number
    per_example = torch.stack([-(logps[b][mask[b].bool()]).mean() for b in range(3)]).mean()
    assert nll_loss(logps, mask).mean() == pytest.approx(per_example.item(), rel=1e-6)
    assert abs(per_example.item() - hf.item()) > 1e-3


def test_kl_batchmean_equals_torch_kl_div_over_all_positions():
    g = torch.Generator().manual_seed(1)
    cur, ref = torch.randn(2, 5, 9, generator=g), torch.randn(2, 5, 9, generator=g)
    cur_lp, ref_lp = torch.log_softmax(cur, -1), torch.log_softmax(ref, -1)
    expected = F.kl_div(cur_lp.view(-1, 9), ref_lp.view(-1, 9), reduction="batchmean", log_target=True)
    assert kl_batchmean(kl_loss(ref_lp, cur_lp)) == pytest.approx(expected.item(), rel=1e-6)


def test_simnpo_margin_placement():
    logps, lengths, beta, delta = torch.tensor([-12.0, -3.0]), torch.tensor([6, 2]), 4.5, 0.3
    nll_avg = -logps / lengths
    # open-unlearning / the authors' code: forget_loss = nll/len - δ; -logσ(β·forget_loss)·2/β
    reference = -F.logsigmoid(beta * (nll_avg - delta)) * 2 / beta
    paper = -(2 / beta) * F.logsigmoid(-(beta / lengths) * logps - delta)
    assert torch.allclose(simnpo_loss(logps, lengths, beta, delta, placement="inside"), reference)
    assert torch.allclose(simnpo_loss(logps, lengths, beta, delta), paper)  # the SPEC §8 signature: the paper's
    assert not torch.allclose(reference, paper)
    assert torch.allclose(simnpo_loss(logps, lengths, beta, 0.0, placement="inside"), simnpo_loss(logps, lengths, beta))


FORGET_QA = [(f"What did author {i} write?", f"Author {i} wrote {i % 7 + 2} novels about the river" + " and" * (i % 4))
             for i in range(4)]
RETAIN_QA = [(f"Where did author {i} live?", f"Author {i} lived by the sea" + " for years" * (i % 3)) for i in range(6)]


def _trainer(kit, tmp_path, method, ref_model=None, **kw):
    from negalign.data.templates import encode_qa

    model, tok = kit
    enc = lambda q, a: dict(zip(("input_ids", "completion_mask"), encode_qa(tok, "plain", q, a)))  # noqa: E731
    forget = Dataset.from_list([{**enc(q, a), "retain_index": [(2 * i + 1) % len(RETAIN_QA)]}
                                for i, (q, a) in enumerate(FORGET_QA)])
    retain = Dataset.from_list([enc(q, a) for q, a in RETAIN_QA])
    args = UnlearnConfig(**{**METHOD_DEFAULTS[method], **kw}, output_dir=str(tmp_path), use_cpu=True, bf16=False,
                         report_to="none", per_device_train_batch_size=4, max_steps=1, save_strategy="no",
                         ref_cache=False, disable_tqdm=True)
    return UnlearnTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=retain, processing_class=tok,
                          ref_model=ref_model)


def _hf_batch(rows, pad_id):
    ids, am, cm = pad_rows(rows, pad_id)
    return ids, am, torch.where(cm.bool(), ids, torch.full_like(ids, -100))


def test_trainer_pooled_terms_equal_the_model_loss(kit, tmp_path):
    """GradDiff with loss_reduction=pooled: forget term = -model(forget, labels).loss and retain term =
    model(retain, labels).loss, each batch padded on its own, as open-unlearning's GradDiff computes them."""
    trainer = _trainer(kit, tmp_path, "grad_diff", loss_reduction="pooled")
    model = trainer.model
    feats = [trainer.train_dataset[i] for i in range(4)]
    inputs = trainer.collate(feats)
    with torch.no_grad():
        terms = trainer.compute_terms(model, inputs)
        f_ids, f_am, f_labels = _hf_batch([(f["input_ids"], f["completion_mask"]) for f in feats], trainer.pad_id)
        forget_hf = model(input_ids=f_ids, attention_mask=f_am, labels=f_labels).loss
        r_ids, r_am, r_labels = _hf_batch(trainer.retain_rows(inputs["retain_index"]), trainer.pad_id)
        retain_hf = model(input_ids=r_ids, attention_mask=r_am, labels=r_labels).loss
    assert terms["forget_loss"].item() == pytest.approx(-forget_hf.item(), rel=1e-4)
    assert terms["retain_loss"].item() == pytest.approx(retain_hf.item(), rel=1e-4)


def test_trainer_kl_batchmean_equals_open_unlearning_kl(kit, tmp_path):
    """npo_kl with kl_reduction=batchmean: the retain KL is kl_div(log_softmax(policy), log_softmax(ref),
    batchmean, log_target) over every position of the retain batch padded to its own longest row."""
    model, _ = kit
    ref = perturbed(model, seed=3)
    trainer = _trainer(kit, tmp_path, "npo_kl", ref_model=ref, kl_reduction="batchmean")
    feats = [trainer.train_dataset[i] for i in range(4)]
    inputs = trainer.collate(feats)
    with torch.no_grad():
        terms = trainer.compute_terms(trainer.model, inputs)
        r_ids, r_am, _ = _hf_batch(trainer.retain_rows(inputs["retain_index"]), trainer.pad_id)
        V = trainer.model.config.vocab_size
        cur = torch.log_softmax(trainer.model(input_ids=r_ids, attention_mask=r_am).logits.float(), -1).view(-1, V)
        tgt = torch.log_softmax(ref(input_ids=r_ids, attention_mask=r_am).logits.float(), -1).view(-1, V)
        expected = F.kl_div(cur, tgt, reduction="batchmean", log_target=True)
    assert expected.item() > 1e-4
    assert terms["retain_loss"].item() == pytest.approx(expected.item(), rel=1e-4)
    # the default (answer tokens only) is a different number
    answer_only = _trainer(kit, tmp_path / "b", "npo_kl", ref_model=ref)
    with torch.no_grad():
        other = answer_only.compute_terms(answer_only.model, inputs)["retain_loss"].item()
    assert abs(other - expected.item()) > 1e-5
