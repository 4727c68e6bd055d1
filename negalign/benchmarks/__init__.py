"""``negalign bench NAME --output-dir DIR``: each benchmark runs the measured path and its baseline side by side in
one process and writes ``results.json`` with a ``ratios`` object. Benchmarks are not tests: they assert nothing."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "step-cost": ("negalign.benchmarks.step_cost", "NPO+RT step (cached ref, fused forward) vs SFT and vs per-step reference"),
    "logprob-memory": ("negalign.benchmarks.logprob_memory", "Peak memory of chunked log-probs vs full logits"),
    "rl-step": ("negalign.benchmarks.rl_step", "NSR and NFT steps vs TRL's GRPO step on the same batch"),
    "rollout": ("negalign.benchmarks.rollout", "Tokens/s of HF generate vs the vLLM engine"),
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    chosen = next((a for a in sys.argv[2:] if a in BENCHES), None)
    for name, (module, help_text) in BENCHES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)


def main(args) -> int:
    return importlib.import_module(BENCHES[args.bench][0]).main(args)
