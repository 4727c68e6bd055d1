"""``negalign quickstart nsr-arith --output-dir DIR``: PSR / NSR / W-REINFORCE / GRPO / NFT on synthetic arithmetic.

A miniature of Zhu et al. 2025 (and Chen et al. 2025's NFT) that runs offline on a CPU:

1. "pre-training": a kit model (random weights, digits as tokens) is SFT-trained on *all* ``a*b=`` problems
   (``--ops``) with noisy labels (each problem draws its own share of near-miss answers), so it ends up *partially*
   right, more often on some problems than others and never on some — a stand-in for a base LLM with headroom at
   large k (products, unlike sums, are not reachable from neighbouring problems); it is trained once (``--seed``),
   and ``--base-only`` stops after its pass@k;
2. from that model, each RL method trains on the *train* split for the same number of rollout batches of the same
   size, each batch feeding several optimizer updates (``--updates-per-rollout``, the references' structure, so the
   PPO clip can bind), rewarded by the exact verifier (NFT generates extra rollouts to refill the groups its filter
   drops; that is part of the method);
3. every model samples ``n`` answers per problem of the *test* split — problems no RL run ever saw, as MATH test
   problems are never seen by RL in the paper — and the unbiased pass@k is computed per problem for k = 1, 2, 4, … n;
4. with ``--seeds N`` steps 2–3 run for N training / sampling seeds; the paper's claims are decided from per-problem
   pass@k paired across methods (``negalign.evaluation.claims``: paired bootstrap 95% interval over problems, seeds
   pooled per problem) and a table, the verdicts and a pass@k plot are written; ``DIR/results.json`` holds
   ``methods.<name>.pass_at_k`` (pooled over seeds) and ``claims``.

The claims under test (SPEC §3): PSR raises pass@1 but lowers pass@k at large k; NSR keeps or raises pass@k across
the whole k range; W-REINFORCE is best overall (``claim_specs``). It composes only the public API (recipes as dicts,
``negalign.train.run``, ``negalign.evaluation``), as a user would.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

METHODS = ("psr", "nsr", "w_reinforce", "grpo", "nft")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="Where models, results.json, passk.png and table.md go.")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--ops", default="*", choices=("+", "*", "+*"),
                        help="Operation(s) of the problems (default *: the kit model does not generalise a product "
                        "from its neighbours, so a problem shown only a wrong answer stays unsolved and base pass@128 "
                        "is well below 1; with + it was 0.94, docs/rlvr.md).")
    parser.add_argument("--high", type=int, default=23, help="Operands are 0..high (default 23: 576 problems).")
    parser.add_argument("--test-size", type=int, default=192, help="Problems held out from RL (default 192).")
    parser.add_argument("--sft-epochs", type=float, default=12.0)
    parser.add_argument("--sft-lr", type=float, default=5e-3)
    parser.add_argument("--sft-copies", type=int, default=8, help="SFT samples per problem (default 8).")
    parser.add_argument("--label-noise", type=float, default=0.8,
                        help="Mean share of near-miss SFT answers (default 0.8: shares uniform on [0, 1.6], capped).")
    parser.add_argument("--near-miss", default="fixed", choices=("fixed", "random"),
                        help="fixed (default): one wrong answer per problem, a consistent misconception; random: each "
                        "noisy label its own near miss (the miniature before issue #15).")
    parser.add_argument("--max-noise-share", type=float, default=1.0,
                        help="Cap on a problem's noisy share (default 1.0: some problems see only wrong answers).")
    parser.add_argument("--steps", type=int, default=60,
                        help="RL steps per method: rollout batches, each feeding --updates-per-rollout optimizer "
                        "updates (verl's 'training steps'; default 60).")
    parser.add_argument("--updates-per-rollout", type=int, default=4,
                        help="Optimizer updates per rollout batch (TRL steps_per_generation; default 4, as the NSR "
                        "reference's 1024 prompts in mini-batches of 256). 1 = on-policy, the clip never binds.")
    parser.add_argument("--prompts-per-step", type=int, default=8, help="Prompts per rollout batch (default 8).")
    parser.add_argument("--generations", type=int, default=8, help="Rollouts per prompt (default 8).")
    parser.add_argument("--rl-lr", type=float, default=2e-4, help="RL learning rate (default 2e-4).")
    parser.add_argument("--n", type=int, default=128, help="Samples per held-out problem for pass@k (default 128).")
    parser.add_argument("--eval-temperature", type=float, default=0.6,
                        help="pass@k sampling temperature (default 0.6, the reference's eval.sh).")
    parser.add_argument("--eval-top-p", type=float, default=0.95, help="pass@k sampling top-p (default 0.95).")
    parser.add_argument("--eval-problems", type=int, default=None, help="Evaluate the first N held-out problems.")
    parser.add_argument("--size", default="tiny", help="Kit model size (tiny, small, ...).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the base model and of the first RL run.")
    parser.add_argument("--seeds", type=int, default=1,
                        help="RL training + pass@k sampling seeds seed, seed+1, … (default 1), pooled in the intervals")
    parser.add_argument("--base-only", action="store_true",
                        help="SFT the base model and evaluate only it, no RL (sizing its headroom: pass@1, pass@n).")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the kit model is too "
                        "small to gain from more, and extra threads thrash when the CPU is shared).")


def _data(args, split: str) -> dict:
    return {"name": "arith", "split": split, "high": args.high, "ops": args.ops, "test_size": args.test_size}


def _common_training(seed: int) -> dict:
    return {"logging_steps": 5, "save_strategy": "no", "seed": seed, "report_to": "none",
            "disable_tqdm": True}


def sft_recipe(args, out: Path) -> dict:
    return {
        "model": {"kit": {"dir": str(out / "kit"), "arch": "qwen2", "size": args.size, "vocab_size": 512,
                          "seed": args.seed}},
        "data": {**_data(args, "all"), "copies": args.sft_copies, "label_noise": args.label_noise,
                 "near_miss": args.near_miss, "max_noise_share": args.max_noise_share},
        "method": {"name": "sft"},
        "training": {**_common_training(args.seed), "num_train_epochs": args.sft_epochs, "learning_rate": args.sft_lr,
                     "per_device_train_batch_size": 64, "max_length": 64, "lr_scheduler_type": "cosine",
                     "warmup_steps": 10},
        "output": {"dir": str(out / "sft")},
    }


def rl_recipe(args, method: str, base: str, out: Path, seed: int | None = None) -> dict:
    """One RL run: ``--steps`` rollout batches of prompts × generations, each split into ``--updates-per-rollout``
    optimizer updates (TRL: ``steps_per_generation`` micro-batches, one update each)."""
    seed = args.seed if seed is None else seed
    rollout = args.prompts_per_step * args.generations
    if rollout % args.updates_per_rollout:
        raise SystemExit(f"--updates-per-rollout {args.updates_per_rollout} must divide the rollout batch "
                         f"({args.prompts_per_step} prompts x {args.generations} = {rollout})")
    training = {
        **_common_training(seed),
        "max_steps": args.steps * args.updates_per_rollout,
        "learning_rate": args.rl_lr,
        "lr_scheduler_type": "constant",
        "per_device_train_batch_size": rollout // args.updates_per_rollout,
        "steps_per_generation": args.updates_per_rollout,
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
        "output": {"dir": str(out / method if seed == args.seed else out / f"{method}-seed{seed}")},
    }


def claim_specs(names, kmax: int) -> list[tuple[str, str, str, int, str]]:
    """SPEC §3 as comparisons ``(claim, a, b, k, direction)`` on per-problem pass@k, for the arms that ran."""
    K = kmax
    specs = [
        ("PSR pass@1 > base pass@1", "psr", "base", 1, ">"),
        (f"PSR pass@{K} < base pass@{K}", "psr", "base", K, "<"),
        ("NSR pass@1 > base pass@1", "nsr", "base", 1, ">"),
        (f"NSR pass@{K} ≥ base pass@{K}", "nsr", "base", K, "≥"),
        (f"W-REINFORCE pass@{K} > PSR pass@{K}", "w_reinforce", "psr", K, ">"),
        ("W-REINFORCE pass@1 ≥ GRPO pass@1", "w_reinforce", "grpo", 1, "≥"),
        (f"W-REINFORCE pass@{K} ≥ GRPO pass@{K}", "w_reinforce", "grpo", K, "≥"),
    ]
    return [s for s in specs if s[1] in names and s[2] in names]


def per_problem(counts_by_seed: list[list[int]], n: int, k: int) -> list[list[float]]:
    """Unbiased pass@k of every problem, ``[n_seeds][n_problems]``."""
    from negalign.evaluation import pass_at_k

    return [[pass_at_k(n, c, k) for c in counts] for counts in counts_by_seed]


def compute_claims(counts: dict[str, list[list[int]]], n: int, seeds: list[int]) -> list[dict]:
    """``claims`` of results.json from each arm's per-seed, per-problem correct counts (same problems, same order)."""
    from negalign.evaluation.claims import paired_claim
    from negalign.evaluation.passk import k_values

    kmax = k_values(n)[-1]
    return [paired_claim(text, per_problem(counts[a], n, k), per_problem(counts[b], n, k), direction, seeds=seeds)
            for text, a, b, k, direction in claim_specs(set(counts), kmax)]


