"""The TOFU probabilities and truth ratios score answer + EOS (locuslab/tofu's labels, open-unlearning's appended EOS),
exactly as training sees it. Checked on a model whose log-probabilities are known by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from negalign.evaluation.tofu import evaluate_split

WORDS = ["Question", "Answer", ":", "who", "wrote", "it", "red", "big", "blue", "car", "a", "small", "green", "boat",
         "old", "grey", "house", "on", "the", "hill"]


@pytest.fixture(scope="module")
def word_tok():
    """One token per word or punctuation mark (WordLevel), EOS ``</s>``, no BOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="[UNK]")


class Unigram(torch.nn.Module):
    """Logits that ignore the context: every token has logit 0 except EOS, which has ``w``. So
    log π(v) = c = -log(V - 1 + e^w) for every v ≠ EOS and log π(EOS) = w + c."""

    def __init__(self, vocab_size: int, eos_id: int, w: float):
        super().__init__()
        logits = torch.zeros(vocab_size)
        logits[eos_id] = w
        self.logits = torch.nn.Parameter(logits)

    def forward(self, input_ids, attention_mask=None, use_cache=False, **kw):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def test_truth_ratio_and_probability_include_the_eos_term(word_tok):
    tok = word_tok
    V, w = len(tok), 2.0
    model = Unigram(V, tok.eos_token_id, w)
    row = {"question": "who wrote it", "answer": "red", "paraphrased_answer": "big blue car",
           "perturbed_answer": ["a small green boat", "old grey house on the hill"]}
    res = evaluate_split(model, tok, "forget", [row], generate=False, progress=False, template="plain")
    item = res["items"][0]

    # By hand: an answer of n word tokens is scored as n tokens + EOS, so its length-normalised log-prob is
    # (n·c + (w + c)) / (n + 1) = c + w / (n + 1). Paraphrase n = 3, perturbed n = 4 and 6:
    #   log R = mean(c + w/5, c + w/7) - (c + w/4) = w · ((1/5 + 1/7)/2 - 1/4)
    # Without the EOS every normalised log-prob would be c and R would be exactly 1.
    c = -math.log(V - 1 + math.exp(w))
    expected_log_r = w * ((1 / 5 + 1 / 7) / 2 - 1 / 4)
    assert item["truth_ratio"] == pytest.approx(math.exp(expected_log_r), rel=1e-6)
    assert item["truth_ratio"] != pytest.approx(1.0, abs=1e-3)
    # answer "red": one token + EOS → P^(1/2) = exp(c + w/2); 2 scored tokens
    assert item["answer_len"] == 2
    assert item["prob"] == pytest.approx(math.exp(c + w / 2), rel=1e-6)
    assert res["summary"]["truth_ratio"] == pytest.approx(min(math.exp(expected_log_r), math.exp(-expected_log_r)))


def test_option_probability_includes_eos_on_real_authors(word_tok):
    tok = word_tok
    V, w = len(tok), 1.5
    model = Unigram(V, tok.eos_token_id, w)
    row = {"question": "who wrote it", "answer": "red", "perturbed_answer": ["big blue car", "a small green boat"]}
    item = evaluate_split(model, tok, "real_authors", [row], generate=False, progress=False, template="plain")["items"][0]
    c = -math.log(V - 1 + math.exp(w))
    p = np.exp([c + w / 2, c + w / 4, c + w / 5])  # "red"+EOS, 3 words+EOS, 4 words+EOS
    assert item["prob"] == pytest.approx(p[0] / p.sum(), rel=1e-6)
