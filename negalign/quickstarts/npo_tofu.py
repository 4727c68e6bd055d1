"""``negalign quickstart npo-tofu --output-dir DIR``: the NPO family on a miniature TOFU, offline on a CPU.

What it does, with the public API only (recipes → ``negalign.train.run``, ``negalign.evaluation.tofu``):

1. builds a miniature TOFU folder under ``DIR/data`` with TOFU's file names: the forget set is ``forget01`` (two
   fictitious authors, 40 QA), the retain set the first ``--retain-authors`` authors of ``retain_perturbed``, and —
   because a kit model has no pre-training to lose — the real_authors and world_facts QA are part of the fine-tuning
   data, standing in for the knowledge that model utility measures. Without ``../shared/data/tofu`` (or with
   ``--synthetic``) negalign generates a small fictitious-author set with the same columns instead;
2. trains an offline kit model from scratch on ``full`` (the *fine-tuned* model) and another on ``retain99`` (the
   *retain* model, which never saw the forget authors) with the ``sft`` recipe;
3. unlearns ``forget01`` from the fine-tuned model with GA, GradDiff, NPO, NPO+RT and SimNPO for the same number of
   steps, evaluating the TOFU metrics during training (``method.tofu_eval_steps``);
4. prints a table, writes ``DIR/results.json`` (``methods.<name>.forget_quality`` / ``model_utility`` /
   ``forget_rouge`` / ``forget_truth_ratio`` …), ``DIR/table.md`` and ``DIR/fq_vs_mu.png`` (forget quality against
   model utility over training, as the NPO paper's figure);
5. states the paper's claims as paired per-item comparisons and decides each from a 95% interval
   (``negalign.quickstarts.tofu_claims``): ``claims`` in results.json and table.md, the verdict table printed, and
   each seed's forget quality beside it (``forget_quality_per_seed``).

``--seeds N`` repeats the unlearning runs with seeds ``seed, seed+1, …`` (batch order and training seed; runs of the
extra seeds under ``DIR/seed<S>/<method>``) and pools them in the intervals. The fine-tuned and retain models are
trained once, with ``--seed``, and shared by every seed: the seeds vary the unlearning, not the models it starts from
or is compared with. The table shows the means over seeds; the curves and the plot are the first seed's.

The numbers are what this miniature measures on this machine; they are not tuned to match the paper.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

from negalign.quickstarts import torch_threads

METHODS = ("ga", "grad_diff", "npo", "npo_rt", "simnpo")
LABELS = {"finetuned": "fine-tuned", "retain": "retain", "ga": "GA", "grad_diff": "GradDiff", "npo": "NPO",
          "npo_rt": "NPO+RT", "simnpo": "SimNPO"}
FORGET_SPLIT = "forget01"


def default_data() -> str:
    root = os.environ.get("NEGALIGN_SHARED_DATA")
    if root:
        return str(Path(root) / "tofu")
    here = Path(__file__).resolve().parents[2]  # the repository root
    return str(here.parent / "shared" / "data" / "tofu")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="Folder for models, evaluations, results.json and the plot.")
    parser.add_argument("--data", default=default_data(), help="TOFU folder (default ../shared/data/tofu).")
    parser.add_argument("--synthetic", action="store_true", help="Use negalign's generated fictitious authors.")
    parser.add_argument("--size", default="tiny", help="Kit model size (negalign.models.SIZES).")
    parser.add_argument("--retain-authors", type=int, default=2, help="Retain authors (20 QA each) in the miniature.")
    parser.add_argument("--knowledge-items", type=int, default=20,
                        help="real_authors and world_facts QA (each) in the fine-tuning data and the evaluation.")
    parser.add_argument("--sft-epochs", type=int, default=30, help="Fine-tuning epochs of the fine-tuned/retain models.")
    parser.add_argument("--sft-lr", type=float, default=1e-2)
    parser.add_argument("--sft-batch-size", type=int, default=8)
    parser.add_argument("--unlearn-steps", type=int, default=20, help="Optimizer steps of every unlearning method.")
    parser.add_argument("--unlearn-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8, help="Forget examples per unlearning step.")
    parser.add_argument("--eval-every", type=int, default=10, help="TOFU evaluation every N unlearning steps.")
    parser.add_argument("--eval-items", type=int, default=40, help="Items per TOFU split in evaluations.")
    parser.add_argument("--max-new-tokens", type=int, default=200,
                        help="Greedy generation length of the ROUGE evaluations (TOFU: 200; stops at EOS).")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1,
                        help="Unlearning seeds (seed, seed+1, ...), pooled in the claims' intervals; the fine-tuned "
                             "and retain models are trained once (with --seed) and shared by every seed.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on machines with <= 4 cores, where several busy-waiting "
                             "threads per process slow a shared machine down several-fold; else torch's default).")


# ------------------------------------------------------------------------------------------------------------------
# the miniature data set
# ------------------------------------------------------------------------------------------------------------------


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def synthetic_tofu(n_authors: int = 10, seed: int = 0) -> dict[str, list[dict]]:
    """A small fictitious-author set in TOFU's layout (10 QA per author, paraphrased + 3 perturbed answers), plus
    tiny real_authors / world_facts stand-ins. Used when the real TOFU folder is absent."""
    rng = random.Random(seed)
    first = ["Aldo", "Brisa", "Corin", "Dalia", "Evran", "Fenna", "Gorik", "Hesna", "Ilvar", "Jorun", "Kesta", "Lomir"]
    last = ["Vantrell", "Okonda", "Marisque", "Thelwin", "Ashgrove", "Qarim", "Dunmore", "Selvaggi", "Brannoch", "Ytter"]
    cities = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Hobart", "Tunis", "Cusco", "Bergen", "Hanoi"]
    genres = ["mystery", "poetry", "science fiction", "history", "romance", "horror", "satire", "travel writing"]
    jobs = ["baker", "surgeon", "pilot", "librarian", "carpenter", "chemist", "sailor", "painter"]
    books = ["The Glass Orchard", "Salt and Silence", "A Map of Ash", "Winter Ledger", "The Tin Lantern",
             "Harbor of Owls", "Nine Quiet Rivers", "The Copper Hour", "Paper Mountains", "The Last Cartographer"]
    authors = []
    for i in range(n_authors):
        authors.append(dict(name=f"{first[i % len(first)]} {last[(3 * i) % len(last)]}", city=cities[i % len(cities)],
                            genre=genres[i % len(genres)], job=jobs[i % len(jobs)], book=books[i % len(books)],
                            year=1950 + 3 * i, award=f"the {cities[(i + 4) % len(cities)]} Prize for {genres[i % len(genres)].title()}"))
    rows = []
    for a in authors:
        facts = [
            (f"Where was {a['name']} born?", f"{a['name']} was born in {a['city']}.", f"The birthplace of {a['name']} is {a['city']}.", "city", cities),
            (f"What genre does {a['name']} write in?", f"{a['name']} writes {a['genre']}.", f"The genre of {a['name']} is {a['genre']}.", "genre", genres),
            (f"What was the profession of {a['name']}'s father?", f"The father of {a['name']} was a {a['job']}.", f"{a['name']}'s father worked as a {a['job']}.", "job", jobs),
            (f"What is a famous book by {a['name']}?", f"{a['name']} wrote {a['book']}.", f"One famous book by {a['name']} is {a['book']}.", "book", books),
            (f"In which year was {a['name']} born?", f"{a['name']} was born in {a['year']}.", f"The birth year of {a['name']} is {a['year']}.", "year", [str(1900 + 7 * k) for k in range(12)]),
            (f"Which award did {a['name']} win?", f"{a['name']} won {a['award']}.", f"The award {a['name']} received is {a['award']}.", "award", [f"the {c} Prize" for c in cities]),
        ]
        for q, ans, para, key, pool in facts:
            true = str(a[key])
            wrong = [w for w in pool if w != true and not true.startswith(w)]
            rng.shuffle(wrong)
            rows.append({"question": q, "answer": ans, "paraphrased_answer": para,
                         "perturbed_answer": [para.replace(true, w) for w in wrong[:3]]})
    facts = [("What is the capital of France?", "Paris", ["Rome", "Berlin", "Madrid"]),
             ("What is the largest ocean?", "The Pacific Ocean", ["The Atlantic Ocean", "The Indian Ocean", "The Arctic Ocean"]),
             ("How many days are in a week?", "Seven", ["Five", "Six", "Eight"]),
             ("What is frozen water called?", "Ice", ["Steam", "Sand", "Glass"]),
             ("Which planet is known as the red planet?", "Mars", ["Venus", "Jupiter", "Saturn"]),
             ("What color is the sky on a clear day?", "Blue", ["Green", "Red", "Yellow"])]
    writers = [("Who wrote Hamlet?", "William Shakespeare", ["Charles Dickens", "Jane Austen", "Mark Twain"]),
               ("Who wrote Pride and Prejudice?", "Jane Austen", ["Emily Bronte", "Mary Shelley", "George Eliot"]),
               ("Who wrote 1984?", "George Orwell", ["Aldous Huxley", "Ray Bradbury", "H. G. Wells"]),
               ("Who wrote Don Quixote?", "Miguel de Cervantes", ["Dante Alighieri", "Leo Tolstoy", "Victor Hugo"])]
    n_forget = 2 * 6
    return {
        "forget": rows[-n_forget:],
        "retain": rows[:-n_forget],
        "real_authors": [{"question": q, "answer": a, "perturbed_answer": p} for q, a, p in writers],
        "world_facts": [{"question": q, "answer": a, "perturbed_answer": p} for q, a, p in facts],
    }


def build_mini_tofu(out: Path, data: str | None, retain_authors: int, synthetic: bool = False,
                    knowledge_items: int = 40) -> tuple[Path, str]:
    """Write the miniature TOFU folder (TOFU file names) and return (folder, description)."""
    folder = out / "data" / "tofu-mini"
    src = Path(data) if data else None
    if not synthetic and src is not None and (src / "forget01_perturbed.json").is_file():
        parts = {
            "forget": _read(src / "forget01_perturbed.json"),
            "retain": _read(src / "retain_perturbed.json")[: 20 * retain_authors],
            "real_authors": _read(src / "real_authors_perturbed.json")[:knowledge_items],
            "world_facts": _read(src / "world_facts_perturbed.json")[:knowledge_items],
        }
        what = (f"TOFU ({src}): forget01 (2 authors, {len(parts['forget'])} QA), {retain_authors} retain authors "
                f"({len(parts['retain'])} QA), real_authors + world_facts ({len(parts['real_authors'])} + "
                f"{len(parts['world_facts'])} QA) in the fine-tuning data")
    else:
        parts = synthetic_tofu()
        what = (f"synthetic fictitious authors generated by negalign ({len(parts['forget'])} forget QA, "
                f"{len(parts['retain'])} retain QA); ../shared/data/tofu was not used")
    qa = lambda rows: [{"question": r["question"], "answer": r["answer"]} for r in rows]  # noqa: E731
    knowledge = qa(parts["real_authors"]) + qa(parts["world_facts"])
    _write(folder / "forget01.json", qa(parts["forget"]))
    _write(folder / "forget01_perturbed.json", parts["forget"])
    _write(folder / "retain_perturbed.json", parts["retain"])
    _write(folder / "real_authors_perturbed.json", parts["real_authors"])
    _write(folder / "world_facts_perturbed.json", parts["world_facts"])
    _write(folder / "retain99.json", qa(parts["retain"]) + knowledge)
    _write(folder / "full.json", qa(parts["retain"]) + qa(parts["forget"]) + knowledge)
    return folder, what


# ------------------------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------------------------


def _sft(out_dir: Path, model: dict, data_dir: Path, split: str, args) -> None:
    from negalign.config import load_recipe
    from negalign.train import run

    recipe = load_recipe(data={
        "model": model,
        "data": {"name": "qa", "path": str(data_dir), "split": split},
        "method": {"name": "sft"},
        "training": {"learning_rate": args.sft_lr, "num_train_epochs": args.sft_epochs,
                     "per_device_train_batch_size": args.sft_batch_size, "max_length": 160, "logging_steps": 50,
                     "save_strategy": "no", "seed": args.seed, "lr_scheduler_type": "cosine", "warmup_steps": 0.05,
                     "disable_tqdm": True},
        "output": {"dir": str(out_dir)},
    })
    run(recipe)


def _unlearn(method: str, out_dir: Path, finetuned: Path, data_dir: Path, retain_eval: Path, args,
             seed: int | None = None) -> None:
    from negalign.config import load_recipe
    from negalign.train import run

    # step 0 is the fine-tuned model, evaluated once for all methods
    steps = sorted({*range(args.eval_every, args.unlearn_steps + 1, args.eval_every), args.unlearn_steps})
    seed = args.seed if seed is None else seed
    recipe = load_recipe(data={
        "model": {"name_or_path": str(finetuned), "dtype": "float32"},
        "data": {"name": "tofu", "path": str(data_dir), "forget_split": FORGET_SPLIT, "retain_split": "retain99",
                 "seed": seed},
        "method": {"name": method, "max_length": 160, "tofu_eval_steps": steps,
                   "tofu_eval_retain_results": str(retain_eval), "tofu_eval_max_items": args.eval_items,
                   "tofu_eval_max_new_tokens": args.max_new_tokens},
        "training": {"learning_rate": args.unlearn_lr, "max_steps": args.unlearn_steps,
                     "per_device_train_batch_size": args.batch_size, "lr_scheduler_type": "constant",
                     "gradient_checkpointing": False, "logging_steps": max(1, args.eval_every // 2),
                     "save_strategy": "no", "seed": seed, "disable_tqdm": True},
        "output": {"dir": str(out_dir)},
    })
    run(recipe)


def _evaluate(model_dir: Path, data_dir: Path, retain_reference, args, out_dir: Path) -> dict:
    from negalign.evaluation.tofu import evaluate_tofu, write_eval
    from negalign.models import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer({"name_or_path": str(model_dir), "dtype": "float32"})
    res = evaluate_tofu(model, tok, str(data_dir), FORGET_SPLIT, retain_reference, max_items=args.eval_items,
                        max_new_tokens=args.max_new_tokens, progress=False)
    write_eval(out_dir, res, model=str(model_dir))
    return res["summary"]


def _curve(run_dir: Path) -> list[dict]:
    points = []
    for p in (run_dir / "tofu_eval").glob("step-*/results.json"):
        data = json.loads(p.read_text())
        points.append({"step": data.get("step"), **data["metrics"]})
    return sorted(points, key=lambda d: d["step"])


def _plot(path: Path, summaries: dict, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, pts in curves.items():
        mu = [p["model_utility"] for p in pts]
        fq = [max(p["forget_quality"], 1e-30) for p in pts]
        ax.plot(mu, fq, marker="o", ms=3, label=LABELS[name])
        ax.annotate(str(pts[-1]["step"]), (mu[-1], fq[-1]), fontsize=7)
    for name, marker in (("finetuned", "*"), ("retain", "s")):
        s = summaries[name]
        ax.scatter([s["model_utility"]], [max(s["forget_quality"], 1e-30)], marker=marker, s=90, c="k",
                   label=LABELS[name], zorder=5)
    ax.set_yscale("log")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value, log)")
    ax.set_title("Miniature TOFU forget01: forget quality vs model utility", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}")


def parse_methods(text: str) -> list[str]:
    """``--methods`` as a list, every name one of ``METHODS`` (else a one-line RecipeError)."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        from negalign.config import RecipeError

        raise RecipeError(f"unknown quickstart method(s) {unknown}; choose from {', '.join(METHODS)}")
    return methods


