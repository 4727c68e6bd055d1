"""Claim verdicts for the quickstarts: a paired difference between two arms, its 95% bootstrap interval, a verdict.

A claim is a directed comparison of two arms measured on the same evaluation items, e.g. "D2O harmful rate < base
harmful rate" (arm ``a`` = D2O, arm ``b`` = base, direction ``<``). The inputs are the per-item outcomes of both
arms (per-problem correctness, per-prompt harm fraction, per-prompt reward ...), for one seed or several.

* **difference** = ``mean(a) - mean(b)`` over every (seed, item) outcome (with the same items in every seed, this is
  the mean over seeds of each seed's difference of means, i.e. the difference of the reported metrics).
* **interval**, one seed: ``scipy.stats.bootstrap`` (BCa, ``confidence`` = 0.95, ``n_resamples`` resamples, a fixed
  ``random_state`` so that the same inputs always give the same interval), **paired**: an item is resampled with
  both of its arms' outcomes together.
* **interval**, several seeds: a **two-way (crossed) bootstrap** of the paired differences ``d[s, i] = a[s, i] -
  b[s, i]``: each resample draws the seeds with replacement *and*, independently, the items with replacement (the
  quickstarts evaluate the same items in every seed), and takes the mean of ``d`` over the drawn seeds × items; the
  interval is the percentile interval of those means (numpy, fixed ``random_state``). So both sources of noise are
  in the width: which items were evaluated, and which training / sampling seeds were run — a seed whose whole run
  is better moves every item at once, which resampling items alone (or averaging each item over the seeds first,
  this module's rule before 2026-12-03) cannot see. With 3 seeds the seed part of the resampling distribution is
  coarse (it takes 10 values) and a percentile interval of so few seeds is, if anything, too narrow; more seeds
  are the remedy.
* **verdict** against the claim's ``threshold`` (0 unless the claim is "within X of"): ``reproduced`` when the whole
  interval lies on the claimed side (``>`` / ``≥``: above; ``<`` / ``≤``: below), ``contradicted`` when it lies
  wholly on the other side, ``inconclusive`` when it covers the threshold. ``≥`` and ``>`` decide alike (an interval
  is never "equal"); an interval that cannot be computed (fewer than 2 items) is inconclusive. When every item has
  the same difference the interval is that single value (nothing to resample).

Only numpy and scipy: no model, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

VERDICTS = ("reproduced", "contradicted", "inconclusive")
# the claimed side of the threshold for each way of writing the direction
_SIDE = {">": 1, ">=": 1, "≥": 1, "<": -1, "<=": -1, "≤": -1}
CLAIM_KEYS = ("claim", "difference", "ci_low", "ci_high", "verdict", "n_items", "seeds")


def _as_seeds_by_items(x) -> np.ndarray:
    """``[n_items]`` or ``[n_seeds, n_items]`` (or a list of per-seed lists) → float array ``[n_seeds, n_items]``."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"per-item outcomes must be [n_items] or [n_seeds, n_items], got shape {arr.shape}")
    return arr


def verdict(ci_low: float, ci_high: float, direction: str = ">", threshold: float = 0.0) -> str:
    """``reproduced`` / ``contradicted`` / ``inconclusive`` for an interval and a claimed direction."""
    if direction not in _SIDE:
        raise ValueError(f"direction must be one of {sorted(_SIDE)}, got {direction!r}")
    if ci_low is None or ci_high is None or not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    side = _SIDE[direction]
    lo, hi = side * (ci_low - threshold), side * (ci_high - threshold)
    if lo > 0 and hi > 0:
        return "reproduced"
    if lo < 0 and hi < 0:
        return "contradicted"
    return "inconclusive"


def paired_interval(a, b, confidence: float = 0.95, n_resamples: int = 9999, random_state: int = 0,
                    method: str = "BCa") -> tuple[float, float, float, int, int]:
    """``(difference, ci_low, ci_high, n_items, n_seeds)`` of ``mean(a) - mean(b)`` (see the module docstring: BCa
    over items for one seed, the crossed seeds × items bootstrap for several).

    ``a`` and ``b``: per-item outcomes of the two arms, ``[n_items]`` or ``[n_seeds, n_items]``, item ``i`` of
    seed ``s`` in ``a`` paired with the same item and seed in ``b``."""
    from scipy import stats

    a2, b2 = _as_seeds_by_items(a), _as_seeds_by_items(b)
    if a2.shape != b2.shape:
        raise ValueError(f"paired outcomes need the same shape, got {a2.shape} and {b2.shape}")
    n_seeds, n_items = a2.shape
    if n_items == 0:
        raise ValueError("no items")
    d2 = a2 - b2  # [n_seeds, n_items]
    diff = float(a2.mean() - b2.mean())
    if n_items < 2:
        return diff, math.nan, math.nan, n_items, n_seeds
    if np.all(d2 == d2.flat[0]):  # nothing varies between items or seeds: the interval is the point
        return diff, diff, diff, n_items, n_seeds
    if n_seeds > 1:
        lo, hi = two_way_interval(d2, confidence, n_resamples, random_state)
        return diff, lo, hi, n_items, n_seeds
    xa, xb = a2[0], b2[0]  # [n_items]: one seed (a constant difference returned the point above)

    def stat(x, y, axis=-1):
        return x.mean(axis=axis) - y.mean(axis=axis)

    def boot(m):
        res = stats.bootstrap((xa, xb), stat, paired=True, vectorized=True, n_resamples=n_resamples,
                              confidence_level=confidence, method=m, rng=np.random.default_rng(random_state))
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa warns (and gives NaN) on near-degenerate data: fall back below
        lo, hi = boot(method)
        if not (math.isfinite(lo) and math.isfinite(hi)) and method != "percentile":
            lo, hi = boot("percentile")
    return diff, lo, hi, n_items, n_seeds


