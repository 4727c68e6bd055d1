"""negalign.data.batching: prompt + answer → padded [B, L] rows, the one module every trainer and the TOFU evaluation
use. Hand-derived expectations first, then: the callers (unlearning, TOFU scoring, D²O, per-step AWR, MADPO margins)
build the same tensors for the same rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from negalign.data.batching import (
    completion_labels,
    join,
    pad_rows,
    pad_sequences,
    pad_token_id,
    right_pad,
    tokenize_pair,
    truncate,
)
from negalign.errors import DataError

PAD = 99  # a pad id that no row uses, so that padding is visible in the expectations


class CharTokenizer:
    """One id per character (its code point): tokenisation that can be written out by hand."""

    pad_token_id, eos_token_id = None, 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) for ch in text]}


def test_pad_rows_by_hand():
    # two rows: [5, 6, 7] whose answer is 6, 7 and [8, 9] whose answer is 9. L = 3 (the longest row); the short row
    # gets one PAD, attention 0 there, completion 0 there; labels keep the ids only where the completion mask is 1
    ids, am, cm = pad_rows([([5, 6, 7], [0, 1, 1]), ([8, 9], [0, 1])], PAD)
    assert ids.tolist() == [[5, 6, 7], [8, 9, PAD]]
    assert am.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert cm.tolist() == [[0, 1, 1], [0, 1, 0]]
    assert completion_labels(ids, cm).tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert ids.dtype == am.dtype == cm.dtype == torch.long
    # an explicit length pads every row to it
    ids, am, cm = pad_rows([([5], [1])], PAD, length=3)
    assert ids.tolist() == [[5, PAD, PAD]] and am.tolist() == [[1, 0, 0]] and cm.tolist() == [[1, 0, 0]]


def test_join_truncate_and_right_pad_by_hand():
    assert join([5, 6], [7]) == ([5, 6, 7], [0, 0, 1])  # mask 0 on the two prompt ids, 1 on the answer id
    assert truncate([([5, 6, 7], [0, 1, 1])], 2) == [([5, 6], [0, 1])]  # cut from the right, mask with the ids
    assert truncate([([5, 6, 7], [0, 1, 1])], None) == [([5, 6, 7], [0, 1, 1])]
    adv = right_pad([[0.5, -1.0], [2.0]], 0.0, dtype=torch.float32)
    assert adv.tolist() == [[0.5, -1.0], [2.0, 0.0]] and adv.dtype == torch.float32


def test_left_padding_for_generation_by_hand():
    # every prompt ends in the last column: [3] gets its PAD in front
    ids, am = pad_sequences([[1, 2], [3]], PAD, side="left")
    assert ids.tolist() == [[1, 2], [PAD, 3]] and am.tolist() == [[1, 1], [0, 1]]
    ids, am = pad_sequences([[1, 2], [3]], PAD)
    assert ids.tolist() == [[1, 2], [3, PAD]] and am.tolist() == [[1, 1], [1, 0]]
    with pytest.raises(ValueError, match="side"):
        pad_sequences([[1]], PAD, side="middle")


def test_pad_token_id_falls_back_to_eos():
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_token_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0  # id 0 is a pad id, not "no pad"


def test_tokenize_pair_by_hand():
    tok = CharTokenizer()
    a, b, c, d, x, y, z = map(ord, "abcdxyz")
    # fits: prompt ids then answer ids, the mask marks the answer
    assert tokenize_pair(tok, "ab", "xy", max_length=8) == ([a, b, x, y], [0, 0, 1, 1])
    # 4 + 3 > 5: the answer keeps min(3, 5 - min(4, 5 // 2)) = 3 ids, the prompt its last 5 - 3 = 2 ("cd")
    assert tokenize_pair(tok, "abcd", "xyz", max_length=5) == ([c, d, x, y, z], [0, 0, 1, 1, 1])
    # a long answer: at most max_length - min(len(prompt), max_length // 2) = 4 - 2 = 2 of its ids, prompt "cd"
    assert tokenize_pair(tok, "abcd", "xyz", max_length=4) == ([c, d, x, y], [0, 0, 1, 1])
    with pytest.raises(DataError, match="tokenises to nothing"):
        tokenize_pair(tok, "ab", "", max_length=8)


def test_matches_trl_pad_the_dpo_trainers_used_before():
    """D²O and MADPO padded with TRL's ``pad``; the module gives the same tensors (values and dtypes)."""
    from trl.trainer.utils import pad

    rows = [join([5, 6], [7, 8, 9]), join([5], [7])]
    ids, am, cm = pad_rows(rows, PAD)
    ref_ids = pad([torch.tensor(r[0]) for r in rows], padding_value=PAD, padding_side="right")
    ref_am = pad([torch.ones(len(r[0]), dtype=torch.long) for r in rows], padding_value=0, padding_side="right")
    ref_cm = pad([torch.tensor(r[1], dtype=torch.long) for r in rows], padding_value=0, padding_side="right")
    for got, want in ((ids, ref_ids), (am, ref_am), (cm, ref_cm)):
        assert torch.equal(got, want) and got.dtype == want.dtype


