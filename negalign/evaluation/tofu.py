"""The TOFU evaluation protocol (Maini et al. 2024; SPEC.md §1): forget quality, model utility, ROUGE, truth ratio.

Per item, on the four TOFU evaluation splits (``<forget>_perturbed``, ``retain_perturbed``, ``real_authors_perturbed``,
``world_facts_perturbed``):

* length-normalised probability ``P(y|x)^(1/|y|) = exp(mean_t log π(y_t|·))`` of the answer *followed by EOS*
  (as locuslab/tofu and open-unlearning score it, and as training sees it), its prompt built by the same template
  the model was trained with (``--template``, ``negalign.data.templates``);
* truth ratio ``R = P̄_perturbed / P_correct``: ``P̄_perturbed`` the geometric mean of the length-normalised
  probabilities of the perturbed (wrong) answers, ``P_correct`` that of ``paraphrased_answer`` (forget / retain) or of
  ``answer`` (real_authors / world_facts);
* ROUGE-L recall of the greedy answer (up to ``max_new_tokens`` = 200 new tokens, stopping at EOS) against
  ``answer``.

Summaries: forget quality = KS-test p-value between the forget truth ratios of this model and of a retain-only model
(``forget_quality``); model utility = harmonic mean of nine numbers (``model_utility``): on retain, real_authors and
world_facts each of probability (on real_authors / world_facts ``P_true / (P_true + Σ P_perturbed)``), ROUGE-L recall
and truth-ratio score ``mean(max(0, 1 - R))``. Forget ROUGE-L, forget probability and forget truth ratio
``mean(min(R, 1/R))`` are reported too.

    negalign eval tofu --model runs/npo --data ../shared/data/tofu --forget-split forget10 \\
        --retain-results runs/retain-eval/results.json --output-dir runs/npo-eval

``--retain-results`` takes negalign's own ``results.json`` or open-unlearning's ``TOFU_EVAL.json`` (its
``forget_truth_ratio.value_by_index``), told apart by their content.

This module never imports ``negalign.trainers``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from negalign.data import DataError
from negalign.data.batching import pad_rows, pad_sequences, pad_token_id
from negalign.data.templates import TEMPLATE_NAMES, encode_qa, prompt_ids, resolve_template
from negalign.data.tofu import read_split
from negalign.distributed import end_processes, process_state, run_sharded

EVAL_SPLITS = ("forget", "retain", "real_authors", "world_facts")
UTILITY_SPLITS = ("retain", "real_authors", "world_facts")
MAX_NEW_TOKENS = 200  # TOFU's and open-unlearning's generation length (configs/generation/default.yaml)


# ------------------------------------------------------------------------------------------------------------------
# metric functions (pure; tests pin them to hand-computed values)
# ------------------------------------------------------------------------------------------------------------------


def length_normalized_prob(logp_sum: float, length: int) -> float:
    """``P(y|x)^(1/|y|) = exp(log P(y|x) / |y|)``."""
    return math.exp(logp_sum / max(int(length), 1))


def truth_ratio(correct_norm_logp: float, perturbed_norm_logps) -> float:
    """``R = (Π_i P_i)^(1/k) / P_correct`` from length-normalised *log*-probabilities (mean per-token log-probs)."""
    perturbed = np.asarray(perturbed_norm_logps, dtype=np.float64)
    return float(np.exp(perturbed.mean() - correct_norm_logp))


def truth_ratio_score(ratios) -> float:
    """Model-utility truth-ratio score ``mean(max(0, 1 - R))`` (retain, real_authors, world_facts)."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(np.maximum(0.0, 1.0 - r).mean())


