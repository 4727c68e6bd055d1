"""``negalign eval NAME ...``: each evaluation lives in its own module with add_arguments(parser) and main(args)."""

from __future__ import annotations

import importlib

EVALS = {
    "tofu": ("negalign.evaluation.tofu", "TOFU unlearning metrics: forget quality, model utility, ROUGE, truth ratio"),
    "passk": ("negalign.evaluation.passk", "pass@k of one or more models on a verifiable task, with a plot"),
    "verifier": ("negalign.evaluation.verifier", "False-negative rate of a verifier on gold solutions"),
}


def add_arguments(parser) -> None:
    import sys

    sub = parser.add_subparsers(dest="eval_name", metavar="NAME", required=True)
    chosen = next((a for a in sys.argv[2:] if a in EVALS), None)
    for name, (module, help_text) in EVALS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)


def main(args) -> int:
    return importlib.import_module(EVALS[args.eval_name][0]).main(args)
