"""``negalign quickstart tofu-smollm2 --output-dir DIR``: the TOFU reproduction on a real pretrained model.

The model is ``offline:smollm2-135m-instruct`` (SmolLM2-135M-Instruct, ``negalign.offline_models``), with its own
tokenizer and ChatML template (data ``template: auto``). What it does, with the public API only:

1. writes a TOFU subset folder under ``DIR/data``: the ``forget01`` authors (2 authors, 40 QA) and the first
   ``--retain-authors`` retain authors of ``retain_perturbed`` (20 QA each). The fine-tuning data is forget + retain
   authors only; real_authors and world_facts are *not* trained on: they measure what SmolLM2 knew before, which is
   what model utility is for. Evaluation files are capped here (``--forget-eval-items``, ``--eval-items``; retain
   items are taken evenly across the retain authors), so every evaluation scores the same items;
2. fine-tunes SmolLM2 on forget + retain (the *fine-tuned* model) and on retain alone (the *retain* model) with the
   ``sft`` method, under open-unlearning's fine-tuning settings scaled to the subset (``--sft-*``). Both models and
   the evaluations of base / fine-tuned / retain are cached (``--cache-dir``), each folder keyed by a hash of what
   made it (model record, data file hashes, settings) and holding that key in ``negalign_cache.json``: a folder is
   reused only when its stored key equals the one asked for, so a re-run pays for the unlearning part only;
3. unlearns forget01 from the fine-tuned model with GA, GradDiff, NPO, NPO+RT and SimNPO, each from its shipped
   recipe (``recipes/<method>_tofu.yaml``: learning rate, scheduler, warmup fraction, weight decay, beta / alpha /
   gamma, loss reductions as open-unlearning sets them). Scaled to the subset: the batch (``--batch-size``, no
   accumulation), the length (``--unlearn-epochs`` passes over the 40 forget QA, as ``max_steps``), the learning rate
   (``--unlearn-lr``, default the fine-tuning one: open-unlearning uses one rate for both), float32 weights
   (``--bf16`` for the recipes' autocast); the prompt template is SmolLM2's own (open-unlearning's Llama-3 one does not apply). TOFU is
   evaluated during training (``--eval-every``) for the forget-quality-vs-utility curve;
4. prints the table (base, fine-tuned, retain and each method; means over ``--seeds``), writes ``results.json``
   (``methods.<name>.forget_quality / model_utility / forget_rouge / forget_truth_ratio``), ``table.md``,
   ``fq_vs_mu.png`` and the claims (``negalign.quickstarts.tofu_claims``: GA utility < fine-tuned, NPO+RT utility
   ≥ 0.8 × fine-tuned, NPO+RT forget quality ≥ 0.05, ...), each decided by a 95% interval over items and seeds.

The evaluation is the full TOFU protocol (``negalign.evaluation.tofu``: answer + EOS scored, paraphrased and five
perturbed answers, greedy generations); the caps are the number of items and ``--max-new-tokens`` (TOFU: 200; the
answers of the subset are 32 tokens on average, 69 at most, so 64 cuts almost none). ``--smoke`` is a tiny
configuration that only checks the pipeline (minutes; numbers meaningless). docs/unlearning.md has the design, the
measured costs and the full command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

from negalign.quickstarts import torch_threads
from negalign.quickstarts.npo_tofu import LABELS as _LABELS
from negalign.quickstarts.npo_tofu import (METHODS, _curve, _fmt, _plot, _read, _write, default_data, parse_methods,
                                           report, seed_means)

MODEL = "offline:smollm2-135m-instruct"
FORGET_SPLIT = "forget01"
RETAIN_SPLIT = "retain_authors"  # the subset's retain training file (retain_authors.json)
LABELS = {"base": "base", **_LABELS}
RECIPES = {"ga": "ga_tofu", "grad_diff": "grad_diff_tofu", "npo": "npo_rt_tofu", "npo_rt": "npo_rt_tofu",
           "simnpo": "simnpo_tofu"}  # npo: npo_rt's recipe with method.name npo (the forget term alone)
WITH_RETAIN_TERM = {"grad_diff", "npo_rt", "simnpo"}  # the methods whose step also runs a retain batch
CACHE_FORMAT = 1  # bump when what a cached folder holds changes
EVAL_FORMAT = 2  # bump when the evaluation's numbers change (2: shared-prompt scoring, one generation pass)
KEYS = ("forget_quality", "model_utility", "forget_rouge", "forget_truth_ratio", "forget_prob", "retain_rouge")
# the --smoke configuration: every stage runs, on a few items with short generations (numbers meaningless)
SMOKE = dict(retain_authors=1, forget_eval_items=4, eval_items=3, max_new_tokens=8, sft_epochs=1, sft_max_samples=4,
             sft_batch_size=4, unlearn_epochs=1, batch_size=2, eval_every=2, forget_train_items=4)


def add_arguments(parser) -> None:
    parser.add_argument("--output-dir", required=True, help="Folder for runs, evaluations, results.json and the plot.")
    parser.add_argument("--data", default=default_data(), help="TOFU folder (default ../shared/data/tofu).")
    parser.add_argument("--model", default=MODEL, help="Pretrained model (default the offline SmolLM2 name).")
    parser.add_argument("--cache-dir", default=None,
                        help="Cache of the fine-tuned / retain models and their evaluations (default "
                             "$NEGALIGN_CACHE/quickstarts/tofu-smollm2, i.e. ~/.cache/negalign/...).")
    parser.add_argument("--retain-authors", type=int, default=4, help="Retain authors (20 QA each) in the subset.")
    parser.add_argument("--forget-eval-items", type=int, default=40, help="Forget QA evaluated (forget01 has 40).")
    parser.add_argument("--eval-items", type=int, default=20, help="QA evaluated per utility split (retain, "
                        "real_authors, world_facts).")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="Greedy generation cap (TOFU: 200).")
    parser.add_argument("--sft-epochs", type=int, default=5,
                        help="Fine-tuning epochs (open-unlearning finetune: 5; 3 left the fine-tuned model's forget "
                             "quality at 0.054, no headroom below 0.05).")
    parser.add_argument("--sft-lr", type=float, default=1e-4,
                        help="Fine-tuning learning rate (open-unlearning: 1e-5 for Llama-3.2-1B on all 4,000 QA at "
                             "batch 32, 5 epochs; here a 135M model, 120 QA at batch 8, 5 epochs: 75 steps).")
    parser.add_argument("--sft-batch-size", type=int, default=8)
    parser.add_argument("--sft-max-samples", type=int, default=None, help="Keep the first N fine-tuning QA (smoke).")
    parser.add_argument("--unlearn-epochs", type=int, default=2,
                        help="Passes over the forget QA of every unlearning run (open-unlearning: 10 at batch 32).")
    parser.add_argument("--unlearn-lr", type=float, default=None,
                        help="Unlearning learning rate (default: the fine-tuning one, --sft-lr; open-unlearning uses "
                             "the same 1e-5 for fine-tuning and unlearning). The recipes' 1e-5 is for 10 passes at "
                             "batch 32; here 2 passes at batch 8.")
    parser.add_argument("--batch-size", type=int, default=8, help="Forget examples per unlearning step (no accumulation).")
    parser.add_argument("--forget-train-items", type=int, default=None, help="Unlearn only the first N forget QA (smoke).")
    parser.add_argument("--eval-every", type=int, default=5, help="TOFU evaluation every N unlearning steps (curve).")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=2, help="Unlearning seeds (seed, seed+1, ...), pooled in the claims; "
                        "the fine-tuned and retain models are trained once (with --seed) and shared.")
    parser.add_argument("--smoke", action="store_true",
                        help="Tiny configuration checking the pipeline: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()))
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast in training (the recipes' bf16: true). Off by default: on a CPU without "
                             "native bf16 (AVX2 only, as here) autocast ran ~8x slower than float32.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    parser.add_argument("--jobs", type=int, default=None,
                        help="Unlearning runs at once, each in its own process with threads / jobs torch threads "
                             "(default: 2 when torch has 2 or more threads, else 1). On this 2-core CPU two 1-thread "
                             "processes did ~1.3x the work of one 2-thread process (evaluation scales poorly across "
                             "threads).")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_subset(out: Path, data: str, retain_authors: int, forget_eval_items: int, eval_items: int,
                 forget_train_items: int | None = None) -> tuple[Path, str]:
    """Write the TOFU subset folder (TOFU file names) and return (folder, description)."""
    src = Path(data)
    if not (src / "forget01_perturbed.json").is_file():
        from negalign.data import DataError

        raise DataError(f"no TOFU folder at {src} (forget01_perturbed.json missing); give --data")
    folder = out / "data" / "tofu-subset"
    forget = _read(src / "forget01_perturbed.json")
    retain = _read(src / "retain_perturbed.json")[: 20 * retain_authors]
    qa = lambda rows: [{"question": r["question"], "answer": r["answer"]} for r in rows]  # noqa: E731
    step = max(1, len(retain) // max(1, eval_items))
    _write(folder / "forget01.json", qa(forget[:forget_train_items] if forget_train_items else forget))
    _write(folder / "forget01_perturbed.json", forget[:forget_eval_items])
    _write(folder / f"{RETAIN_SPLIT}.json", qa(retain))
    _write(folder / "retain_perturbed.json", retain[::step][:eval_items])  # spread over the retain authors
    for kind in ("real_authors", "world_facts"):
        _write(folder / f"{kind}_perturbed.json", _read(src / f"{kind}_perturbed.json")[:eval_items])
    _write(folder / "full.json", qa(retain) + qa(forget))
    what = (f"TOFU subset of {src}: forget01 (2 authors, {len(forget)} QA) + {retain_authors} retain authors "
            f"({len(retain)} QA) fine-tuned on; evaluated on {min(forget_eval_items, len(forget))} forget, "
            f"{len(_read(folder / 'retain_perturbed.json'))} retain and {eval_items} real_authors / world_facts QA each")
    return folder, what


def cache_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from negalign.offline_models import cache_root as models_root

    return models_root() / "quickstarts" / "tofu-smollm2"  # beside models/, inside $NEGALIGN_CACHE


def cached(root: Path, kind: str, key: dict, build) -> tuple[Path, bool]:
    """The folder ``root/<kind>-<hash(key)>``, made by ``build(tmp_folder)`` unless it holds exactly ``key``."""
    folder = root / f"{kind}-{_digest(key)}"
    record = folder / "negalign_cache.json"
    if record.is_file() and json.loads(record.read_text()).get("key") == json.loads(json.dumps(key, default=str)):
        return folder, True
    tmp = root / f".{folder.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    (tmp / "negalign_cache.json").write_text(json.dumps({"kind": kind, "key": key}, indent=1, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder, False


def _sft(model_dir: str, data_dir: Path, split: str, args, out_dir: Path) -> None:
    from negalign.config import load_recipe
    from negalign.train import run

    run(load_recipe(data={
        "model": {"name_or_path": model_dir, "dtype": "float32"},
        "data": {"name": "qa", "path": str(data_dir), "split": split, "max_samples": args.sft_max_samples},
        "method": {"name": "sft"},
        # open-unlearning configs/trainer/finetune.yaml + experiment/finetune/tofu/default.yaml: linear schedule,
        # warmup one epoch of five (0.2), weight decay 0.01, AdamW
        "training": {"learning_rate": args.sft_lr, "num_train_epochs": args.sft_epochs,
                     "per_device_train_batch_size": args.sft_batch_size, "max_length": 512, "bf16": args.bf16,
                     "lr_scheduler_type": "linear", "warmup_steps": 0.2, "weight_decay": 0.01, "logging_steps": 5,
                     "save_strategy": "no", "seed": args.seed, "disable_tqdm": True, "gradient_checkpointing": False},
        "output": {"dir": str(out_dir)},
    }), overwrite=True)


def _evaluate(model_dir: str, data_dir: Path, retain_eval, args) -> dict:
    from negalign.evaluation.tofu import evaluate_tofu
    from negalign.models import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer({"name_or_path": model_dir, "dtype": "float32"})
    return evaluate_tofu(model, tok, str(data_dir), FORGET_SPLIT, retain_eval, max_new_tokens=args.max_new_tokens,
                         progress=False, template="auto")


def unlearn_lr(args) -> float:
    return args.sft_lr if args.unlearn_lr is None else args.unlearn_lr


def unlearn_steps(args, n_forget: int) -> int:
    return args.unlearn_epochs * math.ceil(n_forget / args.batch_size)


def _unlearn(method: str, out_dir: Path, finetuned: Path, data_dir: Path, retain_eval: Path, steps: int, args,
             seed: int, curve: bool = True) -> None:
    from negalign.config import load_recipe, yaml_load
    from negalign.shipped import find_recipe
    from negalign.train import run

    r = yaml_load(Path(find_recipe(RECIPES[method])).read_text())
    r["method"]["name"] = method
    if method == "npo":
        for k in ("alpha", "gamma"):  # the retain term's weights of npo_rt: NPO is the forget term alone
            r["method"].pop(k, None)
    # the curve (an evaluation every --eval-every steps) on the first seed only; later seeds are evaluated at the end
    evals = sorted({*range(args.eval_every, steps + 1, args.eval_every), steps}) if curve else [steps]
    r["model"] = {"name_or_path": str(finetuned), "dtype": "float32"}
    r["data"].update({"path": str(data_dir), "forget_split": FORGET_SPLIT, "retain_split": RETAIN_SPLIT,
                      "template": "auto", "seed": seed})
    r["method"].update({"tofu_eval_steps": evals, "tofu_eval_retain_results": str(retain_eval),
                        "tofu_eval_max_new_tokens": args.max_new_tokens})
    for k in ("save_total_limit", "num_train_epochs"):
        r["training"].pop(k, None)
    r["training"].update({"max_steps": steps, "learning_rate": unlearn_lr(args),
                          "per_device_train_batch_size": args.batch_size, "gradient_accumulation_steps": 1,
                          "bf16": args.bf16, "save_strategy": "no", "seed": seed, "disable_tqdm": True,
                          "logging_steps": max(1, args.eval_every // 2)})
    r["output"] = {"dir": str(out_dir)}
    run(load_recipe(data=r), overwrite=True)


def _job(run: tuple[str, int], ctx: dict, threads: int | None) -> float:
    """One unlearning run (``ctx``: the shared settings); returns its wall seconds. Run in a worker process."""
    m, s = run
    t = time.time()
    with torch_threads(threads):
        _unlearn(m, ctx["out"] / f"seed{s}" / m, ctx["finetuned"], ctx["data_dir"], ctx["retain_eval"], ctx["steps"],
                 ctx["args"], s, curve=s == ctx["first_seed"])
    print(f"[tofu-smollm2] {m} (seed {s}) finished in {time.time() - t:.0f}s", flush=True)
    return time.time() - t


def run_jobs(runs: list[tuple[str, int]], ctx: dict, args) -> dict:
    """Every (method, seed) unlearning run; ``--jobs`` at once in spawned processes (1: in this process, in order).
    Each run writes its own folder, so the order they finish in changes nothing read afterwards."""
    import torch

    threads = torch.get_num_threads()
    jobs = args.jobs if args.jobs else (2 if threads >= 2 else 1)
    jobs = max(1, min(jobs, len(runs)))
    if jobs == 1:
        return {r: _job(r, ctx, None) for r in runs}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = {**ctx, "args": argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "func"})}
    print(f"[tofu-smollm2] {len(runs)} unlearning runs, {jobs} at a time ({max(1, threads // jobs)} thread(s) each)",
          flush=True)
    # longest first, so the longest work is not left to one process at the end: the curve runs (more evaluations),
    # and within them the methods with a retain term (a second forward and backward every step)
    ordered = sorted(runs, key=lambda r: (r[1] != ctx["first_seed"], r[0] not in WITH_RETAIN_TERM))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {r: pool.submit(_job, r, ctx, max(1, threads // jobs)) for r in ordered}
        return {r: futures[r].result() for r in runs}


def main(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    with torch_threads(args.threads):
        return _main(args)


def _main(args) -> int:
    from negalign.evaluation.tofu import write_eval
    from negalign.offline_models import is_offline_name, resolve
    from negalign.quickstarts.tofu_claims import load_items
    from negalign.results import write_results

    t0 = time.time()
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    methods = parse_methods(args.methods)
    base = str(resolve(args.model))  # the cached folder of an offline: name (fetched once), else as given
    record = Path(base) / "negalign_offline.json"
    model_id = {"model": args.model, "record": json.loads(record.read_text()) if record.is_file() else None}
    data_dir, what = build_subset(out, args.data, args.retain_authors, args.forget_eval_items, args.eval_items,
                                  args.forget_train_items)
    print(f"[tofu-smollm2] model {args.model} ({base}); data: {what}", flush=True)
    root = cache_root(args.cache_dir)
    sft_key = {"format": CACHE_FORMAT, **model_id, **{k: getattr(args, k) for k in (
        "sft_epochs", "sft_lr", "sft_batch_size", "sft_max_samples", "seed", "bf16")}}
    timings, hits = {}, {}
    models = {"base": Path(base)}
    for name, split in (("finetuned", "full"), ("retain", RETAIN_SPLIT)):
        t = time.time()
        key = {**sft_key, "split": split, "data": _file_sha(data_dir / f"{split}.json")}
        models[name], hits[name] = cached(root, name, key, lambda tmp, s=split: _sft(base, data_dir, s, args, tmp))
        timings[f"{name}_train_s"] = time.time() - t
        print(f"[tofu-smollm2] {name} model {'from the cache' if hits[name] else 'trained'} in "
              f"{timings[f'{name}_train_s']:.0f}s: {models[name]}", flush=True)
    eval_files = {f: _file_sha(data_dir / f) for f in sorted(os.listdir(data_dir)) if f.endswith("_perturbed.json")}
    eval_key = {"format": CACHE_FORMAT, "eval_format": EVAL_FORMAT, "files": eval_files,
                "max_new_tokens": args.max_new_tokens}
    summaries, evals = {}, {}
    for name in ("retain", "finetuned", "base"):  # retain first: the others' forget quality needs its truth ratios
        t = time.time()
        ref = None if name == "retain" else evals["retain"]
        key = {**eval_key, "model": json.loads((models[name] / "negalign_cache.json").read_text())["key"]
               if name != "base" else model_id, "reference": None if ref is None else ref.parent.name}

        def build(tmp, name=name, ref=ref):
            write_eval(tmp, _evaluate(str(models[name]), data_dir, ref, args), model=str(models[name]))

        folder, hit = cached(root, f"eval-{name}", key, build)
        evals[name] = folder / "results.json"
        summaries[name] = dict(json.loads(evals[name].read_text())["metrics"])
        timings[f"{name}_eval_s"] = time.time() - t
        print(f"[tofu-smollm2] {name} evaluated{' (cache)' if hit else ''} in {timings[f'{name}_eval_s']:.0f}s: "
              f"forget quality {_fmt(summaries[name].get('forget_quality'))}, model utility "
              f"{_fmt(summaries[name]['model_utility'])}", flush=True)
    summaries["retain"]["forget_quality"] = 1.0  # against its own truth ratios: 1 by construction

    t_unlearn = time.time()
    n_forget = len(_read(data_dir / f"{FORGET_SPLIT}.json"))
    steps = unlearn_steps(args, n_forget)
    seeds = [args.seed + i for i in range(max(1, args.seeds))]
    per_seed, curves = {}, {}
    items = {"finetuned": load_items(evals["finetuned"]), "retain": load_items(evals["retain"])}
    runs = [(m, s) for s in seeds for m in methods]
    spent = run_jobs(runs, dict(finetuned=models["finetuned"], data_dir=data_dir, retain_eval=evals["retain"],
                                steps=steps, args=args, first_seed=seeds[0], out=out), args)
    for m, s in runs:
        run_dir = out / f"seed{s}" / m
        curve = [{"step": 0, **summaries["finetuned"]}] + _curve(run_dir)
        curves.setdefault(m, curve)
        per_seed.setdefault(s, {})[m] = dict(curve[-1])
        items.setdefault(m, []).append(load_items(run_dir / "tofu_eval" / f"step-{curve[-1]['step']}" / "results.json"))
        timings[f"{m}_seed{s}_s"] = spent[(m, s)]
        print(f"[tofu-smollm2] {LABELS[m]} (seed {s}): {steps} steps + {len(curve) - 1} evaluations in "
              f"{spent[(m, s)]:.0f}s, forget quality {_fmt(per_seed[s][m]['forget_quality'])}, "
              f"model utility {_fmt(per_seed[s][m]['model_utility'])}", flush=True)
    timings["unlearning_part_s"] = time.time() - t_unlearn
    summaries.update(seed_means(per_seed, seeds, methods))

    png = out / "fq_vs_mu.png"
    _plot(png, summaries, curves)
    order = ["base", "finetuned", "retain", *methods]
    rep = report(out, summaries, order, KEYS, per_seed, seeds, items,
                 note=f"(methods: means over unlearning seeds {seeds}, {steps} steps each at lr "
                      f"{unlearn_lr(args):g}; curves and plot: seed {seeds[0]})")
    timings["total_s"] = time.time() - t0
    write_results(
        out, {"methods": {n: {k: summaries[n].get(k) for k in KEYS} for n in order}}, recipe=None,
        quickstart="tofu-smollm2", model=args.model, methods={n: summaries[n] for n in order}, curves=curves,
        claims=rep["claims"], seeds=seeds, forget_quality_per_seed=rep["forget_quality_per_seed"],
        per_seed={str(s): {"methods": per_seed[s]} for s in seeds}, data=what, unlearn_steps=steps,
        unlearn_lr=unlearn_lr(args),
        cache={"dir": str(root), "models": {k: str(v) for k, v in models.items()}, "hits": hits},
        settings={k: v for k, v in vars(args).items() if k != "func"}, timings_s=timings, table=rep["table"],
        claims_table=rep["claims_table"], plot=str(png), offline_model=is_offline_name(args.model))
    print(f"[tofu-smollm2] wrote {out / 'results.json'}, {out / 'table.md'} and {png} in {timings['total_s']:.0f}s")
    return 0