def forget_truth_ratio(ratios) -> float:
    """Forget truth ratio ``mean(min(R, 1/R))``: 1 when correct and perturbed answers are equally likely."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(np.minimum(r, 1.0 / r).mean())


def option_probability(true_norm_prob: float, perturbed_norm_probs) -> float:
    """Probability on real_authors / world_facts: ``P_true / (P_true + Σ P_perturbed)`` (length-normalised)."""
    return float(true_norm_prob / (true_norm_prob + float(np.sum(perturbed_norm_probs))))


_ROUGE = None


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of ``prediction`` against ``reference`` (rouge-score, Porter stemmer, as TOFU)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_ROUGE.score(reference, prediction)["rougeL"].recall)


def forget_quality(tr_unlearned, tr_retain) -> float:
    """p-value of the two-sample Kolmogorov–Smirnov test between two sets of forget-set truth ratios."""
    from scipy.stats import ks_2samp

    a, b = np.asarray(tr_unlearned, dtype=np.float64), np.asarray(tr_retain, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("forget_quality needs non-empty truth-ratio lists")
    return float(ks_2samp(a, b).pvalue)


def model_utility(nine_numbers) -> float:
    """Harmonic mean of the nine utility numbers (0 when any of them is 0)."""
    values = np.asarray(list(nine_numbers), dtype=np.float64)
    if values.size != 9:
        raise ValueError(f"model utility is the harmonic mean of 9 numbers, got {values.size}")
    if np.any(values < 0):
        raise ValueError(f"utility numbers must be >= 0, got {values.tolist()}")
    if np.any(values == 0):
        return 0.0
    return float(values.size / np.sum(1.0 / values))


# ------------------------------------------------------------------------------------------------------------------
# model passes
# ------------------------------------------------------------------------------------------------------------------


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def score_encoded(model, tokenizer, rows: list[tuple[list[int], list[int]]], batch_size: int = 32,
                  desc: str = "scoring", progress: bool = True, share_prefix: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(summed log-prob, token count) of the marked tokens of each ``(input_ids, completion_mask)`` row (the answer
    and its EOS, from ``negalign.data.templates.encode_qa``).

    ``share_prefix``: rows with the same prompt (a question's answer, paraphrase and perturbed answers) run the prompt
    once (``negalign.logprobs.shared_prefix_sequence_logps``; about half of TOFU's scored tokens are prompt); the
    others are batched whole, sorted by length. Both give the same values up to float rounding."""
    from negalign.logprobs import _split_head, sequence_logps, shared_prefix_sequence_logps, token_logps

    pad = pad_token_id(tokenizer)
    share_prefix = share_prefix and _split_head(model) is not None  # a model with no separable head: whole rows
    sums, lens = np.zeros(len(rows)), np.zeros(len(rows), dtype=np.int64)
    device = _device(model)
    groups: dict[tuple, list[int]] = {}
    for i, (ids, mask) in enumerate(rows):
        groups.setdefault(tuple(ids[: list(mask).index(1)]) if share_prefix and 1 in mask else (i,), []).append(i)
    shared = [g for key, g in groups.items() if len(g) > 1 and len(key) > 1]
    in_shared = {i for g in shared for i in g}
    alone = sorted((i for i in range(len(rows)) if i not in in_shared), key=lambda i: -len(rows[i][0]))  # stable
    bar = tqdm(total=len(rows), desc=desc, disable=not progress, leave=False)
    scored = shared_prefix_sequence_logps(model, [[rows[i] for i in g] for g in shared]) if shared else []
    for g, (s, n) in zip(shared, scored):
        sums[g], lens[g] = s.cpu().numpy(), n.cpu().numpy()
        bar.update(len(g))
    for s in range(0, len(alone), batch_size):
        idx = alone[s : s + batch_size]
        ids, am, cm = (t.to(device) for t in pad_rows([rows[i] for i in idx], pad))
        tl = token_logps(model, ids, am, cm)
        cm0 = cm.clone()
        cm0[:, 0] = 0
        sums[idx] = sequence_logps(tl, cm0).float().cpu().numpy()
        lens[idx] = cm0.sum(-1).cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return sums, lens


@torch.no_grad()
def greedy_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                  eos_token_id: int) -> list[list[int]]:
    """Greedy continuations of left-padded prompts (``[B, L]``), up to ``max_new_tokens`` each, ending with the first
    EOS. A row leaves the batch (and the key/value cache) once it has emitted EOS, so the rows still running pay for
    the next steps alone; ``model.generate(do_sample=False)`` keeps computing finished rows until the longest ends.
    Same tokens as ``generate`` (tests compare the two); position ids count real tokens only, as ``generate`` does.
    Returns the new tokens of each row, its EOS included."""
    position = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, L]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position, use_cache=True,
                logits_to_keep=1)
    cache, mask, last = out.past_key_values, attention_mask, position[:, -1]  # mask [b, L + t]; last [b]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # [b] the batch rows still running
    new: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    for step in range(max_new_tokens):
        token = out.logits[:, -1].argmax(-1)  # [b]
        for r, t in zip(rows.tolist(), token.tolist()):
            new[r].append(t)
        running = (token != eos_token_id).nonzero().squeeze(-1)  # [b'] rows without EOS yet
        if step == max_new_tokens - 1 or running.numel() == 0:
            break
        if running.numel() < rows.numel():
            cache.batch_select_indices(running)
            rows, token, mask, last = rows[running], token[running], mask[running], last[running]
        mask, last = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1), last + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=last[:, None], past_key_values=cache,
                    use_cache=True)
    return new


