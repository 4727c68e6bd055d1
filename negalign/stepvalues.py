"""Monte-Carlo step values of solutions from a fixed policy (Setlur et al. 2024, arXiv:2406.14532, SPEC.md §6).

A response ``y`` to a prompt ``x`` is split into steps ``y_1 .. y_m`` (``split_steps``: a delimiter, newline by
default). The value of a prefix is the chance that the fixed SFT policy finishes it correctly::

    Q_i = est( verify(y_1..y_i + c_k) for k = 1..M ),  c_k ~ π_sft(· | x, y_1..y_i)      (0 < i < m)
    Q_0 = the same with the bare prompt,   Q_m = verify(y)  (the response itself is the one trajectory there)

with ``est = max`` (any continuation correct, the paper's choice) or ``mean``. Then ``A_i = Q_i - Q_{i-1}``
(``negalign.losses.step_advantages``) and the *first pit* is the first step with the lowest value
(``negalign.losses.first_pit``).

Every continuation comes from one static policy, so ``estimate_step_values`` collects the prefixes of *all* responses
first (deduplicated: the bare prompt is shared by every response to it, equal leading steps are shared too) and sends
them through ``negalign.generation.generate`` in batches, which appends finished batches to a JSONL file and resumes
from it. The file's name carries a hash of the prefixes and the sampling settings, so a different set of responses
never reads another set's continuations; its header records the policy's identity (``negalign.generation.identity``),
so another policy is refused rather than reusing them. The values are written next to it (``values.jsonl``).

    from negalign.stepvalues import estimate_step_values
    rows = estimate_step_values(items, verify, model="runs/sft", num_continuations=5, cache_dir="runs/values")
    rows[0]["values"], rows[0]["advantages"], rows[0]["first_pit"]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from negalign.losses import first_pit, step_advantages

ESTIMATORS = ("max", "mean")


# ---------------------------------------------------------------------------------------------------------- splitting


def split_steps(text: str, delimiter: str = "\n", answer_marker: str | None = "####") -> list[str]:
    """Split ``text`` into steps; ``"".join(split_steps(text)) == text`` always holds.

    Each step keeps the delimiter that ends it (so a prefix ``"".join(steps[:i])`` ends where the next step starts).
    Blank pieces (empty or whitespace-only: doubled delimiters, a trailing delimiter, ``\\r`` of ``\\r\\n``) never form
    a step of their own: they are glued to the step before them (or, at the very start, to the first step). The line
    holding the last ``answer_marker`` and everything after it form the final step, unsplit, so a delimiter inside the
    final answer (``#### 3.5`` with ``delimiter="."``) does not cut it. Text with no visible characters has no steps.
    """
    if not delimiter:
        raise ValueError("the step delimiter must be a non-empty string")
    protect = len(text)
    if answer_marker and answer_marker in text:
        pos = text.rfind(answer_marker)
        cut = text.rfind(delimiter, 0, pos)
        protect = cut + len(delimiter) if cut >= 0 else 0
    pieces, start = [], 0
    while start < protect:
        j = text.find(delimiter, start)
        if j < 0 or j + len(delimiter) > protect:
            pieces.append(text[start:protect])
            break
        pieces.append(text[start : j + len(delimiter)])
        start = j + len(delimiter)
    if protect < len(text):
        pieces.append(text[protect:])
    steps: list[str] = []
    lead = ""
    for piece in pieces:
        if not piece.strip() or piece.strip() == delimiter.strip() and delimiter.strip():
            if steps:
                steps[-1] += piece
            else:
                lead += piece
        else:
            steps.append(lead + piece)
            lead = ""
    return steps


# ------------------------------------------------------------------------------------------------------------ values


def estimate(outcomes: list[bool], estimator: str) -> float:
    """``max``: 1.0 when any continuation is correct; ``mean``: the share that is."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown value estimator {estimator!r}; expected one of {ESTIMATORS}")
    if not outcomes:
        raise ValueError("no continuations to estimate a value from")
    return float(any(outcomes)) if estimator == "max" else sum(outcomes) / len(outcomes)


def _queries(items: list[dict], delimiter: str, answer_marker: str | None):
    """Per item its steps and, for each prefix that needs continuations, the index of a (deduplicated) query."""
    keys: dict[tuple[str, str, str], int] = {}
    queries: list[tuple[str, str, str]] = []  # (prompt, response prefix, answer)
    plans = []
    for it in items:
        steps = split_steps(it["response"], delimiter, answer_marker)
        slots = []
        for i in range(len(steps)):  # prefix of i steps, i = 0 .. m-1 (Q_m is the response's own verdict)
            key = (it["prompt"], "".join(steps[:i]), str(it["answer"]))
            if key not in keys:
                keys[key] = len(queries)
                queries.append(key)
            slots.append(keys[key])
        if not steps:  # no steps: the bare prompt's value alone
            key = (it["prompt"], "", str(it["answer"]))
            if key not in keys:
                keys[key] = len(queries)
                queries.append(key)
            slots.append(keys[key])
        plans.append((steps, slots))
    return queries, plans


