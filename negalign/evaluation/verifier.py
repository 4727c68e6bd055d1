"""``negalign eval verifier``: the verifiers' false-negative rate on answers known to be right.

A false negative turns a right answer into a negative sample, which NSR and NFT then push down. Two audits:

- **gold solutions**: each reference solution is judged against its own gold answer (GSM8K: the worked solution with
  its ``####`` line; MATH: the solution with its ``\\boxed{}`` against ``reward_model.ground_truth.target``);
- **re-formatted gold answers**: the gold answer rewritten the way a model might write it — spaces inside the box
  (``\\boxed{ 0 }``), a trailing ``.0``, a fraction as a decimal and back (``\\frac{1}{2}`` ↔ ``0.5``), ``\\dfrac``,
  a unit (``\\text{ cm}``, ``dollars``), a ``$`` sign, thousands separators.

Every rate is ``1 - correct / total``; the verdicts ``wrong``, ``unparseable`` and ``timeout`` are counted apart.

    negalign eval verifier --output-dir runs/verifier-audit            # both data sets, all rows of the test split
    negalign eval verifier --data math --max-samples 500 --output-dir runs/va
"""

from __future__ import annotations

import argparse
import re
import time
from fractions import Fraction
from pathlib import Path

from tqdm.auto import tqdm

# ------------------------------------------------------------------------------------------------- re-formatting


def _as_decimal(frac: Fraction) -> str | None:
    """A terminating decimal for a fraction (denominator 2^a 5^b), else None."""
    d = frac.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return None
    text = f"{float(frac):.10f}".rstrip("0").rstrip(".")
    return text if Fraction(text) == frac else None


def math_variants(target: str) -> dict[str, str]:
    """Re-formatted, still-correct completions for a MATH target (only those that apply to it)."""
    t = target.strip()
    out = {"boxed_spaces": f"The final answer is $\\boxed{{ {t} }}$."}
    if "\\frac" in t:
        dfrac = t.replace("\\frac", "\\dfrac")
        out["dfrac"] = f"\\boxed{{{dfrac}}}"
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", t)
    if m:
        frac = Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
        dec = _as_decimal(frac)
        if dec is not None:
            out["fraction_as_decimal"] = f"\\boxed{{{dec}}}"
    if re.fullmatch(r"-?\d+", t):
        out["trailing_zero"] = f"\\boxed{{{t}.0}}"
        out["units_text"] = f"\\boxed{{{t}\\text{{ cm}}}}"
        if abs(int(t)) >= 1000:
            out["thousands_sep"] = f"\\boxed{{{int(t):,}}}".replace(",", "{,}")
    m = re.fullmatch(r"-?\d*\.\d+", t)
    if m:
        frac = Fraction(t)
        out["decimal_as_fraction"] = f"\\boxed{{\\frac{{{frac.numerator}}}{{{frac.denominator}}}}}"
    return out


def gsm8k_variants(gold: str) -> dict[str, str]:
    """Re-formatted, still-correct completions for a GSM8K gold number."""
    out = {"plain": f"#### {gold}", "dollar": f"#### ${gold}", "units_word": f"#### {gold} dollars",
           "boxed": f"The answer is \\boxed{{{gold}}}", "boxed_spaces": f"\\boxed{{ {gold} }}"}
    if re.fullmatch(r"-?\d+", gold):
        out["trailing_zeros"] = f"#### {gold}.00"
        if abs(int(gold)) >= 1000:
            out["thousands_sep"] = f"#### {int(gold):,}"
    return out


# ------------------------------------------------------------------------------------------------------- audits


class Tally:
    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        self.examples: dict[str, list[dict]] = {}

    def add(self, kind: str, status: str, example: dict) -> None:
        c = self.counts.setdefault(kind, {"total": 0, "correct": 0, "wrong": 0, "unparseable": 0, "timeout": 0})
        c["total"] += 1
        c[status] += 1
        if status != "correct" and len(self.examples.setdefault(kind, [])) < 10:
            self.examples[kind].append({**example, "status": status})

    def report(self) -> dict:
        out = {}
        for kind, c in self.counts.items():
            out[kind] = {**c, "false_negative_rate": 1.0 - c["correct"] / c["total"] if c["total"] else None,
                         "examples": self.examples.get(kind, [])}
        return out


