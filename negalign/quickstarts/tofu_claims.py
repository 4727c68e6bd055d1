"""The npo-tofu quickstart's claims (SPEC §8): paired per-item comparisons, and forget quality by a bootstrap.

The NPO paper's claims, stated so that each is decided by a 95% interval over the evaluation items
(``negalign.evaluation.claims``: paired bootstrap over items; several seeds resampled with them, a crossed bootstrap):

* **utility**: "GA utility < fine-tuned", "NPO+RT utility > GA utility", "NPO+RT utility ≥ 0.8 × fine-tuned", on a
  *per-item utility score*: for each question of retain, real_authors and world_facts, the mean of its three utility
  components — probability (``P^(1/|y|)``, or ``P_true / (P_true + Σ P_perturbed)`` on real_authors / world_facts),
  ROUGE-L recall and ``max(0, 1 − R)``. TOFU's model utility is the *harmonic* mean of the nine split means of these
  components; it has no per-item form, so the claims use their arithmetic per-item mean (same items, same
  components, one number per question).
* **"NPO+RT retain ROUGE-L ≥ 0.8 × fine-tuned"** (within 20%): per retain question, NPO+RT's ROUGE-L against 0.8 ×
  the fine-tuned model's (the threshold is inside the paired difference, so its own noise is resampled too).
* **"NPO+RT forget ROUGE-L < fine-tuned"**: per forget question.
* **"NPO+RT forget truth ratio closer to the retain model's than the fine-tuned's"**: per forget question,
  ``|log R − log R_retain|`` for NPO+RT against the same for the fine-tuned model. Log scale, because ``R`` is a
  ratio of probabilities (a factor of 2 either way is the same distance); forget quality's KS test is unchanged by
  that monotone transform.
* **"NPO+RT forget quality ≥ 0.05"**: forget quality is a KS p-value over the whole forget set, not a mean of items.
  Its interval is a percentile bootstrap (``scipy.stats.bootstrap``, ``FQ_RESAMPLES`` resamples, fixed seed) over
  forget questions, paired: a resample draws question indices and takes both the method's and the retain model's
  truth ratios of those questions; the statistic is the median over seeds of each seed's KS p-value on the resample.
  ``difference`` is the measured (median) forget quality − 0.05, the interval is that of the resampled statistic −
  0.05. This is deliberately hard to *reproduce*: a p-value is uniform when the two distributions are equal, so
  resamples land below 0.05 often even then; a claim "not distinguishable from the retain model" can be
  contradicted (every resample far below 0.05) far more readily than reproduced — read ``inconclusive`` as "not
  shown either way". Resampling with duplicates adds ties, which the KS test treats exactly (scipy's ks_2samp).
  With so few questions that even two wholly separated samples give a p-value ≥ 0.05 (n ≤ 3: ``2 / C(2n, n)``)
  the test cannot reject and the claim is ``inconclusive`` whatever the interval. Forget quality of each seed is
  reported beside the claim (``forget_quality_per_seed``).

Only numpy and scipy (and the TOFU metric functions): no model.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

FQ_THRESHOLD = 0.05  # TOFU's "forget quality ≥ 0.05": the KS test does not reject at 5%
UTILITY_FRACTION = 0.8  # "keeps utility": at least 80% of the fine-tuned model's
FQ_RESAMPLES = 1999  # bootstrap resamples of the forget-quality interval (one KS test each)
UTILITY_SPLITS = ("retain", "real_authors", "world_facts")


def load_items(results_json) -> dict[str, list[dict]]:
    """Per-item TOFU values (``items``) of a ``negalign eval tofu`` / in-training evaluation results.json."""
    return json.loads(Path(results_json).read_text())["items"]


def utility_scores(items: dict) -> list[float]:
    """Per utility question (retain, real_authors, world_facts in that order): mean of prob, ROUGE-L and
    max(0, 1 − R)."""
    return [float(np.mean([it["prob"], it["rouge_l_recall"], max(0.0, 1.0 - it["truth_ratio"])]))
            for kind in UTILITY_SPLITS for it in items[kind]]


def column(items: dict, kind: str, key: str) -> list[float]:
    return [float(it[key]) for it in items[kind]]


def _by_question(items: dict, reference: dict) -> list[float]:
    ref = {it["question"]: it["truth_ratio"] for it in reference["forget"]}
    missing = [it["question"] for it in items["forget"] if it["question"] not in ref]
    if missing:
        raise ValueError(f"the retain evaluation has no forget question {missing[0]!r}")
    return [float(ref[it["question"]]) for it in items["forget"]]


def truth_ratio_distance(items: dict, retain_items: dict) -> list[float]:
    """Per forget question ``|log R − log R_retain|`` (matched by question)."""
    ref = _by_question(items, retain_items)
    return [abs(math.log(it["truth_ratio"]) - math.log(r)) for it, r in zip(items["forget"], ref)]


def forget_quality_claim(claim: str, tr_by_seed, tr_retain, seeds, threshold: float = FQ_THRESHOLD,
                         n_resamples: int = FQ_RESAMPLES, random_state: int = 0) -> dict:
    """``claim`` "forget quality ≥ threshold" as a claims entry (see the module docstring).

    ``tr_by_seed``: ``[n_seeds, n_items]`` forget truth ratios of the method, ``tr_retain``: ``[n_items]`` the retain
    model's for the same questions in the same order."""
    from scipy import stats

    from negalign.evaluation.claims import verdict
    from negalign.evaluation.tofu import forget_quality

    tr = np.atleast_2d(np.asarray(tr_by_seed, dtype=float))  # [S, N]
    ret = np.asarray(tr_retain, dtype=float)  # [N]
    if tr.shape[1] != ret.shape[0]:
        raise ValueError(f"{tr.shape[1]} truth ratios per seed against {ret.shape[0]} of the retain model")
    seeds = [int(s) for s in seeds]
    if len(seeds) != tr.shape[0]:
        raise ValueError(f"{len(seeds)} seeds named for {tr.shape[0]} rows of truth ratios")

    def stat(idx):  # idx [N] resampled question indices
        idx = np.asarray(idx, dtype=int)
        return float(np.median([forget_quality(row[idx], ret[idx]) for row in tr]))

    n = ret.shape[0]
    measured = stat(np.arange(n))
    lo = hi = math.nan
    if n >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a degenerate bootstrap distribution (every resample alike) warns
            res = stats.bootstrap((np.arange(n),), stat, vectorized=False, n_resamples=n_resamples,
                                  confidence_level=0.95, method="percentile", rng=np.random.default_rng(random_state))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isfinite(lo) and math.isfinite(hi)):  # every resample the same value
            lo = hi = measured

    def num(v):
        return float(v - threshold) if math.isfinite(v) else None

    decided = verdict(lo - threshold, hi - threshold, ">", 0.0)
    # with few items the KS test cannot reject at all: two wholly separated samples of n give p = 2 / C(2n, n)
    # (0.1 at n = 3), so "≥ threshold" would hold by construction; such a claim is not decided
    if n < 2 or forget_quality(np.arange(n), np.arange(n) + n) >= threshold:
        decided = "inconclusive"
    return {"claim": claim, "difference": num(measured), "ci_low": num(lo), "ci_high": num(hi),
            "verdict": decided, "n_items": int(n), "seeds": seeds}


