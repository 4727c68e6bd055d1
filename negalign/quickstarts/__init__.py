"""``negalign quickstart NAME --output-dir DIR``: offline miniature reproductions of each method's claim.

Each quickstart module composes the public API as a user would and defines ``add_arguments(parser)`` and
``main(args)``; it prints a table and writes ``DIR/results.json`` (and a plot)."""

from __future__ import annotations

import contextlib

QUICKSTARTS = {
    "npo-tofu": ("negalign.quickstarts.npo_tofu", "NPO-family unlearning on TOFU with a kit model (<= 15 min CPU)"),
    "nsr-arith": ("negalign.quickstarts.nsr_arith", "PSR / NSR / W-REINFORCE / GRPO / NFT on synthetic arithmetic, pass@k"),
    "d2o-toy": ("negalign.quickstarts.d2o_toy", "D2O vs GA / NPO / DPO on a miniature harm task with a programmatic judge"),
    "madpo-toy": ("negalign.quickstarts.madpo_toy", "MADPO vs DPO / IPO under three preference-noise levels"),
    "perstep-arith": ("negalign.quickstarts.perstep_arith", "Per-step negatives vs SFT / RFT / whole-pair DPO"),
    "tofu-smollm2": ("negalign.quickstarts.tofu_smollm2",
                     "TOFU forget01 on the real SmolLM2-135M-Instruct: fine-tune, retain model, 5 unlearning methods"),
}


def add_arguments(parser) -> None:
    from negalign.cli import add_lazy_subcommands

    add_lazy_subcommands(parser, "quickstart", QUICKSTARTS)


def main(args) -> int:
    from negalign.cli import run_lazy

    return run_lazy(QUICKSTARTS, args.quickstart, args)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's CPU thread count set to ``n`` for the block (None or 0: left as it is), then restored. On a small shared
    CPU one thread is as fast for kit models and far faster under load (OpenMP threads spin when oversubscribed)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
