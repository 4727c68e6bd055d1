"""``negalign quickstart perstep-arith --output-dir DIR``: per-step negatives vs SFT / RFT / whole-pair DPO, offline.

A miniature of Setlur et al. (2024) on multi-step synthetic arithmetic (``negalign.data.steps``): a kit model is
fine-tuned on N positive solutions (π_sft, the ``sft`` control), then, starting from π_sft and with the same N
problems, it is trained with

    rft          SFT on the positives plus π_sft's own correct samples
    dpo_full     DPO on whole (correct, incorrect) pairs of π_sft's samples
    perstep_dpo  DPO on (correct, incorrect prefix through the first pit), pits from Monte-Carlo step values
    perstep_awr  per-token step advantages A_i = Q_i - Q_{i-1} in -Σ_i A_i log π(step_i | ...)

at each amount N in ``--amounts``; SFT alone is also trained on ``--sft-multipliers`` × the smallest amount, to see how
many positives SFT needs to match the others. Everything goes through the public API (recipes → ``negalign.train``,
``negalign.generation.generate``, ``negalign.rewards``). Writes ``DIR/results.json`` (``methods.<name>.test_accuracy``,
at the smallest amount, and ``methods.<name>.by_amount``), ``DIR/table.md`` and ``DIR/accuracy_vs_positives.png``.

``positives_curve`` is the paper's headline as it draws it (``negalign.evaluation.positives``): SFT accuracy at N, 2N,
4N, 8N positives (N = the smallest amount) with 95% intervals, and each other method at N placed on that curve — its
SFT-equivalent positives N' (where SFT's curve, linear in log2 N, reaches its accuracy) with a paired bootstrap
interval, and its paired difference to every SFT point.

``claims`` holds a verdict per comparison of the paper (``negalign.evaluation.claims``): per-step negatives beat SFT at
equal positives (every amount), RFT beats SFT, whole-pair DPO does not, and per-step at N against SFT at 8N; each is the
paired difference of per-problem greedy correctness on the same test problems, with a 95% bootstrap interval over the
problems, pooled over the ``--seeds`` runs. The problems come from ``--seed``; each run ``seed, seed+1, ...`` has its
own kit initialisation, training seed and sampling seed (extra seeds under ``DIR/seed<s>/``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

METHODS = ("sft", "rft", "dpo_full", "perstep_dpo", "perstep_awr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="Where models, caches, results.json and the plot go.")
    parser.add_argument("--amounts", default="64,128", help="Positive-data amounts (problems) every method is run at.")
    parser.add_argument("--sft-multipliers", default="2,4,8", help="SFT alone also at these multiples of the smallest amount.")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated subset of " + ", ".join(METHODS))
    parser.add_argument("--num-steps", type=int, default=4, help="Operations per arithmetic problem.")
    parser.add_argument("--max-value", type=int, default=12, help="Running values stay within [0, max-value].")
    parser.add_argument("--max-operand", type=int, default=5, help="Largest number added or subtracted per step.")
    parser.add_argument("--test-size", type=int, default=1000, help="Held-out test problems (greedy accuracy; "
                        "1000 so that a paired difference of ~0.05 is outside the noise, docs/perstep.md).")
    parser.add_argument("--kit-size", default="small", help="Kit model size (negalign.models.SIZES).")
    parser.add_argument("--sft-epochs", type=float, default=30.0, help="Epochs of every SFT run over its positives.")
    parser.add_argument("--sft-steps", type=int, default=250, help="If > 0: every SFT run takes this many optimizer "
                        "steps whatever its data amount (instead of --sft-epochs).")
    parser.add_argument("--sft-lr", type=float, default=2e-3)
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="π_sft samples per training problem.")
    parser.add_argument("--num-continuations", type=int, default=5, help="M: continuations per step prefix.")
    parser.add_argument("--rl-epochs", type=float, default=4.0, help="Epochs of rft / dpo / awr over their data.")
    parser.add_argument("--rl-lr", type=float, default=3e-4, help="Learning rate of rft / dpo / awr.")
    parser.add_argument("--dpo-beta", type=float, default=0.1)
    parser.add_argument("--awr-positive-weight", type=float, default=1.0, help="perstep_awr: weight of the NLL term on "
                        "the N positives (the other methods see them too: as SFT data, as DPO's chosen side).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="Problem seed, and the first training / sampling seed.")
    parser.add_argument("--seeds", type=int, default=1, help="Training and sampling seeds (seed, seed+1, ...): each "
                        "is a full run on the same problems; the claims pool them.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these tiny models, "
                        "and far faster than several on a busy machine).")
    parser.add_argument("--fresh", action="store_true", help="Delete DIR first (default: reuse finished stages).")


def _recipe(model_path: str, method: str, data: dict, training: dict, out: Path, method_keys: dict | None = None):
    from negalign.config import load_recipe

    return load_recipe(data={
        "model": {"name_or_path": model_path, "dtype": "float32"},
        "data": {"name": "steparith", **data},
        "method": {"name": method, **(method_keys or {})},
        "training": {"logging_steps": 10, "save_strategy": "no", "disable_tqdm": True, **training},
        "output": {"dir": str(out)},
    })


def _correct(model_dir: str, test: list[dict], cache: Path) -> list[int]:
    """Per test problem: 1 if the greedy answer is right."""
    from transformers import AutoTokenizer

    from negalign.data import chat_prompt
    from negalign.generation import generate
    from negalign.rewards import verify_gsm8k

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [chat_prompt(e["prompt"], tok) for e in test]
    rows = generate(model_dir, prompts, n=1, max_new_tokens=40, temperature=0.0, batch_size=100, backend="hf",
                    output_path=cache, tokenizer=tok, progress=False)
    return [int(verify_gsm8k(r["completions"][0], e["answer"]).reward) for r, e in zip(rows, test)]


def _done(path: Path) -> bool:
    return (path / "results.json").exists() and (path / "model.safetensors").exists()


def _run_seed(args, seed: int, out: Path, base: dict, corpus: list[str], test: list[dict], amounts: list[int],
              sft_only: list[int], methods: list[str], timings: dict, extra: dict) -> dict[str, dict[int, list[int]]]:
    """One training / sampling seed on the shared problems (``base``: the data keys, seeded by ``--seed``): every method
    at every amount. Returns per method and amount the per-test-problem correctness."""
    from negalign.models import build_kit_model
    from negalign.train import run

    tag = "" if seed == args.seed else f"seed{seed}_"
    out.mkdir(parents=True, exist_ok=True)
    kit = build_kit_model(out / "kit", corpus, arch="qwen2", size=args.kit_size, vocab_size=320, seed=seed)
    print(f"[perstep-arith] seed {seed}: kit model {kit}; amounts {amounts}, SFT-only amounts {sft_only}, "
          f"test {len(test)}", flush=True)
    correct: dict[str, dict[int, list[int]]] = {m: {} for m in methods}

    def sft(n: int) -> str:
        d = out / f"n{n}" / "sft"
        if not _done(d):
            t = time.time()
            run(_recipe(kit, "sft", {"num_problems": n, **base}, {
                **({"max_steps": args.sft_steps} if args.sft_steps > 0 else {"num_train_epochs": args.sft_epochs}),
                "learning_rate": args.sft_lr, "per_device_train_batch_size": args.batch_size,
                "lr_scheduler_type": "cosine", "warmup_steps": 20, "seed": seed, "max_length": 128}, d))
            timings[f"{tag}sft_n{n}"] = round(time.time() - t, 1)
        return str(d)

    def report(m, n):
        print(f"[perstep-arith] seed {seed} n={n} {m}: {sum(correct[m][n]) / len(test):.3f}", flush=True)

    for n in amounts:
        sft_dir = sft(n)
        correct.setdefault("sft", {})[n] = _correct(sft_dir, test, out / f"n{n}" / "eval_sft.jsonl")
        report("sft", n)
        cache = out / f"n{n}" / "cache"
        common = {"samples_per_prompt": args.samples_per_prompt, "num_continuations": args.num_continuations,
                  "max_new_tokens": 40, "generation_batch_size": 64, "generation_backend": "hf",
                  "cache_dir": str(cache), "value_responses": "all", "generation_seed": seed}
        train_kw = {"num_train_epochs": args.rl_epochs, "learning_rate": args.rl_lr,
                    "per_device_train_batch_size": args.batch_size, "seed": seed, "max_length": 128,
                    "lr_scheduler_type": "constant", "gradient_checkpointing": False}
        for m in methods:
            if m == "sft":
                continue
            name, keys = m, dict(common)
            if m == "dpo_full":
                name, keys["pair_mode"] = "perstep_dpo", "full"
            if m == "perstep_awr":
                keys["awr_positive_weight"] = args.awr_positive_weight
            d = out / f"n{n}" / m
            if not _done(d):
                t = time.time()
                tk = {**train_kw, "beta": args.dpo_beta} if m in ("perstep_dpo", "dpo_full") else train_kw
                metrics = run(_recipe(sft_dir, name, {"num_problems": n, **base}, tk, d, keys))
                timings[f"{tag}{m}_n{n}"] = round(time.time() - t, 1)
                extra[f"{tag}{m}_n{n}"] = metrics.get("perstep", {})
            correct[m][n] = _correct(str(d), test, out / f"n{n}" / f"eval_{m}.jsonl")
            report(m, n)
    if "sft" in methods:
        for n in sft_only:
            correct["sft"][n] = _correct(sft(n), test, out / f"n{n}" / "eval_sft.jsonl")
            report("sft", n)
    return correct


def _claims(correct: dict, amounts: list[int], seeds: list[int]) -> list[dict]:
    """The paper's comparisons on per-problem correctness (``correct[m][n]``: one list per seed)."""
    from negalign.evaluation.claims import paired_claim

    def c(m, n):
        return correct.get(m, {}).get(n)

    out = []
    n0 = amounts[0]
    for n in amounts:
        for m in ("perstep_dpo", "perstep_awr"):
            if c(m, n) and c("sft", n):
                out.append(paired_claim(f"{m} accuracy > SFT accuracy (N={n} positives each)", c(m, n), c("sft", n),
                                        ">", seeds=seeds))
    if c("rft", n0) and c("sft", n0):
        out.append(paired_claim(f"rft accuracy > SFT accuracy (N={n0})", c("rft", n0), c("sft", n0), ">", seeds=seeds))
    if c("dpo_full", n0) and c("sft", n0):
        out.append(paired_claim(f"dpo_full accuracy ≤ SFT accuracy (N={n0}: whole pairs do not beat SFT)",
                                c("dpo_full", n0), c("sft", n0), "<", seeds=seeds))
    for m in ("perstep_dpo", "perstep_awr"):
        if c(m, n0) and c("sft", 8 * n0):
            out.append(paired_claim(f"{m} accuracy at N={n0} ≥ SFT accuracy at 8N={8 * n0} (the eight-fold claim)",
                                    c(m, n0), c("sft", 8 * n0), ">", seeds=seeds))
    return out