def npo_tofu_claims(items: dict, seeds: list[int]) -> list[dict]:
    """The quickstart's claims from per-item evaluations: ``items["finetuned"]`` / ``items["retain"]`` one
    evaluation (shared by every seed), ``items[method]`` a list of evaluations, one per seed."""
    from negalign.evaluation.claims import paired_claim

    ft, ret = items["finetuned"], items["retain"]
    n = len(seeds)

    def per_seed(fn, m):
        return [fn(ev) for ev in items[m]]

    def shared(fn, model, scale=1.0):  # the fine-tuned model's values, repeated for each seed (paired by item)
        return [[scale * v for v in fn(model)] for _ in range(n)]

    out = []
    if "ga" in items:
        out.append(paired_claim("GA utility < fine-tuned (per-item utility score)", per_seed(utility_scores, "ga"),
                                shared(utility_scores, ft), "<", seeds=seeds))
    if "npo_rt" in items:
        if "ga" in items:
            out.append(paired_claim("NPO+RT utility > GA utility (per-item utility score)",
                                    per_seed(utility_scores, "npo_rt"), per_seed(utility_scores, "ga"), ">",
                                    seeds=seeds))
        out.append(paired_claim(f"NPO+RT utility ≥ {UTILITY_FRACTION:g} × fine-tuned (per-item utility score)",
                                per_seed(utility_scores, "npo_rt"), shared(utility_scores, ft, UTILITY_FRACTION),
                                ">", seeds=seeds))
        retain_rouge = lambda ev: column(ev, "retain", "rouge_l_recall")  # noqa: E731
        out.append(paired_claim(f"NPO+RT retain ROUGE-L ≥ {UTILITY_FRACTION:g} × fine-tuned (within 20%)",
                                per_seed(retain_rouge, "npo_rt"), shared(retain_rouge, ft, UTILITY_FRACTION), ">",
                                seeds=seeds))
        forget_rouge = lambda ev: column(ev, "forget", "rouge_l_recall")  # noqa: E731
        out.append(paired_claim("NPO+RT forget ROUGE-L < fine-tuned", per_seed(forget_rouge, "npo_rt"),
                                shared(forget_rouge, ft), "<", seeds=seeds))
        dist = lambda ev: truth_ratio_distance(ev, ret)  # noqa: E731
        out.append(paired_claim("NPO+RT forget truth ratio nearer the retain model's than fine-tuned's "
                                "(per question abs(log R − log R_retain))", per_seed(dist, "npo_rt"), shared(dist, ft),
                                "<", seeds=seeds))
        tr_ret = [float(it["truth_ratio"]) for it in ret["forget"]]
        out.append(forget_quality_claim(
            f"NPO+RT forget quality ≥ {FQ_THRESHOLD:g} (KS p-value; difference = FQ − {FQ_THRESHOLD:g})",
            [_align(ev, ret) for ev in items["npo_rt"]], tr_ret, seeds))
    return out


def _align(ev: dict, ret: dict) -> list[float]:
    """The method's forget truth ratios in the retain evaluation's question order."""
    by_q = {it["question"]: float(it["truth_ratio"]) for it in ev["forget"]}
    return [by_q[it["question"]] for it in ret["forget"]]