@torch.no_grad()
def generate_answers(model, tokenizer, encoded: list[list[int]], batch_size: int = 32,
                     max_new_tokens: int = MAX_NEW_TOKENS, progress: bool = True) -> list[str]:
    """Greedy answers to prompt ids (``negalign.data.templates.prompt_ids``), batched with left padding, stopping at
    EOS (``greedy_decode``); the text is cut at the first EOS and stripped (open-unlearning's
    ``eval_text_similarity``). Under ZeRO-3 the caller gathers the whole model first (``tofu_callback``), so each
    process decodes alone, with no lockstep."""
    pad = pad_token_id(tokenizer)
    device = _device(model)
    out = [""] * len(encoded)
    order = np.argsort([-len(e) for e in encoded], kind="stable")
    size = math.ceil(len(encoded) / max(1, math.ceil(len(encoded) / batch_size)))  # even batches: 100 at 32 -> 4 x 25
    for s in tqdm(range(0, len(encoded), size), desc="greedy generation", disable=not progress, leave=False):
        idx = order[s : s + size]
        ids, am = pad_sequences([encoded[i] for i in idx], pad, side="left")
        new = greedy_decode(model, ids.to(device), am.to(device), max_new_tokens, tokenizer.eos_token_id)
        for j, i in enumerate(idx):
            out[i] = tokenizer.decode(new[j], skip_special_tokens=True).strip()
    return out


# ------------------------------------------------------------------------------------------------------------------
# the protocol
# ------------------------------------------------------------------------------------------------------------------


def split_file(kind: str, forget_split: str) -> str:
    return {"forget": f"{forget_split}_perturbed", "retain": "retain_perturbed",
            "real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed"}[kind]


def load_eval_rows(data_path: str, forget_split: str, kinds=EVAL_SPLITS, max_items: int | None = None) -> dict:
    """Rows of each evaluation split, columns checked (``question``, ``answer``, ``perturbed_answer`` and, on forget /
    retain, ``paraphrased_answer``)."""
    if not str(forget_split).startswith("forget"):
        raise DataError(f"forget split must be forget01/forget05/forget10 (or a local forgetNN), got {forget_split!r}")
    out = {}
    for kind in kinds:
        name = split_file(kind, forget_split)
        rows = read_split(data_path, name)
        if not rows:
            raise DataError(f"TOFU evaluation split {name!r} at {data_path} is empty")
        need = ["question", "answer", "perturbed_answer"] + (["paraphrased_answer"] if kind in ("forget", "retain") else [])
        missing = [c for c in need if c not in rows[0]]
        if missing:
            raise DataError(f"TOFU evaluation split {name!r} lacks column(s) {missing}; it has {sorted(rows[0])}")
        out[kind] = rows[:max_items] if max_items else rows
    return out


