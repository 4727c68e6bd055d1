"""``negalign train RECIPE.yaml [key=value ...]``: resolve a recipe and run its method's trainer."""

from __future__ import annotations

import argparse
import os
import re

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
    parser.add_argument("--show-keys", metavar="SECTION",
                        help="List the keys of one recipe section (model, data, method, training, peft, output) with "
                             "their defaults, stop; the method (training, method) or loader (data) comes from the "
                             "recipe, or is named in its place: --show-keys training npo.")
    parser.add_argument("--config", metavar="FILE", help="The recipe, TRL's way (same as the positional RECIPE).")
    parser.add_argument("--accelerate_config", "--accelerate-config", metavar="NAME_OR_FILE",
                        help="Launch the run with `accelerate launch`, TRL's way: a shipped launch config (zero3, "
                             "zero2, multi_gpu, single_gpu; `negalign recipes` lists them) or a config file.")
    parser.add_argument("--num_processes", "--num-processes", type=int, metavar="N",
                        help="With --accelerate_config: the number of processes to launch (default: the config's).")
    parser.epilog = ("TRL-style flags are overrides too: --learning_rate 1e-5 or --learning_rate=1e-5 means "
                     "learning_rate=1e-5, a lone --flag means flag=true.\nMethods: " + ", ".join(METHODS))


OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # a key=value override, never the value of a --flag before it


def translate_argv(argv: list[str]) -> list[str]:
    """``argv`` of ``negalign train`` with TRL's ``--key value`` / ``--key=value`` / ``--flag`` (a key that is not
    one of this command's options) rewritten as the override ``key=value`` (``flag=true``), after the other arguments
    so that argparse sees options, then positionals. ``--learning-rate`` is ``learning_rate``."""
    probe = argparse.ArgumentParser(add_help=True)
    add_arguments(probe)
    arity = {s: (0 if a.nargs == 0 else 1) for a in probe._actions for s in a.option_strings}
    head, options, positionals, overrides = [], [], [], []
    rest = list(argv)
    if "train" in rest:
        cut = rest.index("train") + 1
        head, rest = rest[:cut], rest[cut:]
    i = 0
    while i < len(rest):
        token = rest[i]
        name = token.split("=", 1)[0]
        if token == "--":
            positionals.extend(rest[i + 1:])
            break
        if name in arity:
            take = 0 if "=" in token else arity[name]
            options.extend(rest[i:i + 1 + take])
            i += 1 + take
            continue
        if token.startswith("--") and len(token) > 2:
            key = name[2:].replace("-", "_")
            if "=" in token:
                overrides.append(f"{key}={token.split('=', 1)[1]}")
                i += 1
            elif i + 1 < len(rest) and not rest[i + 1].startswith("--") and not OVERRIDE.match(rest[i + 1]):
                overrides.append(f"{key}={rest[i + 1]}")
                i += 2
            else:
                overrides.append(f"{key}=true")
                i += 1
            continue
        positionals.append(token)
        i += 1
    return head + options + positionals + overrides


def _have_deepspeed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def accelerate_command(config: str, recipe_path: str, overrides: list[str], num_processes: int | None = None,
                       flags: tuple[str, ...] = ()) -> list[str]:
    """``accelerate launch --config_file CONFIG [--num_processes N] -m negalign train RECIPE OVERRIDES FLAGS``, the
    command ``--accelerate_config`` runs; ``config`` is a file or a shipped config's name (``zero3``)."""
    import shutil
    import sys
    from pathlib import Path

    from negalign.shipped import accelerate_config

    path = config if Path(config).is_file() else str(accelerate_config(config))
    if "DEEPSPEED" in Path(path).read_text() and not _have_deepspeed():  # before accelerate's ImportError, per process
        from negalign.config import RecipeError

        raise RecipeError(f"the accelerate config {config} uses DeepSpeed, which is not installed: "
                          "pip install 'negalign[deepspeed]' (or use --accelerate_config multi_gpu)")
    exe = Path(sys.executable).parent / "accelerate"
    launcher = [str(exe)] if exe.is_file() else [shutil.which("accelerate") or "accelerate"]
    return [*launcher, "launch", "--config_file", path,
            *(["--num_processes", str(num_processes)] if num_processes else []),
            "-m", "negalign", "train", recipe_path, *overrides, *flags]


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


