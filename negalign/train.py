"""``negalign train RECIPE.yaml [key=value ...]``: resolve a recipe and run its method's trainer."""

from __future__ import annotations

import argparse
import os

from negalign.config import METHODS, describe_fields, load_recipe, method_module
from negalign.distributed import end_processes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("recipe", nargs="?", help="Path to a recipe YAML, or a shipped recipe's name "
                                                   "(npo_tofu; list them with `negalign recipes`).")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="Overrides: section.key=value (training.learning_rate=1e-5) or a bare key one section accepts (max_steps=4).",
    )
    parser.add_argument("--dry-run", action="store_true", help="Validate the recipe, build the config, print it, stop.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Start afresh in an output_dir that holds another run: delete its checkpoints, "
                             "results.json and weights first (without it such an output_dir is refused).")
    parser.add_argument("--show-method", metavar="METHOD", help="Print METHOD's hyper-parameters with their help, stop.")
    parser.epilog = "Methods: " + ", ".join(METHODS)


def run(recipe, overwrite: bool = False) -> dict:
    """Train ``recipe`` (a ``negalign.config.Recipe``) and return the metrics. The output directory is checked first
    (``negalign.rundir``: another run's is refused unless ``overwrite``; a resume must continue the same recipe).
    results.json is written by the trainer, or here with ``status: failed`` and the error when the run stops."""
    from negalign.rundir import prepare_output_dir, record_failure

    prepare_output_dir(recipe, overwrite=overwrite)
    try:
        metrics = recipe.module().train(recipe)
    except BaseException as e:
        record_failure(recipe, e)
        raise
    if metrics.get("prepared"):  # prepare_only: samples and values cached, nothing trained
        from negalign.results import write_results

        if int(os.environ.get("RANK", "0")) == 0:
            write_results(recipe.output_dir, metrics, recipe=recipe.to_dict(), method=recipe.method_name,
                          status="prepared", error=None)
    return metrics


def main(args) -> int:
    if args.show_method:
        mod = method_module(args.show_method)
        from negalign.methods import get

        print(get(args.show_method).describe())
        print(describe_fields(mod.CONFIG_CLASS, getattr(mod, "METHOD_DEFAULTS", {}).get(args.show_method)))
        return 0
    if not args.recipe:
        from negalign.config import RecipeError

        raise RecipeError("train needs a recipe: negalign train RECIPE.yaml [key=value ...]")
    from negalign.shipped import find_recipe

    recipe = load_recipe(find_recipe(args.recipe), args.overrides)  # a file, or a shipped recipe's name (npo_tofu)
    if args.dry_run:
        import yaml

        config = recipe.build_config()
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        print(f"# resolved into {type(config).__name__} (output_dir={config.output_dir})")
        return 0
    metrics = run(recipe, overwrite=args.overwrite)
    final = {k: v for k, v in metrics.items() if k != "log_history" and not isinstance(v, (list, dict))}
    print(final)
    end_processes()
    return 0
