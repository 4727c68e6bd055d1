"""``negalign eval NAME ...``: each evaluation lives in its own module with add_arguments(parser) and main(args)."""

from __future__ import annotations

EVALS = {
    "tofu": ("negalign.evaluation.tofu", "TOFU unlearning metrics: forget quality, model utility, ROUGE, truth ratio"),
    "passk": ("negalign.evaluation.passk", "pass@k of one or more models on a verifiable task, with a plot"),
    "verifier": ("negalign.evaluation.verifier", "False-negative rate of a verifier on gold solutions"),
}


def add_arguments(parser) -> None:
    from negalign.cli import add_lazy_subcommands

    add_lazy_subcommands(parser, "eval_name", EVALS)


def main(args) -> int:
    from negalign.cli import run_lazy

    return run_lazy(EVALS, args.eval_name, args)