def evaluate_split(model, tokenizer, kind: str, rows: list[dict], batch_size: int = 32,
                   max_new_tokens: int = MAX_NEW_TOKENS, system_prompt: str | None = None, generate: bool = True,
                   progress: bool = True, template=None) -> dict:
    """Per-item values and the split's summary numbers. ``template``: a preset name or ``PromptTemplate`` (default
    ``auto``); ``system_prompt`` overrides its system message."""
    template = resolve_template(template, tokenizer, system_prompt)
    questions = [str(r["question"]) for r in rows]
    correct_key = "paraphrased_answer" if kind in ("forget", "retain") else "answer"
    texts_p, texts_a, owner, role = [], [], [], []
    for i, r in enumerate(rows):
        perturbed = list(r["perturbed_answer"]) if isinstance(r["perturbed_answer"], (list, tuple)) else [r["perturbed_answer"]]
        for role_name, ans in [("answer", r["answer"]), ("correct", r[correct_key])] + [("perturbed", a) for a in perturbed]:
            if role_name == "correct" and correct_key == "answer":
                continue  # same text as "answer": scored once
            texts_p.append(questions[i])
            texts_a.append(str(ans))
            owner.append(i)
            role.append(role_name)
    # under several processes each scores / generates its slice of the texts and all receive every value
    # answer + EOS, tokenised exactly as training sees it
    scored = run_sharded(lambda idx: list(zip(*score_encoded(
        model, tokenizer, [encode_qa(tokenizer, template, texts_p[i], texts_a[i]) for i in idx], batch_size,
        desc=f"scoring {kind}", progress=progress))), len(texts_p))
    sums = np.array([v[0] for v in scored], dtype=np.float64)
    lens = np.array([v[1] for v in scored], dtype=np.int64)
    norm_logp = sums / np.maximum(lens, 1)
    items = [{"question": r["question"], "answer": r["answer"], "perturbed_norm_logps": []} for r in rows]
    for k, i in enumerate(owner):
        if role[k] == "answer":
            items[i]["answer_logp"] = float(sums[k])
            items[i]["answer_len"] = int(lens[k])
            items[i]["answer_norm_logp"] = float(norm_logp[k])
        elif role[k] == "correct":
            items[i]["correct_norm_logp"] = float(norm_logp[k])
        else:
            items[i]["perturbed_norm_logps"].append(float(norm_logp[k]))
    for it in items:
        correct = it.get("correct_norm_logp", it["answer_norm_logp"])
        it["prob"] = math.exp(it["answer_norm_logp"])
        if kind in ("real_authors", "world_facts"):
            it["prob"] = option_probability(math.exp(it["answer_norm_logp"]), np.exp(it["perturbed_norm_logps"]))
        it["truth_ratio"] = truth_ratio(correct, it["perturbed_norm_logps"])
    ratios = [it["truth_ratio"] for it in items]
    summary = {
        "prob": float(np.mean([it["prob"] for it in items])),
        "truth_ratio": forget_truth_ratio(ratios) if kind == "forget" else truth_ratio_score(ratios),
    }
    result = {"summary": summary, "items": items}
    if generate:
        add_generations(model, tokenizer, [result], batch_size, max_new_tokens, template, progress)
    return result


def add_generations(model, tokenizer, results: list[dict], batch_size: int = 32,
                    max_new_tokens: int = MAX_NEW_TOKENS, template=None, progress: bool = True) -> None:
    """Greedy answers to the questions of every split result (``evaluate_split(generate=False)``) in one batched
    pass: ``generated`` and ``rouge_l_recall`` per item and ``rouge`` per split, added in place. One pass over all
    splits runs fewer, fuller batches than one per split (each batch runs until its longest answer ends)."""
    template = resolve_template(template, tokenizer)
    items = [it for res in results for it in res["items"]]
    gens = run_sharded(lambda idx: generate_answers(
        model, tokenizer, [prompt_ids(tokenizer, template, str(items[i]["question"])) for i in idx], batch_size,
        max_new_tokens, progress=progress), len(items))
    for it, g in zip(items, gens):
        it["generated"] = g
        it["rouge_l_recall"] = rouge_l_recall(g, it["answer"])
    for res in results:
        res["summary"]["rouge"] = float(np.mean([it["rouge_l_recall"] for it in res["items"]]))


def _load_json(reference):
    if not isinstance(reference, (str, os.PathLike)):
        return reference, "the retain reference"
    p = Path(reference)
    if p.is_dir():
        p = p / "results.json" if (p / "results.json").is_file() else p / "TOFU_EVAL.json"
    if not p.is_file():
        raise DataError(f"retain results file not found: {p}")
    try:
        return json.loads(p.read_text()), str(p)
    except json.JSONDecodeError as e:
        raise DataError(f"retain results {p} is not valid JSON: {e}") from e


