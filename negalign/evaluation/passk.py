"""``negalign eval passk``: n samples per problem, the unbiased pass@k for k = 1, 2, 4, … n, a plot, results.json.

    negalign eval passk --model base=runs/sft --model nsr=runs/nsr --data arith --split test --n 64 \\
        --max-new-tokens 8 --output-dir runs/passk

Sampling goes through ``negalign.generation.generate`` (vLLM when available on a GPU, HF ``generate`` otherwise),
batched with a progress bar; each completion is judged by the task's verifier (``negalign.rewards``). pass@k is the
unbiased estimator ``1 - C(n-c, k)/C(n, k)`` averaged over problems (``negalign.evaluation.pass_at_k``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from negalign.evaluation import pass_at_k


def k_values(n: int) -> list[int]:
    """1, 2, 4, … up to n, plus n itself when n is not a power of two."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def pass_at_k_curve(correct_counts: list[int], n: int, ks: list[int] | None = None) -> dict[str, float]:
    """Mean unbiased pass@k over problems, ``{"1": …, "2": …}``, from each problem's number of correct samples."""
    ks = ks or k_values(n)
    if not correct_counts:
        raise ValueError("no problems to score")
    return {str(k): sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in ks}


def prompt_texts(dataset, tokenizer) -> list[str]:
    """Prompt strings for generation: chat message lists go through the tokenizer's chat template."""
    out = []
    for p in dataset["prompt"]:
        if isinstance(p, list):
            out.append(tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True))
        else:
            out.append(p)
    return out


def evaluate_model(
    model_path: str,
    dataset,
    task: str,
    n: int,
    max_new_tokens: int,
    temperature: float = 0.6,
    top_p: float = 0.95,
    batch_size: int = 16,
    seed: int = 0,
    backend: str = "auto",
    samples_path: str | None = None,
    progress: bool = True,
) -> dict:
    """Sample ``n`` completions per problem of ``dataset`` (``prompt`` + ``answer``) and score them.

    Returns ``{"pass_at_k": {...}, "correct_counts": [...], "n": n, "status_counts": {...}}``."""
    from transformers import AutoTokenizer

    from negalign.generation import generate
    from negalign.rewards import VERIFIERS

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = prompt_texts(dataset, tokenizer)
    rows = generate(model_path, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                    seed=seed, batch_size=batch_size, backend=backend, output_path=samples_path, tokenizer=tokenizer,
                    progress=progress)
    verify = VERIFIERS[task]
    counts, statuses = [], {}
    for row, gold in zip(rows, dataset["answer"], strict=True):
        c = 0
        for completion in row["completions"]:
            v = verify(completion, gold)
            statuses[v.status] = statuses.get(v.status, 0) + 1
            c += v.status == "correct"
        counts.append(c)
    return {"pass_at_k": pass_at_k_curve(counts, n), "correct_counts": counts, "n": n, "status_counts": statuses}


def plot_curves(curves: dict[str, dict[str, float]], path, title: str = "pass@k") -> str:
    """One chart with a pass@k curve per model (log2 k axis). ``curves``: ``{name: {"1": p, "2": p, …}}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ks = sorted(int(k) for k in curve)
        ax.plot(ks, [curve[str(k)] for k in ks], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def format_table(curves: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per model, one column per k."""
    ks = sorted({int(k) for c in curves.values() for k in c})
    lines = ["| model | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for name, curve in curves.items():
        lines.append(f"| {name} | " + " | ".join(f"{curve[str(k)]:.3f}" if str(k) in curve else "" for k in ks) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                        help="A model folder or Hub id, optionally named (base=runs/sft). Repeat for several models.")
    parser.add_argument("--data", required=True, help="Data loader name: arith, gsm8k or math (negalign.data).")
    parser.add_argument("--data-path", default=None, help="Loader path (../shared/data/gsm8k, a MATH parquet folder).")
    parser.add_argument("--split", default="test", help="Split to evaluate (default test).")
    parser.add_argument("--max-samples", type=int, default=None, help="Evaluate the first N problems only.")
    parser.add_argument("--n", type=int, default=64, help="Samples per problem (k goes 1, 2, 4, … n).")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.6,
                        help="Sampling temperature (default 0.6, the RLVR-Decomposed evaluation's).")
    parser.add_argument("--top-p", type=float, default=0.95, help="Nucleus top-p (default 0.95, the reference's).")
    parser.add_argument("--batch-size", type=int, default=16, help="Prompts per generation batch (× n sequences).")
    parser.add_argument("--backend", default="auto", choices=("auto", "hf", "vllm"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True, help="Writes results.json, passk.png and samples_<name>.jsonl.")


def load_eval_data(name: str, path: str | None, split: str, max_samples: int | None, tokenizer=None):
    """The loader's dataset and task; with ``tokenizer``, prompts follow that model's chat template (MATH problems go
    in raw when the template already asks for ``\\boxed{}``)."""
    from negalign.data import LOADERS, DataError

    if name not in LOADERS or not hasattr(LOADERS[name], "task"):
        raise DataError(f"--data must name a verifiable loader (arith, gsm8k, math), got {name!r}")
    kwargs = {"split": split, "max_samples": max_samples}
    if path is not None:
        kwargs["path"] = path
    loader = LOADERS[name](**kwargs)
    return loader.load(tokenizer), loader.task


def main(args) -> int:
    from negalign.results import write_results

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset, task = load_eval_data(args.data, args.data_path, args.split, args.max_samples)
    models = {}
    from negalign.models import resolve_model
    from negalign.offline_models import PREFIX

    for spec in args.model:
        name, _, path = spec.rpartition("=")
        models[name or Path(path).name.removeprefix(PREFIX)] = resolve_model(path)  # offline: name -> cached folder
    results = {}
    for name, path in models.items():
        if args.data == "math":  # the prompt text depends on the model's chat template (no doubled instruction)
            from transformers import AutoTokenizer

            dataset, task = load_eval_data(args.data, args.data_path, args.split, args.max_samples,
                                           AutoTokenizer.from_pretrained(path))
        print(f"[passk] {name}: {len(dataset)} problems x {args.n} samples")
        results[name] = evaluate_model(path, dataset, task, args.n, args.max_new_tokens, args.temperature, args.top_p,
                                       args.batch_size, args.seed, args.backend, str(out / f"samples_{name}.jsonl"))
        results[name]["path"] = path
    curves = {name: r["pass_at_k"] for name, r in results.items()}
    plot = plot_curves(curves, out / "passk.png", title=f"pass@k on {args.data} ({args.split})")
    print(format_table(curves))
    write_results(out, {"models": results}, recipe=None, models=results, task=task, data=args.data, split=args.split,
                  n=args.n, plot=plot)
    print(f"wrote {out / 'results.json'} and {plot}")
    return 0