def estimate_step_values(
    items: list[dict],
    verify: Callable[[str, str], bool],
    model=None,
    tokenizer=None,
    engine=None,
    backend: str = "auto",
    num_continuations: int = 5,
    estimator: str = "max",
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    delimiter: str = "\n",
    answer_marker: str | None = "####",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[dict]:
    """Monte-Carlo step values for every response in ``items``.

    ``items``: dicts with ``prompt`` (the exact text the policy is conditioned on, chat template applied),
    ``response`` (its solution text) and ``answer`` (the gold answer ``verify`` compares with).
    ``verify(response_text, answer) -> bool``. The policy is ``model`` (+ ``tokenizer``) through the generation
    engine of ``backend``, or a ready ``engine`` (anything with ``sample(prompts, cfg, seed)``).
    ``cache_dir``: where continuations (resumable) and ``values.jsonl`` go.

    Returns one dict per item (input keys kept) with ``steps`` (m strings), ``values`` ``[Q_0..Q_m]``, ``advantages``
    ``[A_1..A_m]``, ``first_pit`` (0-based step index, None when m = 0) and ``correct`` (the verdict on the response).
    """
    from negalign.generation import generate_distributed

    estimate([True], estimator)  # validates the name before any work
    if num_continuations < 1:
        raise ValueError("num_continuations must be >= 1")
    queries, plans = _queries(items, delimiter, answer_marker)
    texts = [p + prefix for p, prefix, _ in queries]
    out_path = None
    if cache_dir is not None:
        sig = {"texts": texts, "n": num_continuations, "max_new_tokens": max_new_tokens, "temperature": temperature,
               "top_p": top_p, "seed": seed, "batch_size": batch_size}
        digest = hashlib.sha256(json.dumps(sig).encode()).hexdigest()[:16]
        out_path = Path(cache_dir) / f"continuations-{digest}.jsonl"
    rows = generate_distributed(model, texts, out_path, n=num_continuations, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
                                backend=backend, tokenizer=tokenizer, engine=engine, progress=progress) if texts else []
    q_values = []
    for (prompt, prefix, answer), row in zip(queries, rows):
        q_values.append(estimate([bool(verify(prefix + c, answer)) for c in row["completions"]], estimator))
    results = []
    for it, (steps, slots) in zip(items, plans):
        correct = bool(verify(it["response"], str(it["answer"])))
        vals = [q_values[s] for s in slots[: len(steps)]] if steps else [q_values[slots[0]]]
        if steps:
            vals.append(float(correct))  # Q_m: the response's own outcome
        v = torch.tensor(vals, dtype=torch.float64)
        results.append({
            **it,
            "steps": steps,
            "values": vals,
            "advantages": step_advantages(v).tolist(),
            "first_pit": int(first_pit(v)) if steps else None,
            "correct": correct,
        })
    if cache_dir is not None:
        from negalign.distributed import process_state

        state = process_state()  # every process holds the same rows: the main process writes them
        if state.is_main_process:
            write_step_values(Path(cache_dir) / "values.jsonl", results)
        state.wait_for_everyone()
    return results


def write_step_values(path: str | os.PathLike, rows: list[dict]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(p)


def read_step_values(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------- per-token mapping


def step_token_index(tokenizer, prompt: str, steps: list[str], suffix: str = "") -> tuple[list[int], list[int], int]:
    """Token ids of ``prompt + "".join(steps) + suffix`` and, per token, the step it belongs to.

    Returns ``(input_ids, step_of_token, prompt_len)``: ``step_of_token[t]`` is -1 for prompt tokens and the 0-based
    step index for response tokens (a token straddling a boundary goes to the step holding its first character; the
    ``suffix``, e.g. the EOS text, belongs to the last step). ``prompt_len`` counts the prompt's tokens.
    Needs a fast tokenizer (character offsets).
    """
    text = prompt + "".join(steps) + suffix
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    bounds, pos = [], len(prompt)
    for s in steps:
        pos += len(s)
        bounds.append(pos)  # step k covers characters [bounds[k-1], bounds[k])
    step_of, prompt_len = [], 0
    for start, end in offsets:
        ch = start if end > start else max(start - 1, 0)
        if ch < len(prompt) and end <= len(prompt):
            step_of.append(-1)
            prompt_len += 1
            continue
        ch = max(ch, len(prompt))
        k = next((i for i, b in enumerate(bounds) if ch < b), len(steps) - 1)
        step_of.append(k)
    return ids, step_of, prompt_len