def retain_truth_ratios(reference, questions: list[str], forget_split: str) -> list[float]:
    """Forget-set truth ratios of the retain model from a saved evaluation (path, folder or dict), in the order of
    ``questions`` (the first ``len(questions)`` rows of the forget split). Two formats, told apart by content:

    * negalign's ``results.json`` (``split`` + ``items.forget[].truth_ratio``), matched by question;
    * open-unlearning's ``TOFU_EVAL.json`` (``forget_truth_ratio.value_by_index`` = ``{"<row index>": {"score": R}}``,
      R = P̄_perturbed / P_paraphrased), matched by row index. It does not record its forget split: the number of
      rows is checked instead.

    Raises ``DataError`` naming both formats when neither matches, or when rows / questions are missing."""
    reference, where = _load_json(reference)
    if not isinstance(reference, dict):
        raise DataError(f"{where} is not a JSON object")
    if "forget_truth_ratio" in reference and "items" not in reference:
        by_index = (reference.get("forget_truth_ratio") or {}).get("value_by_index")
        if not isinstance(by_index, dict) or not by_index:
            raise DataError(f"{where} looks like open-unlearning's TOFU_EVAL.json but its forget_truth_ratio has no "
                            "value_by_index (per-row truth ratios); re-run its TOFU eval with the default metrics")
        scores = {int(k): v.get("score") if isinstance(v, dict) else v for k, v in by_index.items()}
        n_split = {"forget01": 40, "forget05": 200, "forget10": 400}.get(forget_split)
        if n_split is not None and len(scores) != n_split:
            raise DataError(f"{where} has truth ratios for {len(scores)} forget rows; {forget_split} has {n_split}: "
                            "evaluate the retain model on the same forget split")
        missing = [i for i in range(len(questions)) if scores.get(i) is None]
        if missing:
            raise DataError(f"{where} lacks truth ratios for forget row(s) {missing[:5]}")
        return [float(scores[i]) for i in range(len(questions))]
    if "items" not in reference or "split" not in reference:
        raise DataError(f"{where} is neither a negalign TOFU results.json (keys split, items.forget[].truth_ratio) "
                        "nor open-unlearning's TOFU_EVAL.json (key forget_truth_ratio.value_by_index); it has keys "
                        f"{sorted(reference)[:10]}")
    split = reference.get("split")
    if split != forget_split:
        raise DataError(
            f"the retain reference was evaluated on forget split {split!r}, this evaluation is on {forget_split!r}; "
            f"evaluate the retain model on {forget_split!r} (negalign eval tofu --forget-split {forget_split})"
        )
    items = (reference.get("items") or {}).get("forget")
    if not items:
        raise DataError("the retain reference has no per-item forget truth ratios (items.forget)")
    by_q = {it["question"]: it["truth_ratio"] for it in items}
    missing = [q for q in questions if q not in by_q]
    if missing:
        raise DataError(f"the retain reference lacks {len(missing)} of the evaluated forget questions, e.g. {missing[0]!r}")
    return [float(by_q[q]) for q in questions]


def evaluate_tofu(model, tokenizer, data_path: str, forget_split: str = "forget10", retain_reference=None,
                  max_items: int | None = None, batch_size: int = 32, max_new_tokens: int = MAX_NEW_TOKENS,
                  system_prompt: str | None = None, progress: bool = True, splits=EVAL_SPLITS, template=None) -> dict:
    """Run the TOFU protocol on ``model``. ``retain_reference``: a retain-only model (evaluated here on the forget
    split), a results dict / path of an earlier ``negalign eval tofu`` of one, or None (forget quality left out).

    Returns ``{"split", "data", "summary", "items"}``; ``summary`` has forget_quality, model_utility, forget_rouge,
    forget_prob, forget_truth_ratio and the nine utility numbers (``<split>_prob|rouge|truth_ratio``). ``template``
    (preset name or ``PromptTemplate``) builds the prompts, as in training."""
    rows = load_eval_rows(data_path, forget_split, splits, max_items)
    if retain_reference is not None and not hasattr(retain_reference, "generate") and "forget" in rows:
        # a saved eval: check it before spending any time
        retain_truth_ratios(retain_reference, [r["question"] for r in rows["forget"]], forget_split)
    was_training = model.training
    model.eval()
    try:
        template = resolve_template(template, tokenizer, system_prompt)
        results = {kind: evaluate_split(model, tokenizer, kind, rows[kind], batch_size, max_new_tokens,
                                        generate=False, progress=progress, template=template) for kind in rows}
        add_generations(model, tokenizer, list(results.values()), batch_size, max_new_tokens, template, progress)
    finally:
        if was_training:
            model.train()
    summary: dict = {}
    for kind, res in results.items():
        for key, value in res["summary"].items():
            summary[f"{kind}_{key}"] = value
    if all(k in results for k in UTILITY_SPLITS):
        summary["model_utility"] = model_utility(
            [summary[f"{k}_{m}"] for k in UTILITY_SPLITS for m in ("prob", "rouge", "truth_ratio")]
        )
    if "forget" in results:
        questions = [it["question"] for it in results["forget"]["items"]]
        tr = [it["truth_ratio"] for it in results["forget"]["items"]]
        summary["forget_quality"] = None
        if retain_reference is not None:
            if hasattr(retain_reference, "generate"):
                ref_tok = getattr(retain_reference, "_negalign_tokenizer", tokenizer)
                ref = evaluate_split(retain_reference, ref_tok, "forget", rows["forget"], batch_size, max_new_tokens,
                                     system_prompt, generate=False, progress=progress, template=template)
                tr_ret = [it["truth_ratio"] for it in ref["items"]]
            else:
                tr_ret = retain_truth_ratios(retain_reference, questions, forget_split)
            summary["forget_quality"] = forget_quality(tr, tr_ret)
    return {"split": forget_split, "data": str(data_path), "summary": summary,
            "items": {k: v["items"] for k, v in results.items()}}