def show_keys(section: str, name: str | None, overrides: list[str]) -> int:
    """Print the keys of ``section`` for a method (``name`` is a method), a loader (``name`` is a data loader, for
    data) or a recipe (``name`` is a recipe file or shipped recipe name: its method and loader)."""
    from negalign.config import section_keys
    from negalign.data import LOADERS

    method = data_name = None
    if name in METHODS:
        method = name
    elif name in LOADERS and section == "data":
        data_name = name
    elif name:
        from negalign.shipped import find_recipe

        recipe = load_recipe(find_recipe(name), overrides)
        method, data_name = recipe.method_name, recipe.data.get("name")
    keys = section_keys(section, method, data_name)
    for key, (default, help_text) in keys.items():
        shown = f" (default {default!r})" if default is not None else ""
        text = help_text if len(help_text) <= 160 else help_text[:157] + "..."
        print(f"  {section}.{key}{shown}: {text}" if text else f"  {section}.{key}{shown}")
    if section in ("training", "method") and method is None:
        print("# the keys every method takes; a method adds its own: negalign train --show-keys training METHOD")
    return 0


def main(args) -> int:
    if args.show_method:
        mod = method_module(args.show_method)
        from negalign.methods import get

        record = get(args.show_method)
        print(record.describe())
        print(describe_fields(mod.CONFIG_CLASS, record.defaults()))
        return 0
    from negalign.config import RecipeError

    name, overrides = args.recipe, list(args.overrides)
    if args.config:  # TRL's --config FILE: a positional after it is an override
        if name is not None:
            overrides.insert(0, name)
        name = args.config
    elif name is not None and "=" in name and not os.path.exists(name):
        overrides.insert(0, name)
        name = None
    if args.show_keys:
        return show_keys(args.show_keys, name, overrides)
    if not name:
        raise RecipeError("train needs a recipe: negalign train RECIPE.yaml [key=value ...] "
                          "(or TRL's form: negalign train --config RECIPE.yaml --learning_rate 1e-5)")
    from negalign.shipped import find_recipe

    recipe = load_recipe(find_recipe(name), overrides)  # a file, or a shipped recipe's name (npo_tofu)
    launch = None
    if args.accelerate_config:  # TRL's --accelerate_config: this command again, under accelerate launch
        launch = accelerate_command(args.accelerate_config, find_recipe(name), overrides, args.num_processes,
                                    ("--overwrite",) if args.overwrite else ())
    elif args.num_processes:
        raise RecipeError("--num_processes needs --accelerate_config NAME (zero3, multi_gpu, ...); or launch with "
                          "`accelerate launch --num_processes N -m negalign train ...`")
    if args.dry_run:
        import shlex

        import yaml

        if launch:
            print("# would launch: " + shlex.join(launch))
        resolved = recipe.resolved()
        print(f"# {recipe.path or 'recipe'}{' + ' + ' '.join(overrides) if overrides else ''}: the resolved "
              f"configuration (resolved into {recipe.module().CONFIG_CLASS.__name__}), defaults included; method and training are the {recipe.module().CONFIG_CLASS.__name__} "
              "the trainer gets")
        print(yaml.safe_dump(resolved, sort_keys=False, width=120))
        return 0
    if launch:
        import subprocess

        print("negalign train: launching " + " ".join(launch), flush=True)
        return subprocess.call(launch)
    metrics = run(recipe, overwrite=args.overwrite)
    final = {k: v for k, v in metrics.items() if k != "log_history" and not isinstance(v, (list, dict))}
    print(final)
    end_processes()
    return 0
