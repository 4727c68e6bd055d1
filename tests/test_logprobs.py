"""Chunked log-probs equal the naive full-logits computation on real kit models (values and gradients)."""

import pytest
import torch

from negalign.logprobs import naive_token_logps, selective_log_softmax, sequence_logps, token_logps
from negalign.models import build_kit_model
from tests.conftest import KIT_CORPUS


def _batch(tok):
    enc = tok(["Author 3 wrote novels about", "What did author 12 write? Answer: the sea and the river"], padding=True,
              return_tensors="pt")
    resp = enc.attention_mask.clone()
    resp[:, :3] = 0  # the first three tokens play the prompt
    return enc.input_ids, enc.attention_mask, resp


def test_selective_log_softmax_matches_log_softmax():
    logits = torch.randn(3, 5, 11)
    idx = torch.randint(0, 11, (3, 5))
    ref = torch.log_softmax(logits, -1).gather(-1, idx[..., None])[..., 0]
    torch.testing.assert_close(selective_log_softmax(logits, idx), ref)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("chunk", [1, 4, 4096])
def test_chunked_equals_naive(tmp_path_factory, arch, chunk):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_kit_model(tmp_path_factory.getbasetemp() / f"kit-{arch}", KIT_CORPUS, arch=arch)
    model, tok = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)
    ids, am, resp = _batch(tok)
    chunked = token_logps(model, ids, am, resp, chunk_size=chunk)
    naive = naive_token_logps(model, ids, am, resp)
    torch.testing.assert_close(chunked, naive, atol=1e-5, rtol=1e-5)
    assert (chunked[resp == 0] == 0).all() and (chunked[resp.bool() & (torch.arange(ids.shape[1]) > 0)] < 0).all()

    # gradients agree too (the chunks run under activation checkpointing)
    g1 = torch.autograd.grad(sequence_logps(chunked, resp).sum(), list(model.parameters()), allow_unused=True)
    naive = naive_token_logps(model, ids, am, resp)
    g2 = torch.autograd.grad(sequence_logps(naive, resp).sum(), list(model.parameters()), allow_unused=True)
    for a, b in zip(g1, g2):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_kit_folder_loads_with_auto_classes(kit_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(kit_path)
    assert cfg.model_type == "qwen2" and cfg.hidden_size // cfg.num_attention_heads >= 32  # vLLM CPU needs ≥ 32
    tok = AutoTokenizer.from_pretrained(kit_path)
    model = AutoModelForCausalLM.from_pretrained(kit_path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok("Author 3 wrote novels", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "Author 3 wrote novels"  # byte-level BPE round-trips
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3 or tok.eos_token_id in out[0]


def test_kit_is_reused_and_rebuilt_on_change(tmp_path):
    p = build_kit_model(tmp_path / "k", KIT_CORPUS[:50])
    mtime = (tmp_path / "k" / "model.safetensors").stat().st_mtime_ns
    assert build_kit_model(tmp_path / "k", KIT_CORPUS[:50]) == p
    assert (tmp_path / "k" / "model.safetensors").stat().st_mtime_ns == mtime
    build_kit_model(tmp_path / "k", KIT_CORPUS[:50], arch="llama")
    assert "llama" in (tmp_path / "k" / "config.json").read_text()


def test_kept_head_equals_recomputed_head(kit):
    """``checkpoint_head=False`` (``logprob_checkpoint_head``: keep each chunk's logits for the backward instead of
    recomputing the head) changes memory and time only: the same log-probs and the same gradients as the default."""
    model, tok = kit
    ids, am, resp = _batch(tok)
    grads = []
    for keep in (False, True, None):  # None: auto (recompute only across more than one chunk)
        out = token_logps(model, ids, am, resp, chunk_size=4, checkpoint_head=keep)
        grads.append((out, torch.autograd.grad(sequence_logps(out, resp).sum(), list(model.parameters()),
                                               allow_unused=True)))
    for other in grads[1:]:
        torch.testing.assert_close(grads[0][0], other[0], atol=0, rtol=0)
        for a, b in zip(grads[0][1], other[1]):
            if a is not None or b is not None:
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_logprob_checkpoint_head_setting(tmp_path):
    """The trainer's named setting: auto by default (measured on SmolLM2, see its help), always / never by name,
    anything else refused before training."""
    from negalign.trainers.unlearn_config import HEAD_CHECKPOINT, UnlearnConfig

    kw = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert UnlearnConfig(**kw).logprob_checkpoint_head == "auto" and HEAD_CHECKPOINT["auto"] is None
    assert HEAD_CHECKPOINT["always"] is True and HEAD_CHECKPOINT["never"] is False
    with pytest.raises(ValueError, match="logprob_checkpoint_head"):
        UnlearnConfig(**kw, logprob_checkpoint_head="sometimes")