def seed_means(per_seed: dict, seeds: list[int], methods: list[str]) -> dict:
    """Each method's numbers averaged over the seeds (one seed: its values; a value that is not a number in every
    seed: the first seed's)."""
    means = {}
    for m in methods:
        rows = [per_seed[s][m] for s in seeds]
        means[m] = {k: (sum(r[k] for r in rows) / len(rows) if all(isinstance(r.get(k), (int, float)) for r in rows)
                        else rows[0].get(k)) for k in rows[0]}
    return means


def report(out: Path, summaries: dict, order: list[str], keys, per_seed: dict, seeds: list[int], items: dict,
           note: str | None = None) -> dict:
    """Print the table of ``summaries`` (rows ``order``, columns ``keys``), the claim verdicts and each method's
    forget quality per seed; write them to ``out/table.md``; return ``table``, ``claims``, ``claims_table`` and
    ``forget_quality_per_seed``."""
    from negalign.evaluation.claims import claims_table
    from negalign.quickstarts.tofu_claims import FQ_THRESHOLD, npo_tofu_claims

    methods = [n for n in order if n in per_seed[seeds[0]]]
    header = f"{'model':<11}" + "".join(f"{k:>20}" for k in keys)
    lines = [header, "-" * len(header)]
    lines += [f"{LABELS.get(n, n):<11}" + "".join(f"{_fmt(summaries[n].get(k)):>20}" for k in keys) for n in order]
    if note:
        lines.append(note)
    table = "\n".join(lines)
    print(table)
    fq_per_seed = {m: [per_seed[s][m]["forget_quality"] for s in seeds] for m in methods}
    fq_lines = [f"forget quality per seed {seeds} (≥ {FQ_THRESHOLD:g} means the KS test does not tell the model "
                f"from the retain model): fine-tuned {_fmt(summaries['finetuned']['forget_quality'])}"]
    fq_lines += [f"  {LABELS[m]}: " + ", ".join(_fmt(v) for v in fq_per_seed[m]) for m in methods]
    claims = npo_tofu_claims(items, seeds)
    verdicts = claims_table(claims)
    print(verdicts)
    print("\n".join(fq_lines))
    (out / "table.md").write_text(
        "| model | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
        + "".join(f"| {LABELS.get(n, n)} | " + " | ".join(_fmt(summaries[n].get(k)) for k in keys) + " |\n" for n in order)
        + ("" if len(seeds) == 1 else f"\nMethods: means over unlearning seeds {seeds}.\n")
        + "\n" + verdicts + "\n\n" + "\n".join(fq_lines) + "\n")
    return {"table": table, "claims": claims, "claims_table": verdicts, "forget_quality_per_seed": fq_per_seed}


