"""Per-token log-probabilities of response tokens, without a whole batch of full-vocabulary float32 logits.

A causal LM's logits for a batch are ``[B, L, V]``; at V = 128k and 4k tokens that is 2 GiB *per sequence* in float32,
while the losses only need ``log π(y_t)`` of the chosen token at each response position. ``token_logps`` runs the
decoder once, keeps only the positions that score response tokens, and applies the LM head and log-softmax to
``chunk_size`` of those positions at a time, each chunk under activation checkpointing (``checkpoint_head=True``),
so at most ``chunk_size × V`` logits exist at once in the forward *and* the backward pass; the price is a
second LM-head forward per chunk in the backward. ``checkpoint_head=False`` keeps every chunk's logits for the
backward instead (no recompute, ``N × V`` float32 logits held for the N scored positions); ``None`` (the default)
recomputes only when the N positions fill more than one chunk: with a single chunk the recompute cannot lower the
peak (the head's backward needs that chunk's logits either way, while every decoder activation is still held).
``naive_token_logps`` is the plain reference computation (used by tests and the ``logprob-memory`` benchmark).
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from negalign.losses import kl_loss

DEFAULT_CHUNK = 1024


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., index]`` without keeping the full log-softmax: ``logit[index] - logsumexp(logits)``.

    ``logits``: ``[..., V]``; ``index``: ``[...]``. Returns ``[...]`` in float32."""
    logits = logits.float()
    return logits.gather(-1, index.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _split_head(model):
    """(decoder, lm_head, final_logit_softcapping) for a causal LM, or None when it does not expose them."""
    base = model
    # PEFT wraps the model twice (PeftModel -> LoraModel -> the transformers model); LoRA layers live inside the modules,
    # so calling the inner decoder and head directly still runs the adapters.
    for _ in range(3):
        if hasattr(base, "get_decoder") and hasattr(base, "get_output_embeddings"):
            break
        base = getattr(base, "base_model", None) or getattr(base, "model", None)
        if base is None:
            return None
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is base:
        return None
    softcap = getattr(getattr(base, "config", None), "final_logit_softcapping", None)
    return decoder, head, softcap


def _head_logps(hidden: torch.Tensor, targets: torch.Tensor, head, softcap, temperature: float) -> torch.Tensor:
    logits = head(hidden)  # [n, V]
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if temperature != 1.0:
        logits = logits / temperature
    return selective_log_softmax(logits, targets)  # [n]


def _hidden_states(model, decoder, input_ids, attention_mask):
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def token_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    temperature: float = 1.0,
    checkpoint_head: bool | None = None,
) -> torch.Tensor:
    """Log-probability of every token of ``input_ids`` under ``model``, filled in only where ``response_mask`` is 1.

    ``input_ids``, ``attention_mask``, ``response_mask``: ``[B, L]`` (``response_mask`` marks the tokens to score,
    i.e. the response; the first position can never be scored). Returns ``[B, L]`` float32 with 0 outside the mask:
    ``out[b, t] = log π(input_ids[b, t] | input_ids[b, :t])``. Differentiable.
    """
    return token_logps_and_hidden(model, input_ids, attention_mask, response_mask, chunk_size, temperature,
                                  checkpoint_head)[0]


def token_logps_and_hidden(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    temperature: float = 1.0,
    checkpoint_head: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logps`` plus the decoder's final hidden states ``[B, L, H]`` (``None`` for architectures whose head
    cannot be split off), so a caller can reuse the one forward, e.g. for ``chunked_token_kl(policy_hidden=...)``."""
    split = _split_head(model)
    if split is None:  # an architecture we cannot split: fall back to full logits, chunked over the batch rows
        return naive_token_logps(model, input_ids, attention_mask, response_mask, temperature, rows_per_chunk=1), None
    decoder, head, softcap = split
    hidden = _hidden_states(model, decoder, input_ids, attention_mask)  # [B, L, H]
    score = response_mask.bool().clone()
    score[:, 0] = False
    b_idx, t_idx = score.nonzero(as_tuple=True)  # positions t whose token is predicted from t-1
    h = hidden[b_idx, t_idx - 1]  # [N, H]
    targets = input_ids[b_idx, t_idx]  # [N]
    pieces = []
    if checkpoint_head is None:  # auto: recompute only where it can lower the peak (more than one chunk)
        checkpoint_head = h.shape[0] > chunk_size
    for start in range(0, h.shape[0], chunk_size):
        hc, tc = h[start : start + chunk_size], targets[start : start + chunk_size]
        if checkpoint_head and torch.is_grad_enabled() and hc.requires_grad:
            pieces.append(checkpoint(_head_logps, hc, tc, head, softcap, temperature, use_reentrant=False))
        else:
            pieces.append(_head_logps(hc, tc, head, softcap, temperature))
    flat = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    return out.index_put((b_idx, t_idx), flat), hidden


def naive_token_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """The plain computation: full float32 logits, ``log_softmax``, ``gather``. Same output as ``token_logps``."""
    rows = rows_per_chunk or input_ids.shape[0]
    outs = []
    for start in range(0, input_ids.shape[0], rows):
        ids, am = input_ids[start : start + rows], attention_mask[start : start + rows]
        logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits.float()  # [b, L, V]
        if temperature != 1.0:
            logits = logits / temperature
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        outs.append(F.pad(logp, (1, 0)))  # [b, L], position 0 unscored
    mask = response_mask.clone().float()
    mask[:, 0] = 0
    return torch.cat(outs) * mask


def sequence_logps(token_values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum per-token log-probs ``[B, L]`` over the response → ``[B]``."""
    return (token_values * response_mask.to(token_values.dtype)).sum(-1)