def audit_gsm8k(path: str, split: str, max_samples: int | None, progress: bool = True) -> dict:
    from negalign.data.core import read_records
    from negalign.rewards import gsm8k_gold, verify_gsm8k

    rows = read_records(path, split)[: max_samples or None]
    tally = Tally()
    for r in tqdm(rows, desc="gsm8k", disable=not progress):
        gold = gsm8k_gold(r["answer"])
        tally.add("gold_solution", verify_gsm8k(r["answer"], gold).status, {"gold": gold})
        for kind, text in gsm8k_variants(gold).items():
            tally.add(f"reformatted/{kind}", verify_gsm8k(text, gold).status, {"gold": gold, "completion": text})
    return {"rows": len(rows), "by_kind": tally.report()}


def audit_math(path: str, split: str, max_samples: int | None, timeout: float, progress: bool = True) -> dict:
    from negalign.data.core import read_records
    from negalign.rewards import MathVerifier, last_boxed

    rows = read_records(path, split)[: max_samples or None]
    tally = Tally()
    with MathVerifier(timeout=timeout) as verifier:
        for r in tqdm(rows, desc="math", disable=not progress):
            if "reward_model" in r:
                gt = r["reward_model"]["ground_truth"]
                target, solution = gt.get("target"), gt.get("solution")
            else:
                solution = r.get("solution")
                target = r.get("answer") or (last_boxed(solution) if solution else None)
            if target is None or not str(target).strip():
                tally.add("empty_target_skipped", "unparseable", {"solution": (solution or "")[-80:]})
                continue
            if solution:
                v = verifier.verify(solution, target)
                tally.add("gold_solution", v.status, {"target": target, "extracted": v.predicted})
            for kind, text in math_variants(target).items():
                v = verifier.verify(text, target)
                tally.add(f"reformatted/{kind}", v.status, {"target": target, "completion": text})
        timeouts = verifier.timeouts
    return {"rows": len(rows), "timeouts": timeouts, "by_kind": tally.report()}


def summary_rows(name: str, audit: dict) -> list[str]:
    lines = []
    for kind, c in sorted(audit["by_kind"].items()):
        lines.append(f"| {name} | {kind} | {c['total']} | {c['false_negative_rate']:.2%} | {c['wrong']} | "
                     f"{c['unparseable']} | {c['timeout']} |")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=("gsm8k", "math", "both"), default="both")
    parser.add_argument("--gsm8k-path", default="../shared/data/gsm8k", help="Folder/file or Hub id of GSM8K.")
    parser.add_argument("--math-path", default="../shared/data/math/math", help="Folder/file (verl layout or "
                        "problem/solution columns) or Hub id of MATH.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-samples", type=int, default=None, help="Audit the first N rows of each data set.")
    parser.add_argument("--timeout", type=float, default=5.0, help="Seconds per math-verify comparison.")
    parser.add_argument("--output-dir", required=True)


def main(args) -> int:
    from negalign.results import write_results

    out = Path(args.output_dir)
    start = time.perf_counter()
    audits = {}
    if args.data in ("gsm8k", "both"):
        audits["gsm8k"] = audit_gsm8k(args.gsm8k_path, args.split, args.max_samples)
    if args.data in ("math", "both"):
        audits["math"] = audit_math(args.math_path, args.split, args.max_samples, args.timeout)
    lines = ["| data | audit | n | false-negative rate | wrong | unparseable | timeout |", "|---|---|---|---|---|---|---|"]
    for name, audit in audits.items():
        lines += summary_rows(name, audit)
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    write_results(out, {"audits": audits, "wall_time_s": time.perf_counter() - start}, recipe=None,
                  split=args.split, max_samples=args.max_samples, table=table)
    print(f"wrote {out / 'results.json'}")
    return 0
