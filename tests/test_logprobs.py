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


def _qa_rows(tok):
    from negalign.data.templates import encode_qa

    # two questions, each with answers of different lengths (TOFU: answer, paraphrase, perturbed answers), and one
    # question asked once; the rows are interleaved so grouping by prompt is exercised
    qa = [("Who wrote The Sea?", "Author 3."), ("What did author 12 write?", "Novels about the sea and the river."),
          ("Who wrote The Sea?", "Author 12 wrote it, long ago."), ("What did author 12 write?", "Poems."),
          ("Who wrote The Sea?", "Nobody."), ("Where was author 7 born?", "In a small town by the river.")]
    return [encode_qa(tok, "chat", q, a, max_length=64) for q, a in qa]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_shared_prefix_scoring_equals_whole_rows(tmp_path_factory, arch):
    """Running a question's prompt once and its answers on the repeated key/value cache gives the log-probs of the
    whole rows: same tokens scored, same values up to float rounding (TOFU's evaluation relies on it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from negalign.data.batching import pad_rows
    from negalign.evaluation.tofu import score_encoded
    from negalign.logprobs import shared_prefix_sequence_logps

    path = build_kit_model(tmp_path_factory.getbasetemp() / f"kit-{arch}", KIT_CORPUS, arch=arch)
    model, tok = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)
    rows = _qa_rows(tok)
    ids, am, cm = pad_rows(rows, tok.pad_token_id)
    cm[:, 0] = 0
    whole = sequence_logps(naive_token_logps(model, ids, am, cm), cm)  # [6], the plain computation
    group = [rows[i] for i in (0, 2, 4)]  # one question, three answers
    [(sums, counts)] = shared_prefix_sequence_logps(model, [group])
    torch.testing.assert_close(sums, whole[[0, 2, 4]], atol=1e-4, rtol=1e-5)
    assert counts.tolist() == cm[[0, 2, 4]].sum(-1).tolist()  # answer tokens + EOS, nothing from the prompt
    # two questions in one call: the template's prefix both prompts share runs once, each question's rest on a copy
    (s1, _), (s2, c2) = shared_prefix_sequence_logps(model, [group, [rows[1], rows[3]]])
    torch.testing.assert_close(torch.cat([s1, s2]), whole[[0, 2, 4, 1, 3]], atol=1e-4, rtol=1e-5)
    assert c2.tolist() == cm[[1, 3]].sum(-1).tolist()

    shared, n_shared = score_encoded(model, tok, rows, batch_size=4, progress=False)
    plain, n_plain = score_encoded(model, tok, rows, batch_size=4, progress=False, share_prefix=False)
    assert n_shared.tolist() == n_plain.tolist() == cm.sum(-1).tolist()
    torch.testing.assert_close(torch.tensor(shared), whole.double(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(plain), whole.double(), atol=1e-4, rtol=1e-5)

    with pytest.raises(ValueError, match="do not share a prompt"):
        shared_prefix_sequence_logps(model, [[rows[0], rows[1]]])


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_greedy_decode_equals_generate_when_rows_stop_early(tmp_path_factory, arch):
    """TOFU's greedy answers drop a row from the batch once it emits EOS; the tokens must be ``generate``'s. A random
    kit model never says EOS (it repeats one token per prompt), so EOS is set to row 0's token: the rows emitting it
    leave the batch at once while the others run on to the cap from a compacted cache (prompts of different lengths,
    so left padding counts too). tests/test_realmodel.py repeats this on SmolLM2, with real EOS at varied steps."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from negalign.data.batching import pad_sequences
    from negalign.evaluation.tofu import greedy_decode

    path = build_kit_model(tmp_path_factory.getbasetemp() / f"kit-{arch}", KIT_CORPUS, arch=arch)
    model, tok = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)
    prompts = [tok(t).input_ids for t in ("Who wrote The Sea?", "What did author 12 write about the river and sea?",
                                          "Author 3", "Where was author 7 born, and when did he write?")]
    ids, am = pad_sequences(prompts, tok.pad_token_id, side="left")

    def hf(eos):
        out = model.generate(input_ids=ids, attention_mask=am, do_sample=False, max_new_tokens=12,
                             pad_token_id=tok.pad_token_id, eos_token_id=eos)
        return [[t for t in row.tolist()[ids.shape[1]:]] for row in out]

    free = hf(tok.eos_token_id)
    eos = free[0][0]
    want = []
    for row in hf(eos):
        want.append(row[: row.index(eos) + 1] if eos in row else row)  # generate pads after EOS
    got = greedy_decode(model, ids, am, 12, eos)
    assert got == want
    assert len(got[0]) == 1 and any(len(r) == 12 for r in got)  # one row left at once, one ran to the cap