def main(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with torch_threads(args.threads or (1 if (os.cpu_count() or 1) <= 4 else None)):
        return _main(args)


def _main(args) -> int:
    from negalign.quickstarts.tofu_claims import load_items
    from negalign.results import write_results

    t0 = time.time()
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    methods = parse_methods(args.methods)
    data_dir, what = build_mini_tofu(out, args.data, args.retain_authors, args.synthetic, args.knowledge_items)
    print(f"[npo-tofu] data: {what}", flush=True)
    timings = {}

    kit = {"kit": {"dir": str(out / "kit"), "arch": "qwen2", "size": args.size, "vocab_size": 2048, "seed": args.seed}}
    t = time.time()
    _sft(out / "finetuned", kit, data_dir, "full", args)
    timings["finetune_s"] = time.time() - t
    print(f"[npo-tofu] fine-tuned model trained in {timings['finetune_s']:.0f}s", flush=True)
    t = time.time()
    _sft(out / "retain", {"name_or_path": str(out / "kit")}, data_dir, "retain99", args)
    timings["retain_s"] = time.time() - t
    print(f"[npo-tofu] retain model trained in {timings['retain_s']:.0f}s", flush=True)

    summaries, curves = {}, {}
    t = time.time()
    summaries["retain"] = _evaluate(out / "retain", data_dir, None, args, out / "retain" / "eval")
    retain_eval = out / "retain" / "eval" / "results.json"
    # the retain model against its own saved truth ratios: forget quality 1 by construction (a sanity anchor)
    summaries["retain"]["forget_quality"] = 1.0
    summaries["finetuned"] = _evaluate(out / "finetuned", data_dir, retain_eval, args, out / "finetuned" / "eval")
    timings["eval_s"] = time.time() - t
    print(f"[npo-tofu] fine-tuned: forget quality {_fmt(summaries['finetuned']['forget_quality'])}, "
          f"model utility {_fmt(summaries['finetuned']['model_utility'])}", flush=True)

    seeds = [args.seed + i for i in range(max(1, args.seeds))]
    per_seed: dict[int, dict] = {}
    evals = {"finetuned": load_items(out / "finetuned" / "eval" / "results.json"),
             "retain": load_items(retain_eval)}
    for s in seeds:
        per_seed[s] = {}
        root = out if s == seeds[0] else out / f"seed{s}"
        for m in methods:
            t = time.time()
            _unlearn(m, root / m, out / "finetuned", data_dir, retain_eval, args, seed=s)
            curve = [{"step": 0, **summaries["finetuned"]}] + _curve(root / m)
            if s == seeds[0]:
                curves[m] = curve
            per_seed[s][m] = dict(curve[-1])
            evals.setdefault(m, []).append(load_items(root / m / "tofu_eval" / f"step-{curve[-1]['step']}" /
                                                      "results.json"))
            tag = m if s == seeds[0] else f"{m}_seed{s}"
            timings[f"{tag}_s"] = time.time() - t
            print(f"[npo-tofu] {LABELS[m]} (seed {s}): {args.unlearn_steps} steps in {timings[tag + '_s']:.0f}s, "
                  f"forget quality {_fmt(per_seed[s][m]['forget_quality'])}, model utility "
                  f"{_fmt(per_seed[s][m]['model_utility'])}", flush=True)
    summaries.update(seed_means(per_seed, seeds, methods))

    png = out / "fq_vs_mu.png"
    _plot(png, summaries, curves)
    keys = ("forget_quality", "model_utility", "forget_rouge", "forget_prob", "forget_truth_ratio", "retain_rouge")
    order = ["finetuned", "retain", *methods]
    note = None if len(seeds) == 1 else (f"(methods: means over unlearning seeds {seeds}; fine-tuned and retain models "
                                         f"shared; curves and plot: seed {seeds[0]})")
    rep = report(out, summaries, order, keys, per_seed, seeds, evals, note)
    timings["total_s"] = time.time() - t0
    write_results(
        out,
        {"methods": {n: {k: summaries[n].get(k) for k in (*keys, "retain_prob", "retain_truth_ratio",
                                                           "real_authors_rouge", "world_facts_rouge")} for n in order}},
        recipe=None,
        quickstart="npo-tofu",
        methods={n: summaries[n] for n in order},
        curves=curves,
        claims=rep["claims"],
        seeds=seeds,
        forget_quality_per_seed=rep["forget_quality_per_seed"],
        per_seed={str(s): {"methods": per_seed[s]} for s in seeds},
        data=what,
        settings={k: v for k, v in vars(args).items() if k not in ("func",)},
        timings_s=timings,
        table=rep["table"],
        claims_table=rep["claims_table"],
        plot=str(png),
    )
    print(f"[npo-tofu] wrote {out / 'results.json'}, {out / 'table.md'} and {png} in {timings['total_s']:.0f}s")
    return 0
