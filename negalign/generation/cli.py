"""``negalign generate``: K samples per prompt from a static policy into a JSONL file (resumable, seeded).

Under ``accelerate launch`` / ``torchrun`` the processes share the batches and the main process merges their files."""

from __future__ import annotations

import argparse

from negalign.data import format_prompt, read_records
from negalign.data.templates import TEMPLATE_NAMES, generation_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Model folder or Hub id (the static policy, e.g. the reference).")
    parser.add_argument("--data", required=True, help="Prompts: a .json/.jsonl/.parquet file, folder (with --split) or Hub id.")
    parser.add_argument("--split", default=None, help="Split / file stem when --data is a folder or Hub id.")
    parser.add_argument("--prompt-field", default="prompt", help="Column holding the prompt text (default: prompt).")
    parser.add_argument("--chat", action="store_true", help="Wrap each prompt in the model's chat template.")
    parser.add_argument("--template", default=None, choices=TEMPLATE_NAMES,
                        help="Wrap each prompt in this prompt template (negalign.data.templates), the same one as in "
                             "unlearning and `negalign eval tofu`, e.g. open_unlearning_llama3. --chat is --template chat.")
    parser.add_argument("--output", required=True, help="Output JSONL; rerunning the same command resumes it.")
    parser.add_argument("--num-samples", "--n", dest="n", type=int, default=4,
                        help="Samples per prompt (K). Under torchrun use --num-samples: torchrun takes --n for its own.")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="Prompts per batch.")
    parser.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"])
    parser.add_argument("--tensor-parallel-size", type=int, default=None,
                        help="vLLM: GPUs per engine (one process; without it, one engine per launched process).")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None,
                        help="vLLM: fraction of each GPU's memory the engine may take (vLLM's default 0.9).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Start --output afresh. Without it, resuming a file written for another model, other "
                             "prompts or other sampling settings is an error naming the field.")
    parser.add_argument("--max-prompts", type=int, default=None, help="Only the first N prompts.")


def main(args) -> int:
    from negalign.data import DataError
    from negalign.generation import generate_distributed
    from negalign.models import resolve_model

    args.model = resolve_model(args.model)  # an offline: name becomes its cached folder (fetched once)

    rows = read_records(args.data, args.split)
    if not rows:
        raise DataError(f"no prompts in {args.data}")
    if args.prompt_field not in rows[0]:
        raise DataError(f"{args.data} has no column {args.prompt_field!r}; it has {sorted(rows[0])}")
    rows = rows[: args.max_prompts] if args.max_prompts else rows
    tokenizer = None
    if args.chat or args.template:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.template:
        prompts = [generation_text(tokenizer, args.template, r[args.prompt_field]) for r in rows]
    else:
        prompts = [format_prompt(r[args.prompt_field], tokenizer) if args.chat else r[args.prompt_field] for r in rows]
    generate_distributed(args.model, prompts, n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
             top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, backend=args.backend,
             output_path=args.output, tokenizer=tokenizer, overwrite=args.overwrite,  # shards itself under accelerate launch / torchrun
             engine_kwargs={k: v for k, v in (("tensor_parallel_size", args.tensor_parallel_size),
                                              ("gpu_memory_utilization", args.gpu_memory_utilization)) if v is not None})
    print(f"wrote {len(prompts)} prompts x {args.n} samples to {args.output}")
    from negalign.distributed import end_processes

    end_processes()
    return 0