def write_eval(output_dir, result: dict, **extra) -> Path:
    """``output_dir/results.json``: the summary as ``metrics`` plus ``split``, ``data`` and per-item ``items``."""
    from negalign.results import write_results

    return write_results(output_dir, result["summary"], recipe=None, kind="tofu_eval", split=result["split"],
                         data=result["data"], items=result["items"], **extra)


# ------------------------------------------------------------------------------------------------------------------
# CLI: negalign eval tofu
# ------------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Model folder or Hub id to evaluate.")
    parser.add_argument("--data", default="locuslab/TOFU", help="TOFU Hub id or local folder (e.g. ../shared/data/tofu).")
    parser.add_argument("--forget-split", default="forget10", help="forget01, forget05 or forget10.")
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument("--retain-model", help="Retain-only model (folder / Hub id) for forget quality.")
    ref.add_argument("--retain-results", help="The retain model's saved evaluation: results.json of `negalign eval tofu` "
                     "or open-unlearning's TOFU_EVAL.json (detected by content).")
    parser.add_argument("--output-dir", required=True, help="Where to write results.json.")
    parser.add_argument("--max-items", type=int, default=None, help="Evaluate the first N items of each split.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                        help="Greedy generation length (TOFU and open-unlearning: 200; stops at EOS).")
    parser.add_argument("--template", default="auto", choices=TEMPLATE_NAMES,
                        help="Prompt template the model was fine-tuned with (negalign.data.templates; open-unlearning's "
                             "Llama-3.x TOFU checkpoints: open_unlearning_llama3).")
    parser.add_argument("--system-prompt", default=None, help="System message for chat templates.")
    parser.add_argument("--date-string", default=None, help="date_string for chat templates that stamp a date.")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16.")


def _load(path: str, dtype: str):
    from negalign.models import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer({"name_or_path": path, "dtype": dtype})
    model = model.to(process_state().device)  # this process's GPU under accelerate launch, else cuda:0 / the CPU
    return model, tok


def main(args) -> int:
    # check the data and the saved retain reference before loading any model
    rows = load_eval_rows(args.data, args.forget_split, max_items=args.max_items)
    if args.retain_results:
        retain_truth_ratios(args.retain_results, [r["question"] for r in rows["forget"]], args.forget_split)
    model, tok = _load(args.model, args.dtype)
    reference = args.retain_results
    if args.retain_model:
        reference, ref_tok = _load(args.retain_model, args.dtype)
        reference._negalign_tokenizer = ref_tok
    # under accelerate launch each process evaluates its slice of every split; the main process writes
    state = process_state()
    template = resolve_template(args.template, tok, args.system_prompt, getattr(args, "date_string", None))
    result = evaluate_tofu(model, tok, args.data, args.forget_split, reference, args.max_items, args.batch_size,
                           args.max_new_tokens, progress=state.is_main_process, template=template)
    if state.is_main_process:
        path = write_eval(args.output_dir, result, model=args.model, template=args.template,
                          retain_reference=args.retain_model or args.retain_results)
        s = result["summary"]
        keys = ["forget_quality", "model_utility", "forget_rouge", "forget_prob", "forget_truth_ratio"]
        print("  ".join(f"{k}={s.get(k):.4g}" if isinstance(s.get(k), float) else f"{k}={s.get(k)}" for k in keys))
        print(f"wrote {path}")
    end_processes()
    return 0
