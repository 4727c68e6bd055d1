"""``negalign quickstart madpo-toy --output-dir DIR``: MADPO against DPO and IPO under three levels of label noise.

The miniature (everything generated here, offline, on a CPU):

* prompts ``Write a short review of <film>.``; a response is ``--words`` words from a small vocabulary of positive,
  negative and neutral words, ending with a full stop;
* the **ground-truth reward** is programmatic: ``gt_reward(y) = #positive words - #negative words``;
* the base policy is an offline kit model fine-tuned (SFT) on responses whose words are neutral with probability 0.45,
  negative 0.35 and positive 0.20 (``CLASS_PROBS``): its greedy answer is neutral (reward 0), its samples lean negative;
* **preference pairs**: two such responses per pair, labelled by a Bradley–Terry draw from the ground truth,
  ``P(y_1 ≻ y_2) = σ((r_1 - r_2) / T)``, at three noise levels: ``high`` quality (T = ``--t-high``), ``medium``
  and ``low`` (noisy labels, often against the ground truth);
* per level: step 1 trains a reward model on the pairs with TRL's RewardTrainer (``madpo_reward`` recipe); step 2
  trains ``dpo`` (TRL DPO), ``ipo`` (TRL DPO, loss_type ipo) and ``madpo`` (margins from that reward model) from the
  same base with the same steps, learning rate and β.

Metrics: ``levels.<level>.methods.<name>.gt_reward`` = the mean ground-truth reward of the **greedy** answers to
``--eval-prompts`` held-out prompts (higher is better); ``gt_reward_sampled`` averages ``--eval-samples`` sampled
answers (temperature 1) per prompt. The claim of the paper, checked as measured and reported either way: MADPO ≥ DPO
at every level: ``claims`` holds one verdict per level (``negalign.evaluation.claims``: the paired difference of the
per-prompt mean **sampled** rewards, its 95% bootstrap interval over the evaluation prompts, pooled over the
``--seeds`` runs). Greedy rewards are a step function of the logits and nearly the same for every (exchangeable)
prompt, so they would make an interval over prompts falsely narrow; the sampled ones measure the policy. The data (films, SFT responses, preference labels) come from ``--seed``; each of the ``--seeds``
runs ``seed, seed+1, ...`` has its own kit initialisation, training seed and sampling seed (extra seeds under
``DIR/seed<s>/``).

Everything goes through recipes (``negalign.config.load_recipe`` + ``negalign.train.run``), as a user would.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

POSITIVE = ["great", "superb", "moving", "brilliant", "charming", "delightful", "gripping", "lovely"]
NEGATIVE = ["dull", "awful", "boring", "clumsy", "tedious", "bland", "messy", "weak"]
NEUTRAL = ["plot", "actors", "music", "scenes", "camera", "story", "ending", "dialogue"]
FILMS = [f"{a} {b}" for a in ("Red", "Silent", "Last", "Paper", "Golden", "Broken", "Hidden", "Winter", "Iron", "Lost",
                              "Quiet", "Northern", "Crimson", "Hollow", "Distant", "Final")
         for b in ("River", "Garden", "Harbor", "Crown", "Signal", "Mirror", "Valley", "Lantern")]  # 128 titles
LEVELS = ("high", "medium", "low")
METHODS = ("dpo", "ipo", "madpo")
LABELS = {"base": "base (SFT)", "dpo": "DPO", "ipo": "IPO", "madpo": "MADPO"}


def gt_reward(text: str, n_words: int = 5) -> int:
    """The programmatic ground truth: positive words minus negative words among the first ``n_words`` words (the
    length the task asks for; anything after them is ignored, so rambling earns nothing)."""
    words = [w.strip(".,!?;:").lower() for w in text.split()][:n_words]
    return sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="Folder for models, data, results.json, table and plot.")
    parser.add_argument("--size", default="tiny", help="Kit model size (negalign.models.SIZES).")
    parser.add_argument("--train-prompts", type=int, default=60)
    parser.add_argument("--pairs-per-prompt", type=int, default=2)
    parser.add_argument("--eval-prompts", type=int, default=60,
                        help="Held-out prompts (the items of the claims; train + eval prompts <= 128 films).")
    parser.add_argument("--words", type=int, default=5, help="Words per response.")
    parser.add_argument("--sft-epochs", type=int, default=8)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--rm-steps", type=int, default=40)
    parser.add_argument("--rm-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=40, help="Optimizer steps of DPO, IPO and MADPO.")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--t-high", type=float, default=0.25, help="Bradley–Terry temperature, high-quality labels.")
    parser.add_argument("--t-medium", type=float, default=1.0, help="Bradley–Terry temperature, medium quality.")
    parser.add_argument("--t-low", type=float, default=4.0, help="Bradley–Terry temperature, low quality.")
    parser.add_argument("--eval-samples", type=int, default=16,
                        help="Sampled answers per held-out prompt (temperature 1): each prompt's mean reward over "
                             "them is an item of the claims (sizing: docs/alignment.md).")
    parser.add_argument("--levels", default=",".join(LEVELS))
    parser.add_argument("--seed", type=int, default=0, help="Data seed, and the first training / sampling seed.")
    parser.add_argument("--seeds", type=int, default=1, help="Training and sampling seeds (seed, seed+1, ...): each "
                        "is a full run on the same data; the claims pool them.")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads. 1 is as fast for these tiny models and far faster on a busy machine "
                             "(OpenMP threads spin when cores are oversubscribed); 0 keeps torch's default.")


# ------------------------------------------------------------------------------------------------ the miniature


# word-class probabilities of the base policy's responses (and of the offline pairs): neutral words are the commonest
# and negative ones outnumber positive ones, so the base's greedy answer is neutral (reward 0) and its samples lean
# negative; raising the reward means moving probability onto the rarest class.
CLASS_PROBS = {"neutral": 0.45, "negative": 0.35, "positive": 0.20}
_CLASSES = {"neutral": NEUTRAL, "negative": NEGATIVE, "positive": POSITIVE}


def response(rng: random.Random, n: int) -> str:
    names, probs = zip(*CLASS_PROBS.items())
    words = [rng.choice(_CLASSES[rng.choices(names, probs)[0]]) for _ in range(n)]
    return " " + " ".join(words) + "."


def question(film: str) -> str:
    return f"Write a short review of {film}."


def preference_rows(prompts: list[str], temperature: float, args, seed: int) -> tuple[list[dict], float]:
    """Pairs labelled Bradley–Terry from the ground truth. Returns rows and the fraction agreeing with the truth."""
    rng = random.Random(seed)
    rows, agree, decided = [], 0, 0
    for p in prompts:
        for _ in range(args.pairs_per_prompt):
            a, b = response(rng, args.words), response(rng, args.words)
            while gt_reward(a, args.words) == gt_reward(b, args.words):
                b = response(rng, args.words)
            ra, rb = gt_reward(a, args.words), gt_reward(b, args.words)
            a_wins = rng.random() < 1 / (1 + math.exp(-(ra - rb) / temperature))
            chosen, rejected = (a, b) if a_wins else (b, a)
            agree += gt_reward(chosen, args.words) > gt_reward(rejected, args.words)
            decided += 1
            rows.append({"prompt": question(p), "chosen": chosen, "rejected": rejected})
    return rows, agree / decided


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ------------------------------------------------------------------------------------------------ evaluation


def evaluate(model_dir: str, films: list[str], args) -> dict:
    """Metrics of a saved model on the prompts of ``films``; ``gt_reward_items`` holds each prompt's greedy reward,
    ``gt_reward_sampled_items`` each prompt's mean reward over its ``args.eval_samples`` sampled answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from negalign.data import format_prompt
    from negalign.generation import HFEngine, generate

    tok = AutoTokenizer.from_pretrained(model_dir)
    eng = HFEngine(AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32"), tok, device="cpu")
    prompts = [format_prompt(question(f), tok) for f in films]
    greedy = generate(None, prompts, n=1, max_new_tokens=args.words + 6, temperature=0.0, engine=eng, batch_size=64,
                      progress=False)
    sampled = generate(None, prompts, n=args.eval_samples, max_new_tokens=args.words + 6, temperature=1.0,
                       seed=args.seed + 11, engine=eng, batch_size=64, progress=False)
    g = [gt_reward(r["completions"][0], args.words) for r in greedy]
    per_prompt = [[gt_reward(c, args.words) for c in r["completions"]] for r in sampled]
    s_items = [sum(x) / len(x) for x in per_prompt]
    return {"gt_reward": sum(g) / len(g), "gt_reward_sampled": sum(s_items) / len(s_items),
            "example": greedy[0]["completions"][0], "gt_reward_items": g, "gt_reward_sampled_items": s_items}


# ------------------------------------------------------------------------------------------------ runs


def _training(args, steps: int, lr: float) -> dict:
    return {"learning_rate": lr, "max_steps": steps, "per_device_train_batch_size": args.batch_size,
            "lr_scheduler_type": "constant", "gradient_checkpointing": False, "logging_steps": 10,
            "save_strategy": "no", "seed": args.seed, "disable_tqdm": True, "max_length": 64}


def _run(recipe_dict: dict, overrides=None) -> dict:
    from negalign.config import load_recipe
    from negalign.train import run

    return run(load_recipe(data=recipe_dict, overrides=overrides or []))


def _plot(path: Path, levels: dict, base: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [lv for lv in LEVELS if lv in levels]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.25
    for j, m in enumerate(METHODS):
        ys = [levels[lv]["methods"][m]["gt_reward"] for lv in names]
        ax.bar([i + (j - 1) * width for i in range(len(names))], ys, width, label=LABELS[m])
    ax.axhline(base, color="gray", linestyle="--", label="base (SFT)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{lv} quality" for lv in names])
    ax.set_ylabel("ground-truth reward of greedy answers ↑")
    ax.set_title("madpo-toy: DPO / IPO / MADPO vs label noise")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run_seed(args, seed: int, out: Path, data_dir: Path, train_films, eval_films, levels_data: dict,
              timings: dict) -> tuple[dict, dict]:
    """One training / sampling seed on the shared data: the base, then per level the reward model and every method.
    Returns ``(base, levels)``."""
    import argparse as _argparse

    sargs = _argparse.Namespace(**{**vars(args), "seed": seed})  # training, kit and sampling seed; data stay put
    tag = "" if seed == args.seed else f"seed{seed}_"
    print(f"[madpo-toy] 1/3 fine-tuning the base ({args.size} kit model, seed {seed})", flush=True)
    base_dir = out / "base"
    t = time.time()
    _run({
        "model": {"kit": {"dir": str(out / "kit"), "arch": "qwen2", "size": args.size, "vocab_size": 384,
                          "seed": seed}},
        "data": {"name": "qa", "path": str(data_dir / "sft.jsonl")},
        "method": {"name": "sft"},
        "training": {**_training(sargs, -1, args.sft_lr), "num_train_epochs": args.sft_epochs, "max_steps": -1,
                     "per_device_train_batch_size": 16, "lr_scheduler_type": "cosine"},
        "output": {"dir": str(base_dir)},
    })
    timings[f"{tag}sft_s"] = time.time() - t
    base = evaluate(str(base_dir), eval_films, sargs)
    print(f"          base: gt_reward {base['gt_reward']:.3f} (sampled {base['gt_reward_sampled']:.3f})", flush=True)

    levels = {}
    for level, (data_path, temp, agreement, n_rows) in levels_data.items():
        data = {"name": "preference", "path": str(data_path), "chat": True}
        model = {"name_or_path": str(base_dir), "dtype": "float32"}
        lv = {"label_agreement_with_gt": agreement, "bt_temperature": temp, "methods": {}}
        print(f"[madpo-toy] 2/3 level {level}: T={temp}, labels agree with the ground truth on "
              f"{agreement:.0%} of {n_rows} pairs; reward model (seed {seed})", flush=True)
        t = time.time()
        rm_dir = out / level / "rm"
        rm = _run({"model": model, "data": data, "method": {"name": "madpo_reward"},
                   "training": {**_training(sargs, args.rm_steps, args.rm_lr), "disable_dropout": True},
                   "output": {"dir": str(rm_dir)}})
        lv["reward_model"] = {"train_loss": rm.get("train_loss"), "final_train_accuracy": rm.get("final_train_accuracy")}
        timings[f"{tag}{level}_rm_s"] = time.time() - t
        for m in METHODS:
            t = time.time()
            method = {"name": "madpo" if m == "madpo" else "dpo", "beta": args.beta}
            if m == "madpo":
                method["reward_model"] = str(rm_dir)
            training = {**_training(sargs, args.steps, args.lr), "disable_dropout": True}
            if m == "ipo":
                training["loss_type"] = "ipo"
            res = _run({"model": model, "data": data, "method": method, "training": training,
                        "output": {"dir": str(out / level / m)}})
            ev = evaluate(str(out / level / m), eval_films, sargs)
            ev["train_loss"] = res.get("train_loss")
            if m == "madpo":
                ev["weights"] = res.get("madpo_weights")
            lv["methods"][m] = ev
            timings[f"{tag}{level}_{m}_s"] = time.time() - t
            print(f"          {level}/{m}: gt_reward {ev['gt_reward']:.3f} (sampled {ev['gt_reward_sampled']:.3f})",
                  flush=True)
        levels[level] = lv
    return base, levels


def _mean(xs):
    return sum(xs) / len(xs)


def main(args) -> int:
    from negalign.quickstarts import torch_threads

    with torch_threads(args.threads):
        return _main(args)


def _main(args) -> int:
    from negalign.evaluation.claims import claims_table, paired_claim
    from negalign.results import write_results

    t0 = time.time()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    films = list(FILMS)
    rng.shuffle(films)
    n_train = min(args.train_prompts, len(films) - args.eval_prompts)
    train_films, eval_films = films[:n_train], films[n_train : n_train + args.eval_prompts]
    timings = {}

    # 1. the data, shared by every seed: SFT responses drawn from CLASS_PROBS, labelled pairs per level
    sft = [{"question": question(f), "answer": response(rng, args.words)} for f in train_films for _ in range(4)]
    _write(out / "data" / "sft.jsonl", sft)
    temps = {"high": args.t_high, "medium": args.t_medium, "low": args.t_low}
    levels_data = {}
    for li, level in enumerate([lv for lv in args.levels.split(",") if lv]):
        rows, agreement = preference_rows(train_films, temps[level], args, seed=args.seed + 100 + li)
        data_path = out / "data" / f"pairs_{level}.jsonl"
        _write(data_path, rows)
        levels_data[level] = (data_path, temps[level], agreement, len(rows))

    # 2. every training / sampling seed on that data
    seeds = [args.seed + i for i in range(max(1, args.seeds))]
    runs = {s: _run_seed(args, s, out if s == args.seed else out / f"seed{s}", out / "data", train_films, eval_films,
                         levels_data, timings) for s in seeds}
    first_base, first_levels = runs[seeds[0]]
    base = {**first_base, "gt_reward": _mean([runs[s][0]["gt_reward"] for s in seeds]),
            "gt_reward_sampled": _mean([runs[s][0]["gt_reward_sampled"] for s in seeds]),
            **{k: [runs[s][0][k] for s in seeds] for k in ("gt_reward_items", "gt_reward_sampled_items")}}
    levels = {}
    for level, lv in first_levels.items():  # metrics: the mean over seeds (the first seed's extras as they are)
        levels[level] = {**lv, "methods": {m: {**ev, **{k: _mean([runs[s][1][level]["methods"][m][k] for s in seeds])
                                                        for k in ("gt_reward", "gt_reward_sampled")},
                                               **{k: [runs[s][1][level]["methods"][m][k] for s in seeds]
                                                  for k in ("gt_reward_items", "gt_reward_sampled_items")}}
                                           for m, ev in lv["methods"].items()}}

    # 3. table, claims, plot, results.json
    names = list(levels)
    header = f"{'level':<8}{'labels=gt':>10}" + "".join(f"{LABELS[m]:>10}" for m in METHODS) + \
        "".join(f"{LABELS[m] + ' (s)':>12}" for m in METHODS)
    lines = [f"base (SFT): gt_reward {base['gt_reward']:.3f} greedy, {base['gt_reward_sampled']:.3f} sampled"
             + (f" (means over seeds {seeds})" if len(seeds) > 1 else ""), header, "-" * len(header)]
    md = ["| level | labels agree with gt | " + " | ".join(LABELS[m] for m in METHODS) + " | "
          + " | ".join(LABELS[m] + " (sampled)" for m in METHODS) + " |",
          "|---|---|" + "---|" * (2 * len(METHODS))]
    for level in names:
        ms = levels[level]["methods"]
        lines.append(f"{level:<8}{levels[level]['label_agreement_with_gt']:>10.0%}"
                     + "".join(f"{ms[m]['gt_reward']:>10.3f}" for m in METHODS)
                     + "".join(f"{ms[m]['gt_reward_sampled']:>12.3f}" for m in METHODS))
        md.append(f"| {level} | {levels[level]['label_agreement_with_gt']:.0%} | "
                  + " | ".join(f"{ms[m]['gt_reward']:.3f}" for m in METHODS) + " | "
                  + " | ".join(f"{ms[m]['gt_reward_sampled']:.3f}" for m in METHODS) + " |")
    table = "\n".join(lines)
    print(table)

    def items(level, m):  # [n_seeds, n_prompts]: each prompt's mean reward over its sampled answers
        return levels[level]["methods"][m]["gt_reward_sampled_items"]

    # the claims' metric is the sampled reward: the held-out prompts are exchangeable (a film title), so a greedy
    # answer is nearly the same for every prompt and its per-prompt rewards would give a falsely narrow interval
    claims = [paired_claim(f"MADPO gt_reward_sampled ≥ DPO gt_reward_sampled ({lv} quality)", items(lv, "madpo"),
                           items(lv, "dpo"), ">", seeds=seeds) for lv in names]
    verdicts = claims_table(claims)
    print(verdicts)
    (out / "table.md").write_text(f"base (SFT): gt_reward {base['gt_reward']:.3f} (greedy), "
                                  f"{base['gt_reward_sampled']:.3f} (sampled)\n\n" + "\n".join(md) + "\n\n"
                                  + verdicts + "\n")
    png = out / "gt_reward_by_level.png"
    _plot(png, levels, base["gt_reward"])
    timings["total_s"] = time.time() - t0
    write_results(
        out,
        {"levels": {lv: {"methods": {m: {"gt_reward": levels[lv]["methods"][m]["gt_reward"]} for m in METHODS}}
                    for lv in names}},
        recipe=None,
        quickstart="madpo-toy",
        base=base,
        levels=levels,
        claims=claims,
        seeds=seeds,
        per_seed={str(s): {"base": {k: runs[s][0][k] for k in ("gt_reward", "gt_reward_sampled")},
                           "levels": {lv: {m: {k: ev.get(k) for k in ("gt_reward", "gt_reward_sampled", "train_loss")}
                                           for m, ev in runs[s][1][lv]["methods"].items()} for lv in names}}
                  for s in seeds},
        metric_definitions={
            "gt_reward": "mean of (#positive words - #negative words) over the greedy answers to held-out prompts "
                         "(over several seeds: the mean of the seeds' values)",
            "gt_reward_sampled": "the mean reward of --eval-samples sampled answers (temperature 1) per held-out "
                                 "prompt, averaged over the prompts (the metric of the claims)",
            "gt_reward_items": "each held-out prompt's greedy reward, one list per seed",
            "gt_reward_sampled_items": "each held-out prompt's mean sampled reward, one list per seed (the items of "
                                       "the claims' intervals)",
        },
        settings={k: v for k, v in vars(args).items() if k not in ("func",)},
        timings_s=timings,
        table=table,
        claims_table=verdicts,
        plot=str(png),
    )
    print(f"[madpo-toy] wrote {out / 'results.json'}, {out / 'table.md'} and {png} in {timings['total_s']:.0f}s")
    return 0
