"""``negalign train RECIPE.yaml [key=value ...]``: resolve a recipe and run its method's trainer."""

from __future__ import annotations

import argparse

from negalign.config import METHODS, describe_fields, load_recipe, method_module
from negalign.distributed import end_processes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("recipe", nargs="?", help="Path to a recipe YAML (see recipes/).")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="Overrides: section.key=value (training.learning_rate=1e-5) or a bare key one section accepts (max_steps=4).",
    )
    parser.add_argument("--dry-run", action="store_true", help="Validate the recipe, build the config, print it, stop.")
    parser.add_argument("--show-method", metavar="METHOD", help="Print METHOD's hyper-parameters with their help, stop.")
    parser.epilog = "Methods: " + ", ".join(METHODS)


def run(recipe) -> dict:
    """Train ``recipe`` (a ``negalign.config.Recipe``) and return the metrics; results.json is written by the trainer."""
    return recipe.module().train(recipe)


def main(args) -> int:
    if args.show_method:
        mod = method_module(args.show_method)
        print(describe_fields(mod.CONFIG_CLASS, getattr(mod, "METHOD_DEFAULTS", {}).get(args.show_method)))
        return 0
    if not args.recipe:
        from negalign.config import RecipeError

        raise RecipeError("train needs a recipe: negalign train RECIPE.yaml [key=value ...]")
    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        import yaml

        config = recipe.build_config()
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        print(f"# resolved into {type(config).__name__} (output_dir={config.output_dir})")
        return 0
    metrics = run(recipe)
    final = {k: v for k, v in metrics.items() if k != "log_history" and not isinstance(v, (list, dict))}
    print(final)
    end_processes()
    return 0