# ------------------------------------------------------------------------------------------------------------------
# the callers build identical rows
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def encoded(kit_path):
    """The same question/answer pairs encoded as unlearning and TOFU evaluation encode them (``encode_qa``, chat
    template), longest first (the order TOFU scoring sorts them into)."""
    from transformers import AutoTokenizer

    from negalign.data.templates import encode_qa

    tok = AutoTokenizer.from_pretrained(kit_path)
    pairs = [("What did author 3 write?", "Author 3 wrote 5 novels about the river and the sea."),
             ("What did author 1 write?", "Author 1 wrote 3 novels."),
             ("Who?", "Nobody.")]
    rows = [encode_qa(tok, "chat", q, a, max_length=64) for q, a in pairs]
    rows.sort(key=lambda r: -len(r[0]))
    return tok, rows


def test_unlearning_batches_equal_tofu_scoring_batches(encoded, monkeypatch):
    import negalign.logprobs
    from negalign.evaluation.tofu import score_encoded
    from negalign.trainers.unlearn import UnlearnTrainer

    tok, rows = encoded
    # the unlearning trainer's collate only reads its pad id
    batch = UnlearnTrainer.collate(SimpleNamespace(pad_id=pad_token_id(tok)),
                                   [{"input_ids": i, "completion_mask": m} for i, m in rows])
    seen = {}

    def capture(model, ids, am, cm, *a, **k):
        seen.update(input_ids=ids, attention_mask=am, completion_mask=cm)
        return torch.zeros(ids.shape)

    monkeypatch.setattr(negalign.logprobs, "token_logps", capture)
    score_encoded(torch.nn.Linear(1, 1), tok, rows, batch_size=len(rows), progress=False, share_prefix=False)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(batch[key], seen[key]), key
    assert batch["input_ids"][-1, -1] == tok.pad_token_id  # the shortest row is padded with the pad id


def test_d2o_and_awr_collators_equal_pad_rows(encoded):
    from negalign.trainers.d2o import D2OCollator
    from negalign.trainers.perstep import AWRCollator

    tok, rows = encoded
    # D²O: one anchor per example then the negatives; the prompt/answer split is the rows' completion mask
    examples = []
    for ids, mask in rows:
        n = mask.index(1)
        examples.append({"prompt_ids": ids[:n], "anchor_ids": [ids[n:]], "rejected_ids": ids[n:]})
    d2o = D2OCollator(pad_token_id=tok.pad_token_id)(examples)
    ids, am, cm = pad_rows(rows + rows, tok.pad_token_id)
    assert torch.equal(d2o["input_ids"], ids) and torch.equal(d2o["attention_mask"], am)
    assert torch.equal(d2o["completion_mask"], cm)
    # max_length cuts every row, as truncate does
    d2o = D2OCollator(pad_token_id=tok.pad_token_id, max_length=10)(examples)
    assert torch.equal(d2o["input_ids"], pad_rows(truncate(rows + rows, 10), tok.pad_token_id)[0])
    # per-step AWR: response_mask is the completion mask, advantages padded with 0.0
    awr = AWRCollator(tok.pad_token_id)([{"input_ids": i, "response_mask": m, "advantages": [0.5] * len(i)}
                                         for i, m in rows])
    ids, am, cm = pad_rows(rows, tok.pad_token_id)
    assert torch.equal(awr["input_ids"], ids) and torch.equal(awr["attention_mask"], am)
    assert torch.equal(awr["response_mask"], cm)
    assert awr["advantages"].tolist() == [[0.5] * len(i) + [0.0] * (ids.shape[1] - len(i)) for i, _ in rows]
