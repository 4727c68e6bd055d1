"""``negalign bench NAME --output-dir DIR``: each benchmark runs the measured path and its baseline side by side in
one process and writes ``results.json`` with a ``ratios`` object. Benchmarks are not tests: they assert nothing."""

from __future__ import annotations

BENCHES = {
    "step-cost": ("negalign.benchmarks.step_cost", "NPO+RT step (cached ref, fused forward) vs SFT and vs per-step reference"),
    "logprob-memory": ("negalign.benchmarks.logprob_memory", "Peak memory of chunked log-probs vs full logits"),
    "rl-step": ("negalign.benchmarks.rl_step", "NSR and NFT steps vs TRL's GRPO step on the same batch"),
    "rollout": ("negalign.benchmarks.rollout", "Tokens/s of HF generate vs the vLLM engine"),
}


def add_arguments(parser) -> None:
    from negalign.cli import add_lazy_subcommands

    add_lazy_subcommands(parser, "bench", BENCHES)


def main(args) -> int:
    from negalign.cli import run_lazy

    return run_lazy(BENCHES, args.bench, args)