def two_way_interval(d, confidence: float = 0.95, n_resamples: int = 9999, random_state: int = 0,
                     block: int = 1000) -> tuple[float, float]:
    """Percentile interval of ``mean(d)`` for ``d`` ``[n_seeds, n_items]`` when seeds and items are resampled
    independently, with replacement (a crossed bootstrap). Each resample draws item counts ``c`` ``[n_items]``
    (multinomial) and seed counts ``w`` ``[n_seeds]``; its statistic is ``Σ_s w_s Σ_i c_i d[s, i] / (n_seeds ·
    n_items)``, i.e. the mean of ``d`` over the drawn seeds × drawn items, computed ``block`` resamples at a time as a
    matrix product (``[block, n_items] @ [n_items, n_seeds]``)."""
    d = np.asarray(d, dtype=float)
    n_seeds, n_items = d.shape
    rng = np.random.default_rng(random_state)
    means = []
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        item_counts = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=b)  # [b, n_items]
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=b)  # [b, n_seeds]
        per_seed = item_counts @ d.T / n_items  # [b, n_seeds]: each seed's mean over the drawn items
        means.append((per_seed * seed_counts).sum(axis=1) / n_seeds)  # [b]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(np.concatenate(means), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def paired_claim(claim: str, a, b, direction: str = ">", threshold: float = 0.0, seeds: Sequence[int] | None = None,
                 confidence: float = 0.95, n_resamples: int = 9999, random_state: int = 0) -> dict:
    """One entry of ``results.json``'s ``claims``: ``{claim, difference, ci_low, ci_high, verdict, n_items, seeds}``.

    ``claim`` is the sentence shown (e.g. ``"D2O harmful_rate < base harmful_rate"``); ``a`` is the arm on the left
    of ``direction``, ``b`` the one on the right; ``difference`` is ``mean(a) - mean(b)`` and the verdict compares
    its interval with ``threshold`` (a claim "a within 0.1 of b" is ``direction=">", threshold=-0.1``). ``seeds``:
    the seed values of the rows of ``a`` / ``b`` (default ``0..n_seeds-1``)."""
    if direction not in _SIDE:
        raise ValueError(f"direction must be one of {sorted(_SIDE)}, got {direction!r}")
    diff, lo, hi, n_items, n_seeds = paired_interval(a, b, confidence, n_resamples, random_state)
    seeds = list(range(n_seeds)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n_seeds:
        raise ValueError(f"{len(seeds)} seeds named for {n_seeds} rows of outcomes")

    def num(v):
        return float(v) if math.isfinite(v) else None

    return {"claim": claim, "difference": num(diff), "ci_low": num(lo), "ci_high": num(hi),
            "verdict": verdict(lo, hi, direction, threshold), "n_items": int(n_items), "seeds": seeds}


def claims_table(claims: Sequence[dict], digits: int = 3) -> str:
    """The markdown verdict table the quickstarts print and write (one row per claim)."""

    def f(v):
        return "n/a" if v is None else f"{v:+.{digits}f}"

    lines = ["| claim | difference | 95% CI | verdict | items × seeds |", "|---|---|---|---|---|"]
    for c in claims:
        ci = "n/a" if c["ci_low"] is None else f"[{f(c['ci_low'])}, {f(c['ci_high'])}]"
        lines.append(f"| {c['claim']} | {f(c['difference'])} | {ci} | **{c['verdict']}** | "
                     f"{c['n_items']} × {len(c['seeds'])} |")
    return "\n".join(lines)


def check_claims(claims) -> None:
    """Raise ``ValueError`` unless ``claims`` follows the public schema (SPEC §8)."""
    if not isinstance(claims, list):
        raise ValueError("claims must be a list")
    for c in claims:
        if set(c) != set(CLAIM_KEYS):
            raise ValueError(f"claim keys {sorted(c)} != {sorted(CLAIM_KEYS)}")
        if c["verdict"] not in VERDICTS:
            raise ValueError(f"verdict {c['verdict']!r}")
        if not isinstance(c["n_items"], int) or not isinstance(c["seeds"], list) or not c["seeds"]:
            raise ValueError(f"n_items / seeds of {c['claim']!r}")
        lo, hi = c["ci_low"], c["ci_high"]
        if lo is not None and hi is not None and not (lo <= hi):
            raise ValueError(f"interval of {c['claim']!r} is [{lo}, {hi}]")
