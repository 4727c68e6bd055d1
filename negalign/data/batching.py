"""Prompt + answer → padded ``[B, L]`` batches: the one place where rows of token ids become tensors.

Every trainer and the TOFU evaluation build the same thing: each row is ``prompt_ids + answer_ids`` with a
completion mask (0 on the prompt, 1 on the answer), right-padded to the longest row of the batch:

* ``input_ids`` ``[B, L]``: the row, then ``pad_id``;
* ``attention_mask`` ``[B, L]``: 1 on the row's tokens, 0 on padding;
* ``completion_mask`` ``[B, L]``: the row's mask, 0 on padding;
* ``labels`` (``completion_labels``) ``[B, L]``: ``input_ids`` where the completion mask is 1, else -100.

How a question and its answer become ids under a prompt template (chat / tags / plain, the TOFU parity rules) is
``negalign.data.templates.encode_qa``; a prompt and a completion given as text are tokenised separately here
(``tokenize_pair``), so the answer boundary is exact. Pure functions over lists and tensors: no model, no trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from negalign.errors import DataError

Row = tuple[list[int], list[int]]  # (input_ids, completion_mask)


def pad_token_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, or its EOS when it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def join(prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> Row:
    """``(prompt + completion, completion_mask)``: the mask is 0 on the prompt's ids and 1 on the completion's."""
    return list(prompt_ids) + list(completion_ids), [0] * len(prompt_ids) + [1] * len(completion_ids)


def tokenize_pair(tokenizer, prompt: str, completion: str, max_length: int) -> Row:
    """(input_ids, completion_mask) of prompt + completion text, tokenised separately (no special tokens) so the
    answer boundary is exact. Longer than ``max_length``: the answer keeps at least one token and at most what is
    left after ``min(len(prompt), max_length // 2)`` prompt tokens; the prompt is cut from the left."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not c:
        raise DataError(f"an answer tokenises to nothing (prompt {prompt[:80]!r})")
    if len(p) + len(c) > max_length:
        keep_c = max(1, min(len(c), max_length - min(len(p), max_length // 2)))
        c = c[:keep_c]
        p = p[-(max_length - len(c)):]
    return join(p, c)


def truncate(rows: Sequence[Row], max_length: int | None) -> list[Row]:
    """Each row cut to its first ``max_length`` ids (no cut when None)."""
    if max_length is None:
        return list(rows)
    return [(ids[:max_length], mask[:max_length]) for ids, mask in rows]


def right_pad(seqs: Sequence[Sequence], value, length: int | None = None, dtype=torch.long) -> torch.Tensor:
    """``[B, L]`` tensor of the sequences, each followed by ``value`` up to ``length`` (default: the longest)."""
    length = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=dtype)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.tensor(list(s), dtype=dtype)
    return out


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, each ``[B, L]``: the id sequences padded with ``pad_id`` on ``side``
    (``right`` for scoring and training, ``left`` for batched generation, where every prompt ends at column L-1)."""
    if side == "right":
        return right_pad(seqs, pad_id), right_pad([[1] * len(s) for s in seqs], 0)
    if side != "left":
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, length - len(s):] = torch.tensor(list(s), dtype=torch.long)
            am[i, length - len(s):] = 1
    return ids, am


def pad_rows(rows: Sequence[Row], pad_id: int, length: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad ``[(input_ids, completion_mask)]`` → ``(input_ids, attention_mask, completion_mask)``, each
    ``[B, L]`` long, ``L`` = ``length`` or the longest row."""
    length = length or max(len(ids) for ids, _ in rows)
    ids = right_pad([r[0] for r in rows], pad_id, length)
    am = right_pad([[1] * len(r[0]) for r in rows], 0, length)
    cm = right_pad([r[1] for r in rows], 0, length)
    return ids, am, cm


def completion_labels(input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """``labels`` ``[B, L]``: ``input_ids`` where ``completion_mask`` is 1, -100 (ignored by the loss) elsewhere."""
    return input_ids.masked_fill(completion_mask == 0, -100)


__all__ = ["completion_labels", "join", "pad_rows", "pad_sequences", "pad_token_id", "right_pad", "tokenize_pair",
           "truncate"]
