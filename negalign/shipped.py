"""The recipes and ``accelerate`` launch configs installed with the package (``negalign/recipes``).

``negalign recipes`` lists them with the first sentence of each file's header comment; ``negalign train npo_tofu``
finds a shipped recipe by name (``npo_tofu``, ``quickstart/npo_tofu_tiny`` or just ``npo_tofu_tiny``);
``negalign accelerate-config zero3`` prints the path of a shipped launch config, for
``accelerate launch --config_file $(negalign accelerate-config zero3) -m negalign train npo_tofu``.
In a checkout ``negalign/recipes`` links to the repository's ``recipes/`` folder; in a wheel it holds copies.
"""

from __future__ import annotations

import argparse
import difflib
import re
from pathlib import Path

ACCELERATE = "accelerate"


def recipes_dir() -> Path:
    return Path(__file__).resolve().parent / "recipes"


def _name(path: Path) -> str:
    return path.relative_to(recipes_dir()).with_suffix("").as_posix()


def shipped_recipes() -> dict[str, Path]:
    """``{name: path}`` of every shipped recipe (``npo_tofu``, ``quickstart/npo_tofu_tiny``), launch configs excluded."""
    root = recipes_dir()
    paths = sorted(p for p in root.rglob("*.yaml") if p.relative_to(root).parts[0] != ACCELERATE)
    return {_name(p): p for p in paths}


def accelerate_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted((recipes_dir() / ACCELERATE).glob("*.yaml"))}


def description(path: Path, width: int = 110) -> str:
    """The first sentence of the file's header comment (the ``#`` lines before the YAML), cut to ``width``."""
    lines = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if not text or line.startswith("#  "):  # an indented line is a command example: the prose has ended
            break
        lines.append(text)
    text = " ".join(lines)
    match = re.search(r"(?<!\bal)(?<!e\.g)(?<!i\.e)[.;](?=\s)", text)  # the first sentence ("et al." is not an end)
    text = text[: match.start()] if match else text.rstrip(".")
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def find_recipe(name_or_path: str) -> str:
    """``name_or_path`` when it is a file; else the shipped recipe of that name (``npo_tofu``,
    ``quickstart/npo_tofu_tiny`` or an unambiguous ``npo_tofu_tiny``; ``.yaml`` optional); else ``name_or_path``
    unchanged when it looks like a path (the loader then reports the missing file)."""
    if Path(name_or_path).is_file():
        return name_or_path
    shipped = shipped_recipes()
    key = name_or_path.removesuffix(".yaml").removeprefix("recipes/")
    if key in shipped:
        return str(shipped[key])
    by_stem = [p for n, p in shipped.items() if n.rsplit("/", 1)[-1] == key]
    if len(by_stem) == 1:
        return str(by_stem[0])
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        return name_or_path
    from negalign.config import RecipeError

    match = difflib.get_close_matches(key, list(shipped), n=1, cutoff=0.5)
    raise RecipeError(f"no recipe file or shipped recipe named {name_or_path!r}."
                      + (f" Did you mean {match[0]!r}?" if match else "") + " List them with `negalign recipes`.")


def accelerate_config(name: str) -> Path:
    configs = accelerate_configs()
    key = name.removesuffix(".yaml")
    if key not in configs:
        from negalign.config import RecipeError

        raise RecipeError(f"no shipped accelerate config {name!r}; known: {', '.join(configs)}")
    return configs[key]


# ------------------------------------------------------------------------------------------------------------------
# CLI: `negalign recipes` and `negalign accelerate-config NAME`
# ------------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--paths", action="store_true", help="Also print each file's installed path.")


def main(args) -> int:
    recipes = shipped_recipes()
    width = max(len(n) for n in recipes)
    print("Recipes (negalign train NAME [key=value ...]):")
    for name, path in recipes.items():
        print(f"  {name:<{width}}  {description(path)}" + (f"\n  {'':<{width}}  {path}" if args.paths else ""))
    print("\nAccelerate configs (accelerate launch --config_file $(negalign accelerate-config NAME) -m negalign train "
          "...):")
    for name, path in accelerate_configs().items():
        print(f"  {name:<{width}}  {description(path)}" + (f"\n  {'':<{width}}  {path}" if args.paths else ""))
    return 0


def add_accelerate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="A shipped launch config: " + ", ".join(accelerate_configs()) + ".")


def accelerate_main(args) -> int:
    print(accelerate_config(args.name))
    return 0
