"""The ``negalign`` command (also ``python -m negalign``, so ``accelerate launch -m negalign ...`` works).

Each command lives in its own module with ``add_arguments(parser)`` and ``main(args) -> int``; only the module of
the command being run is imported, so ``negalign --help`` is fast and one broken method cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "train": ("negalign.train", "Train a recipe: negalign train RECIPE.yaml [key=value ...]"),
    "eval": ("negalign.evaluation.cli", "Evaluate: tofu (unlearning metrics), passk, verifier"),
    "generate": ("negalign.generation.cli", "Offline rollouts from a static policy (vLLM or HF generate), resumable"),
    "push": ("negalign.hub", "Upload a trained model folder to the Hugging Face Hub with a model card"),
    "quickstart": ("negalign.quickstarts", "Run an offline miniature reproduction: negalign quickstart NAME"),
    "bench": ("negalign.benchmarks", "Run a benchmark side by side with its baseline: negalign bench NAME"),
    "models": ("negalign.offline_models", "Real pretrained models by name, offline (offline:...): list, fetch"),
    "recipes": ("negalign.shipped", "List the recipes and accelerate configs installed with negalign"),
    "accelerate-config": ("negalign.accelerate_config", "Print the path of a shipped accelerate config (zero3, ...)"),
}


_ARGV: list[str] = sys.argv[1:]  # the arguments main() is parsing (read by add_lazy_subcommands)


def add_lazy_subcommands(parser: argparse.ArgumentParser, dest: str, table: dict[str, tuple[str, str]]) -> None:
    """Sub-commands ``NAME -> (module, help)`` under ``parser``. Only the chosen one's module is imported, to add its
    arguments, so listing them is fast and one broken module cannot break the others."""
    sub = parser.add_subparsers(dest=dest, metavar="NAME", required=True)
    chosen = next((a for a in _ARGV if a in table), None)
    for name, (module, help_text) in table.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)


def run_lazy(table: dict[str, tuple[str, str]], name: str, args) -> int:
    return importlib.import_module(table[name][0]).main(args)


def _quiet_defaults() -> None:
    # No network on many research clusters and on CI: never wait on telemetry.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRL_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="negalign",
        description="negalign: LLM post-training that learns from negative signal (unlearning, D2O, NSR, NFT, MADPO, per-step).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_defaults()
    global _ARGV
    argv = list(sys.argv[1:] if argv is None else argv)
    _ARGV = argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS and hasattr(importlib.import_module(COMMANDS[command][0]), "translate_argv"):
        argv = importlib.import_module(COMMANDS[command][0]).translate_argv(argv)  # TRL-style --key value (train)
        _ARGV = argv
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    from negalign.config import RecipeError
    from negalign.data import DataError
    from negalign.generation import GenerationError

    try:
        return int(module.main(args) or 0)
    except (RecipeError, DataError, GenerationError) as e:
        print(f"negalign {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # the non-finite guard (negalign.trainers.guard): nothing saved after it
        print(f"negalign {args.command}: error: {e}", file=sys.stderr)
        return 3
    except BrokenPipeError:  # `negalign recipes | head`: the reader left; say nothing, as POSIX tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141  # 128 + SIGPIPE, a shell's status for a command killed by a closed pipe