def chunked_token_kl(
    policy_model,
    ref_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    policy_hidden: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token-level ``KL(π_ref ‖ π_θ)`` at the response positions, full vocabulary, ``chunk_size`` positions at a time.

    ``ref_model`` may be a context manager factory's product or a plain model; it runs without gradients.
    Returns ``[N]``, one KL per scored response position (order of ``response_mask.nonzero()``)."""
    p_split, r_split = _split_head(policy_model), _split_head(ref_model)
    if p_split is None or r_split is None:
        raise ValueError("chunked_token_kl needs causal LMs that expose get_decoder() and get_output_embeddings()")
    score = response_mask.bool().clone()
    score[:, 0] = False
    b_idx, t_idx = score.nonzero(as_tuple=True)
    if policy_hidden is None:
        policy_hidden = _hidden_states(policy_model, p_split[0], input_ids, attention_mask)
    with torch.no_grad():
        ref_hidden = _hidden_states(ref_model, r_split[0], input_ids, attention_mask)
    hp, hr = policy_hidden[b_idx, t_idx - 1], ref_hidden[b_idx, t_idx - 1]

    def _kl(hp_c, hr_c):
        with torch.no_grad():
            ref_lp = torch.log_softmax(r_split[1](hr_c).float(), dim=-1)
        pol_lp = torch.log_softmax(p_split[1](hp_c).float(), dim=-1)
        return kl_loss(ref_lp, pol_lp)

    pieces = []
    for start in range(0, hp.shape[0], chunk_size):
        args = (hp[start : start + chunk_size], hr[start : start + chunk_size])
        if torch.is_grad_enabled() and args[0].requires_grad:
            pieces.append(checkpoint(_kl, *args, use_reentrant=False))
        else:
            pieces.append(_kl(*args))
    return torch.cat(pieces) if pieces else hp.new_zeros(0, dtype=torch.float32)


@torch.no_grad()
def shared_prefix_sequence_logps(model, groups: list[list[tuple[list[int], list[int]]]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Summed log-prob and count of the marked tokens of rows, each prompt run once.

    ``groups``: lists of ``(input_ids, completion_mask)`` rows; the rows of a group agree up to their first marked
    position ``f`` (one question with several answers, as TOFU scores it). The decoder runs the prefix every group
    shares (a chat template's system prompt) once; each group's own prompt ``ids[:f-1]`` on a copy of that key/value
    cache; then each row's ``ids[f-1:]`` (right-padded, position ids continuing) on the group's cache repeated once
    per row. The values equal ``sequence_logps(token_logps(...))`` on the whole rows up to float rounding (tests
    compare the two). Returns one ``([n], [n])`` pair per group: float32 sums and int64 counts on the model's device.
    Raises ``ValueError`` when a group's rows do not share its prompt or the head cannot be split off."""
    split = _split_head(model)
    if split is None:
        raise ValueError("shared-prefix scoring needs a causal LM exposing get_decoder() and get_output_embeddings()")
    decoder, head, softcap = split
    device = next(model.parameters()).device
    prompts = []  # per group: ids[:f-1]; the last prompt position runs with the answers (it predicts their first token)
    for rows in groups:
        n_prompt = min(list(m).index(1) for _, m in rows) - 1
        if n_prompt < 1 or any(list(ids[:n_prompt]) != list(rows[0][0][:n_prompt]) for ids, _ in rows):
            raise ValueError("rows do not share a prompt before their first scored token")
        prompts.append(list(rows[0][0][:n_prompt]))
    common = os.path.commonprefix(prompts)[: min(len(p) for p in prompts) - 1]  # every group keeps >= 1 own token
    base = None
    if common:
        ids = torch.tensor([common], device=device)  # [1, S]
        base = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).past_key_values
    out = []
    for rows, prompt in zip(groups, prompts):
        own = torch.tensor([prompt[len(common) :]], device=device)  # [1, P - S]
        cache = decoder(input_ids=own, attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
                        past_key_values=copy.deepcopy(base), use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(rows))  # [n, heads, P, d] per layer
        out.append(_score_on_cache(decoder, head, softcap, cache, rows, len(prompt), device))
    return out


def _score_on_cache(decoder, head, softcap, cache, rows, n_prompt: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``ids[n_prompt:]`` on ``cache`` (its first ``n_prompt`` positions, one copy per row)."""
    width = max(len(ids) for ids, _ in rows) - n_prompt
    ids = torch.zeros(len(rows), width, dtype=torch.long)  # [n, A]: pad id irrelevant, masked out and never scored
    mask = torch.zeros(len(rows), width, dtype=torch.long)  # [n, A] attention on the continuation
    score = torch.zeros(len(rows), width, dtype=torch.bool)  # [n, A] tokens scored
    for r, (row_ids, row_mask) in enumerate(rows):
        tail = list(row_ids[n_prompt:])
        ids[r, : len(tail)] = torch.tensor(tail)
        mask[r, : len(tail)] = 1
        score[r, : len(tail)] = torch.tensor(list(row_mask[n_prompt:])).bool()
    ids, mask, score = ids.to(device), mask.to(device), score.to(device)
    score[:, 0] = False  # the continuation's first token is the prompt's last: never scored
    attention = torch.cat([torch.ones(len(rows), n_prompt, dtype=torch.long, device=device), mask], dim=1)  # [n, P+A]
    out = decoder(input_ids=ids, attention_mask=attention, past_key_values=cache, use_cache=True)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # [n, A, H]
    b_idx, t_idx = score.nonzero(as_tuple=True)
    logps = _head_logps(hidden[b_idx, t_idx - 1], ids[b_idx, t_idx], head, softcap, 1.0)  # [N]
    sums = torch.zeros(len(rows), dtype=torch.float32, device=device).index_add(0, b_idx, logps.float())
    return sums, score.sum(-1)
