"""``negalign quickstart nsr-arith --output-dir DIR``: PSR / NSR / W-REINFORCE / GRPO / NFT on synthetic arithmetic.

A miniature of Zhu et al. 2025 (and Chen et al. 2025's NFT) that runs offline on a CPU:

1. "pre-training": a kit model (random weights, numbers as single tokens) is SFT-trained on *all* ``a+b=`` problems
   with noisy labels (each problem draws its own share of near-miss answers, ±1 / ±2 / ±10), so it ends up
   *partially* right everywhere, more often on some problems than others — a stand-in for a base LLM;
2. from that model, each RL method trains on the *train* split for the same number of steps on the same number of
   rollouts per step (NFT generates extra rollouts to refill the groups its filter drops; that is part of the
   method), rewarded by the exact verifier;
3. every model samples ``n`` answers per problem of the *test* split — problems no RL run ever saw, as MATH test
   problems are never seen by RL in the paper — and the unbiased pass@k is computed for k = 1, 2, 4, … n;
4. a table and a pass@k plot are written, and ``DIR/results.json`` holds ``methods.<name>.pass_at_k``.

The claim under test: PSR raises pass@1 but lowers pass@k at large k; NSR keeps pass@k at large k; W-REINFORCE
balances both. It composes only the public API (recipes as dicts, ``negalign.train.run``,
``negalign.evaluation.passk``), exactly as a user would.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

METHODS = ("psr", "nsr", "w_reinforce", "grpo", "nft")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="Where models, results.json, passk.png and table.md go.")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--high", type=int, default=15, help="Operands are 0..high (default 15).")
    parser.add_argument("--test-size", type=int, default=64, help="Problems held out from RL (default 64).")
    parser.add_argument("--sft-epochs", type=float, default=12.0)
    parser.add_argument("--sft-lr", type=float, default=5e-3)
    parser.add_argument("--sft-copies", type=int, default=8, help="SFT samples per problem (default 8).")
    parser.add_argument("--label-noise", type=float, default=0.5, help="Mean share of near-miss SFT answers.")
    parser.add_argument("--steps", type=int, default=120, help="RL optimizer steps per method (default 120).")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8, help="Rollouts per prompt (default 8).")
    parser.add_argument("--rl-lr", type=float, default=2e-4,
                        help="RL learning rate (default 2e-4; at 5e-4 and above NSR / W-REINFORCE degrade the tiny model).")
    parser.add_argument("--n", type=int, default=64, help="Samples per held-out problem for pass@k (default 64).")
    parser.add_argument("--eval-problems", type=int, default=None, help="Evaluate the first N held-out problems.")
    parser.add_argument("--size", default="tiny", help="Kit model size (tiny, small, ...).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the kit model is too "
                        "small to gain from more, and extra threads thrash when the CPU is shared).")


def _data(args, split: str) -> dict:
    return {"name": "arith", "split": split, "high": args.high, "ops": "+", "test_size": args.test_size}


def _common_training(args) -> dict:
    return {"logging_steps": 5, "save_strategy": "no", "seed": args.seed, "report_to": "none",
            "disable_tqdm": True}


def sft_recipe(args, out: Path) -> dict:
    return {
        "model": {"kit": {"dir": str(out / "kit"), "arch": "qwen2", "size": args.size, "vocab_size": 512,
                          "seed": args.seed}},
        "data": {**_data(args, "all"), "copies": args.sft_copies, "label_noise": args.label_noise},
        "method": {"name": "sft"},
        "training": {**_common_training(args), "num_train_epochs": args.sft_epochs, "learning_rate": args.sft_lr,
                     "per_device_train_batch_size": 64, "max_length": 64, "lr_scheduler_type": "cosine",
                     "warmup_steps": 10},
        "output": {"dir": str(out / "sft")},
    }


def rl_recipe(args, method: str, base: str, out: Path) -> dict:
    training = {
        **_common_training(args),
        "max_steps": args.steps,
        "learning_rate": args.rl_lr,
        "lr_scheduler_type": "constant",
        "per_device_train_batch_size": args.prompts_per_step * args.generations,
        "num_generations": args.generations,
        "max_completion_length": 4,
        "temperature": 1.0,
    }
    method_section = {"name": method}
    if method in ("psr", "nsr", "w_reinforce"):
        method_section["entropy_coef"] = 0.0  # the miniature isolates the advantage table
    return {
        "model": {"name_or_path": base, "dtype": "float32"},
        "data": _data(args, "train"),
        "method": method_section,
        "training": training,
        "output": {"dir": str(out / method)},
    }


def main(args) -> int:
    from negalign.config import load_recipe
    from negalign.data import LOADERS
    from negalign.evaluation.passk import evaluate_model, format_table, plot_curves
    from negalign.results import write_results
    from negalign.train import run

    import os

    if args.threads:  # before torch spins up its thread pool
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings = {}

    t = time.perf_counter()
    print("[nsr-arith] SFT of a kit model on all a+b problems with noisy labels ...", flush=True)
    run(load_recipe(data=sft_recipe(args, out)))
    timings["sft"] = time.perf_counter() - t
    models = {"base": str(out / "sft")}
    train_logs = {}
    for method in args.methods:
        t = time.perf_counter()
        print(f"[nsr-arith] {method}: {args.steps} steps x {args.prompts_per_step} prompts x {args.generations} "
              f"rollouts ...", flush=True)
        metrics = run(load_recipe(data=rl_recipe(args, method, models["base"], out)))
        timings[method] = time.perf_counter() - t
        models[method] = str(out / method)
        hist = [h for h in metrics.get("log_history", []) if "reward" in h]
        train_logs[method] = {"reward_first": hist[0]["reward"] if hist else None,
                              "reward_last": hist[-1]["reward"] if hist else None,
                              "generation_share": _mean(h.get("timing/generation_share") for h in hist),
                              "entropy_last": hist[-1].get("entropy") if hist else None}

    test = LOADERS["arith"](**{k: v for k, v in _data(args, "test").items() if k != "name"},
                            max_samples=args.eval_problems).load()
    results = {}
    for name, path in models.items():
        t = time.perf_counter()
        print(f"[nsr-arith] pass@k of {name}: {len(test)} held-out problems x {args.n} samples ...", flush=True)
        r = evaluate_model(path, test, "arith", n=args.n, max_new_tokens=4, temperature=1.0, top_p=1.0, batch_size=32,
                           seed=args.seed, backend="hf", samples_path=None, progress=False)
        results[name] = {"pass_at_k": r["pass_at_k"], "status_counts": r["status_counts"], "path": path,
                         **({"train": train_logs[name]} if name in train_logs else {})}
        timings[f"eval_{name}"] = time.perf_counter() - t
    curves = {name: r["pass_at_k"] for name, r in results.items()}
    plot = plot_curves(curves, out / "passk.png", title=f"pass@k on held-out a+b ({len(test)} problems, n={args.n})")
    table = format_table(curves)
    (out / "table.md").write_text(table + "\n")
    wall = time.perf_counter() - start
    summary = summarize(curves)
    print(table)
    print(summary)
    print(f"[nsr-arith] wall time {wall:.0f} s; wrote {out / 'results.json'} and {plot}")
    write_results(out, {"wall_time_s": wall, "timings_s": timings}, recipe=None, methods=results,
                  settings={k: v for k, v in vars(args).items() if not callable(v) and k != "func"},
                  plot=plot, table=table, summary=summary)
    return 0


def _mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(curves: dict[str, dict[str, float]]) -> str:
    """Plain-language comparison with the base model at k = 1 and the largest k (no verdict is tuned to pass)."""
    if "base" not in curves:
        return ""
    kmax = str(max(int(k) for k in curves["base"]))
    b1, bk = curves["base"]["1"], curves["base"][kmax]
    lines = [f"base: pass@1 {b1:.3f}, pass@{kmax} {bk:.3f}"]
    for name, c in curves.items():
        if name == "base":
            continue
        lines.append(f"{name}: pass@1 {c['1'] - b1:+.3f}, pass@{kmax} {c[kmax] - bk:+.3f} vs base")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser()
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