def _plot(path: Path, acc: dict, curve: dict | None, methods: list[str]) -> None:
    """Accuracy against positives: SFT's curve with 95% intervals, the other methods' points (interval at N), and
    for each of them at N a dotted line to where it meets SFT's curve (effective positives, its interval as x bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def _or(v, default):  # an interval end that could not be computed (None) draws no bar
        return default if v is None else v

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for m in methods:
        pts = sorted(acc[m].items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, color=colours[m], label=m,
                alpha=1.0 if m == "sft" else 0.6)
    if curve:
        s = curve["sft"]
        ax.errorbar([p["positives"] for p in s], [p["accuracy"] for p in s], capsize=3, fmt="none",
                    ecolor=colours["sft"],
                    yerr=[[p["accuracy"] - _or(p["ci_low"], p["accuracy"]) for p in s],
                          [_or(p["ci_high"], p["accuracy"]) - p["accuracy"] for p in s]])
        n0 = curve["amount"]
        for m, e in curve["methods"].items():
            a = e["accuracy"]
            ax.errorbar([n0], [a], yerr=[[a - _or(e["ci_low"], a)], [_or(e["ci_high"], a) - a]], fmt="none", capsize=3,
                        ecolor=colours[m])
            if "effective_positives" in e:
                x = e["effective_positives"]
                ax.plot([n0, x], [a, a], ls=":", color=colours[m])
                ax.errorbar([x], [a], xerr=[[x - e["effective_ci_low"]], [e["effective_ci_high"] - x]], fmt="D", ms=5,
                            capsize=3, color=colours[m])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("positive solutions (problems)")
    ax.set_ylabel("test accuracy (greedy)")
    ax.set_title("accuracy vs positives (95% CIs); diamonds: SFT-equivalent positives of each method at N",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> int:
    import numpy as np
    import torch

    from negalign.data.steps import StepArithData
    from negalign.evaluation.claims import claims_table
    from negalign.evaluation.positives import curve_table, first_crossing, positives_curve

    torch.set_num_threads(max(1, args.threads))
    t0 = time.time()
    out = Path(args.output_dir)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    amounts = sorted(int(a) for a in args.amounts.split(","))
    mults = [int(m) for m in args.sft_multipliers.split(",") if m.strip()]
    methods = [m for m in args.methods.split(",") if m]
    sft_only = sorted({amounts[0] * m for m in mults} - set(amounts))
    n_max = max(amounts + sft_only)
    base = {"num_steps": args.num_steps, "seed": args.seed, "test_size": args.test_size, "max_value": args.max_value,
            "max_operand": args.max_operand}
    test = StepArithData(split="test", **base).examples()
    # the kit tokenizer is trained on every problem text (numbers become tokens); the model starts from random weights
    corpus = StepArithData(split="train", num_problems=n_max, **base).texts() + StepArithData(split="test", **base).texts()

    timings: dict[str, float] = {}
    extra: dict[str, dict] = {}
    seeds = [args.seed + i for i in range(max(1, args.seeds))]
    runs = {s: _run_seed(args, s, out if s == args.seed else out / f"seed{s}", base, corpus, test, amounts, sft_only,
                         methods, timings, extra) for s in seeds}
    # pooled: per method and amount, one correctness list per seed; accuracy = the mean over seeds and problems
    correct = {m: {n: [runs[s][m][n] for s in seeds] for n in runs[seeds[0]][m]} for m in methods}
    acc = {m: {n: sum(map(sum, rows)) / (len(rows) * len(test)) for n, rows in correct[m].items()} for m in methods}

    # how many positives SFT alone needs to reach an accuracy: where SFT's curve, straight lines in log2 N, first
    # reaches it (negalign.evaluation.positives.first_crossing); "<=N" / ">N" outside the measured range
    sft_curve = sorted(acc.get("sft", {}).items())

    def sft_equivalent(a: float):
        if not sft_curve:
            return None
        x, censor = first_crossing(np.log2([n for n, _ in sft_curve]), np.array([v for _, v in sft_curve]), a)
        if censor < 0:
            return f"<={sft_curve[0][0]}"
        return f">{sft_curve[-1][0]}" if censor > 0 else round(float(2 ** x), 1)

    n0 = amounts[0]
    results = {"methods": {}, "amounts": amounts, "sft_only_amounts": sft_only, "test_size": len(test), "seeds": seeds,
               "settings": {k: v for k, v in vars(args).items() if k not in ("func",)}}
    for m in methods:
        by = {str(k): v for k, v in sorted(acc[m].items())}
        results["methods"][m] = {
            "test_accuracy": acc[m].get(n0), "by_amount": by,
            "sft_positives_to_match": sft_equivalent(acc[m][n0]) if n0 in acc[m] else None,
            # per amount, one string per seed: test problem i right ("1") or not ("0") — the claims' items
            "correct_by_amount": {str(k): ["".join(map(str, r)) for r in rows] for k, rows in sorted(correct[m].items())},
        }
    claims = _claims(correct, amounts, seeds)
    results["claims"] = claims
    # the paper's figure: SFT accuracy at N, 2N, 4N, 8N positives with intervals, and every other method at N placed
    # on that curve (effective positives, paired differences to each SFT point)
    curve = None
    if "sft" in methods:
        arms = {m: correct[m][n0] for m in methods if m != "sft" and n0 in correct[m]}
        curve = positives_curve(correct["sft"], arms, n0, seeds)
        results["positives_curve"] = curve
    results["prep"] = extra
    results["timings_s"] = timings
    results["wall_time_s"] = round(time.time() - t0, 1)

    cols = sorted({n for m in methods for n in acc[m]})
    lines = ["| method | " + " | ".join(f"N={c}" for c in cols) + f" | SFT positives to match (at N={n0}) |",
             "|---|" + "---|" * len(cols) + "---|"]
    for m in methods:
        eq = results["methods"][m]["sft_positives_to_match"]
        eq = f"{eq:.0f}" if isinstance(eq, (int, float)) else (eq or "-")
        lines.append(f"| {m} | " + " | ".join(f"{acc[m][c]:.3f}" if c in acc[m] else "" for c in cols) + f" | {eq} |")
    table = "\n".join(lines)
    verdicts = claims_table(claims)
    seeds_note = f"\n\nAccuracies: means over seeds {seeds}." if len(seeds) > 1 else ""
    results["table"] = table
    results["claims_table"] = verdicts
    curve_md = curve_table(curve) if curve else ""
    if curve_md:
        curve_md = f"Accuracy against positives (problems × seeds: {curve['n_items']} × {len(seeds)}):\n\n" + curve_md
        results["positives_curve_table"] = curve_md
    parts = [table + seeds_note, *([curve_md] if curve_md else []), verdicts]
    (out / "table.md").write_text("\n\n".join(parts) + "\n")
    try:
        _plot(out / "accuracy_vs_positives.png", acc, curve, methods)
    except Exception as e:  # a plot is a convenience; the numbers are in results.json
        print(f"[perstep-arith] no plot: {e}")
    from negalign.results import write_results

    write_results(out, {"wall_time_s": results["wall_time_s"]}, quickstart="perstep-arith", **results)
    print(table + seeds_note)
    if curve_md:
        print("\n" + curve_md)
    print("\n" + verdicts)
    print(f"[perstep-arith] wrote {out / 'results.json'} in {results['wall_time_s']:.0f} s")
    return 0