def _cpu_s() -> float:
    self_, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + kids.ru_utime


def main(args) -> int:
    from negalign.config import load_recipe
    from negalign.data import LOADERS
    from negalign.evaluation.claims import claims_table
    from negalign.evaluation.passk import evaluate_model, format_table, pass_at_k_curve, plot_curves
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
    start, cpu0 = time.perf_counter(), _cpu_s()
    timings = {}
    seeds = [args.seed + i for i in range(args.seeds)]

    t = time.perf_counter()
    print(f"[nsr-arith] SFT of a kit model on all a{args.ops}b problems with noisy labels ...", flush=True)
    run(load_recipe(data=sft_recipe(args, out)))
    timings["sft"] = time.perf_counter() - t
    test = LOADERS["arith"](**{k: v for k, v in _data(args, "test").items() if k != "name"},
                            max_samples=args.eval_problems).load()
    names = ["base", *([] if args.base_only else args.methods)]
    counts = {name: [] for name in names}  # per seed, per problem: correct samples out of n
    results = {name: {"pass_at_k_per_seed": {}, "paths": {}, "status_counts": {}} for name in names}
    for seed in seeds:
        for name in names:
            if name == "base":
                path = str(out / "sft")
            else:
                t = time.perf_counter()
                print(f"[nsr-arith] seed {seed} {name}: {args.steps} rollouts x {args.prompts_per_step} prompts x "
                      f"{args.generations}, {args.updates_per_rollout} updates each ...", flush=True)
                recipe = rl_recipe(args, name, str(out / "sft"), out, seed)
                metrics = run(load_recipe(data=recipe))
                timings[f"{name}_seed{seed}"] = time.perf_counter() - t
                path = recipe["output"]["dir"]
                results[name].setdefault("train", {})[str(seed)] = _train_log(metrics)
            t = time.perf_counter()
            r = evaluate_model(path, test, "arith", n=args.n, max_new_tokens=4, temperature=args.eval_temperature,
                               top_p=args.eval_top_p, batch_size=32, seed=seed, backend="hf", samples_path=None,
                               progress=False)
            timings[f"eval_{name}_seed{seed}"] = time.perf_counter() - t
            counts[name].append(r["correct_counts"])
            results[name]["pass_at_k_per_seed"][str(seed)] = r["pass_at_k"]
            results[name]["paths"][str(seed)] = path
            results[name]["status_counts"][str(seed)] = r["status_counts"]
    for name in names:  # pooled: the mean over seeds and problems
        results[name]["pass_at_k"] = pass_at_k_curve([c for cs in counts[name] for c in cs], args.n)
        results[name]["correct_counts"] = {str(s): c for s, c in zip(seeds, counts[name])}
    claims = compute_claims(counts, args.n, seeds)
    curves = {name: r["pass_at_k"] for name, r in results.items()}
    title = (f"pass@k on held-out a{args.ops}b ({len(test)} problems, n={args.n}, "
             f"{len(seeds)} seed{'s' * (len(seeds) > 1)})")
    plot = plot_curves(curves, out / "passk.png", title=title)
    table = format_table(curves)
    verdicts = claims_table(claims)
    (out / "table.md").write_text(table + "\n\n" + verdicts + "\n")
    wall, cpu = time.perf_counter() - start, _cpu_s() - cpu0
    print(table)
    print(verdicts)
    print(f"[nsr-arith] {len(test)} problems x {args.n} samples, seeds {seeds}; wall time {wall:.0f} s, user CPU "
          f"{cpu:.0f} s; wrote {out / 'results.json'} and {plot}")
    write_results(out, {"wall_time_s": wall, "user_cpu_s": cpu, "timings_s": timings}, recipe=None, methods=results,
                  claims=claims, settings={k: v for k, v in vars(args).items() if not callable(v) and k != "func"},
                  plot=plot, table=table, claims_table=verdicts)
    return 0


def _train_log(metrics: dict) -> dict:
    hist = [h for h in metrics.get("log_history", []) if "reward" in h]
    edge = max(1, len(hist) // 10)  # each log covers logging_steps micro-batches of a few prompts: average a tenth
    return {"reward_first": _mean(h["reward"] for h in hist[:edge]),
            "reward_last": _mean(h["reward"] for h in hist[-edge:]),
            "generation_share": _mean(h.get("timing/generation_share") for h in hist),
            "clip_ratio": _mean(h.get("clip_ratio/region_mean") for h in hist),  # NSR family, GRPO
            "clamped_frac": _mean(h.get("nft/clamped_frac") for h in hist),  # NFT's counterpart
            "entropy_last": hist[-1].get("entropy") if hist else None}


def _mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser()
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
