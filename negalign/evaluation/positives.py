"""Accuracy against the number of positive examples, and where another method lands on that curve.

The per-step paper (Setlur et al. 2024) draws its headline as a curve: SFT accuracy at N, 2N, 4N, 8N positive
solutions, and per-step negatives at N reaching the accuracy SFT needs ~8N for. ``positives_curve`` computes that from
per-item outcomes (greedy correctness of every test problem, one row per seed):

* **SFT points**: accuracy at each amount with a 95% interval, ``scipy.stats.bootstrap`` over the items (BCa, fixed
  ``random_state``; percentile if BCa is degenerate), seeds pooled by averaging each item over the seeds first — the
  rule ``negalign.evaluation.claims`` used before 2026-12-03; its verdicts now resample the seeds too (a crossed
  bootstrap), so these per-point intervals are narrower than a verdict's when the seeds differ.
* **effective positives** of an arm measured at N: the number of positives N' at which SFT's curve, drawn as straight
  lines between its points in log2(positives), first reaches the arm's accuracy (``first_crossing``). Outside the
  measured range it is *censored* at the end: an arm below SFT at N gets N' = N (``censored = "below"``), one above
  every SFT point gets the largest amount (``"above"``). Its interval is a paired percentile bootstrap over the items
  (every arm's and SFT point's outcome of an item resampled together; percentile, since the statistic is piecewise
  and clamped, which BCa's jackknife acceleration does not suit); an end equal to a range end means "this or beyond".
* **paired differences** of the arm against every SFT point (``negalign.evaluation.claims.paired_interval``).

Only numpy and scipy: no model, no torch.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from negalign.evaluation.claims import _as_seeds_by_items, paired_interval


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def first_crossing(log_positives, curve, target):
    """Where a piecewise-linear curve first reaches ``target``.

    ``log_positives``: ``[K]`` increasing x values (log2 of the amounts); ``curve``: ``[..., K]`` accuracies at them;
    ``target``: ``[...]`` (broadcast). Returns ``(x, censor)``, both ``[...]``: the smallest x at which the straight
    lines through the points reach ``target`` (``curve[0] >= target`` → ``x[0]``), and ``censor`` −1 where even
    ``curve[0]`` is above the target (x clamped to ``x[0]``), +1 where no point reaches it (x clamped to ``x[-1]``),
    0 otherwise."""
    x = np.asarray(log_positives, dtype=float)
    c = np.asarray(curve, dtype=float)
    a = np.broadcast_to(np.asarray(target, dtype=float), c.shape[:-1])
    out = np.full(a.shape, x[-1])
    censor = np.ones(a.shape, dtype=int)  # +1 until a point reaches the target
    done = np.zeros(a.shape, dtype=bool)
    below = c[..., 0] > a  # SFT's first point already above the arm
    out[below], censor[below], done[below] = x[0], -1, True
    at = ~done & (c[..., 0] == a)
    out[at], censor[at], done[at] = x[0], 0, True
    for k in range(len(x) - 1):
        hit = ~done & (c[..., k + 1] >= a)  # c[..., k] < a here, else an earlier k would have stopped
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = (a - c[..., k]) / (c[..., k + 1] - c[..., k])
        out[hit] = x[k] + frac[hit] * (x[k + 1] - x[k])
        censor[hit] = 0
        done |= hit
    return out, censor


def accuracy_interval(outcomes, confidence: float = 0.95, n_resamples: int = 9999,
                      random_state: int = 0) -> tuple[float, float, float]:
    """``(mean, ci_low, ci_high)`` of per-item outcomes ``[n_items]`` or ``[n_seeds, n_items]`` (items averaged over
    the seeds, then resampled)."""
    from scipy import stats

    x = _as_seeds_by_items(outcomes).mean(axis=0)  # [n_items]
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    if np.all(x == x[0]):
        return mean, mean, mean

    def boot(m):
        res = stats.bootstrap((x,), np.mean, vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
                              method=m, rng=np.random.default_rng(random_state))
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo, hi = boot("BCa")
        if not (math.isfinite(lo) and math.isfinite(hi)):
            lo, hi = boot("percentile")
    return mean, lo, hi


def effective_positives(sft: dict[int, object], arm, confidence: float = 0.95, n_resamples: int = 9999,
                        random_state: int = 0) -> dict:
    """The SFT-equivalent number of positives of ``arm`` (see the module docstring), with its interval.

    ``sft``: positives → per-item outcomes (``[n_items]`` or ``[n_seeds, n_items]``, the same items and seeds as
    ``arm``); at least two amounts."""
    from scipy import stats

    amounts = sorted(sft)
    if len(amounts) < 2:
        raise ValueError("the SFT curve needs at least two amounts")
    xs = np.log2(np.asarray(amounts, dtype=float))  # [K]
    items = [_as_seeds_by_items(sft[n]).mean(axis=0) for n in amounts] + [_as_seeds_by_items(arm).mean(axis=0)]
    if len({len(i) for i in items}) != 1:
        raise ValueError("every arm needs the same items")

    def stat(*arrays, axis=-1):
        means = np.stack([np.mean(v, axis=axis) for v in arrays], axis=-1)  # [..., K + 1]
        return first_crossing(xs, means[..., :-1], means[..., -1])[0]

    point, censor = first_crossing(xs, np.array([i.mean() for i in items[:-1]]), items[-1].mean())
    lo = hi = float(point)
    if len(items[0]) >= 2:
        res = stats.bootstrap(tuple(items), stat, paired=True, vectorized=True, n_resamples=n_resamples,
                              confidence_level=confidence, method="percentile",
                              rng=np.random.default_rng(random_state))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    n0 = amounts[0]
    return {"effective_positives": float(2 ** point), "effective_ci_low": float(2 ** lo),
            "effective_ci_high": float(2 ** hi), "effective_multiple": float(2 ** point / n0),
            "censored": {-1: "below", 0: None, 1: "above"}[int(censor)]}


def positives_curve(sft: dict[int, object], arms: dict[str, object], amount: int, seeds: list[int],
                    confidence: float = 0.95, n_resamples: int = 9999, random_state: int = 0) -> dict:
    """``results.json``'s ``positives_curve``: SFT accuracy per amount of positives with intervals, and every arm
    (measured at ``amount`` positives) placed on it: its accuracy, effective positives and paired differences against
    each SFT point."""
    kw = {"confidence": confidence, "n_resamples": n_resamples, "random_state": random_state}
    amounts = sorted(n for n in sft if n >= amount)
    points = []
    for n in amounts:
        acc, lo, hi = accuracy_interval(sft[n], **kw)
        points.append({"positives": n, "multiple": n / amount, "accuracy": acc, "ci_low": _num(lo),
                       "ci_high": _num(hi)})
    placed = {}
    for name, outcomes in arms.items():
        acc, lo, hi = accuracy_interval(outcomes, **kw)
        entry = {"positives": amount, "accuracy": acc, "ci_low": _num(lo), "ci_high": _num(hi)}
        if len(amounts) >= 2:
            entry.update(effective_positives({n: sft[n] for n in amounts}, outcomes, **kw))
        vs = []
        for n in amounts:
            diff, dlo, dhi, _, _ = paired_interval(outcomes, sft[n], confidence, n_resamples, random_state)
            vs.append({"sft_positives": n, "difference": diff, "ci_low": _num(dlo), "ci_high": _num(dhi)})
        entry["vs_sft"] = vs
        placed[name] = entry
    n_seeds, n_items = _as_seeds_by_items(sft[amount]).shape
    return {"amount": amount, "n_items": int(n_items), "seeds": [int(s) for s in seeds], "sft": points,
            "methods": placed}


def curve_table(curve: dict, digits: int = 3) -> str:
    """Markdown: the SFT points, then each arm with its effective positives and differences to each SFT point."""

    def ci(lo, hi):
        return "n/a" if lo is None or not math.isfinite(lo) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"

    n = curve["amount"]
    sft = curve["sft"]
    lines = ["| SFT positives | accuracy | 95% CI |", "|---|---|---|"]
    lines += [f"| {p['positives']} ({p['multiple']:g}N) | {p['accuracy']:.{digits}f} | "
              f"{ci(p['ci_low'], p['ci_high'])} |" for p in sft]
    lines += ["", f"| method at N={n} | accuracy | 95% CI | SFT-equivalent positives [95% CI] | "
              + " | ".join(f"− SFT at {p['positives']}" for p in sft) + " |",
              "|---|---|---|---|" + "---|" * len(sft)]
    for name, m in curve["methods"].items():
        if "effective_positives" in m:
            lo_end, hi_end = sft[0]["positives"], sft[-1]["positives"]

            def pos(v):  # an end of SFT's range means "this or beyond" (censored)
                return f"≤{lo_end}" if v <= lo_end else (f"≥{hi_end}" if v >= hi_end else f"{v:.3g}")

            eff = f"{pos(m['effective_positives'])} [{pos(m['effective_ci_low'])}, {pos(m['effective_ci_high'])}]"
        else:
            eff = "-"
        diffs = " | ".join(f"{d['difference']:+.{digits}f} {ci(d['ci_low'], d['ci_high'])}" for d in m["vs_sft"])
        lines.append(f"| {name} | {m['accuracy']:.{digits}f} | {ci(m['ci_low'], m['ci_high'])} | {eff} | {diffs} |")
    return "\n".join(lines)
