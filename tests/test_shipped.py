"""Recipes and accelerate configs installed with the package (negalign.shipped): lookup by name, the listing, and
that a built wheel carries them as plain files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from negalign.config import RecipeError
from negalign.shipped import accelerate_config, description, find_recipe, shipped_recipes
from tests.conftest import ROOT


def test_every_recipe_in_the_repository_is_shipped_under_its_name():
    repo = {p.relative_to(ROOT / "recipes").with_suffix("").as_posix() for p in (ROOT / "recipes").rglob("*.yaml")
            if "accelerate" not in p.parts}
    assert set(shipped_recipes()) == repo and {"npo_tofu", "quickstart/npo_tofu_tiny"} <= repo


def test_find_recipe_by_name_or_path(tmp_path):
    assert find_recipe("npo_tofu") == str(shipped_recipes()["npo_tofu"])
    assert find_recipe("npo_tofu_tiny") == find_recipe("quickstart/npo_tofu_tiny.yaml")  # unambiguous stem
    own = tmp_path / "npo_tofu"  # a file of that name wins over the shipped recipe
    own.write_text("method: {name: npo}\n")
    assert find_recipe(str(own)) == str(own)
    assert find_recipe("missing/file.yaml") == "missing/file.yaml"  # a path: the loader reports it missing
    with pytest.raises(RecipeError, match="Did you mean 'npo_tofu'"):
        find_recipe("npo_tofuu")


def test_descriptions_and_accelerate_configs():
    # the first sentence of the header comment; "et al." does not end it
    assert description(shipped_recipes()["simnpo_tofu"]).startswith("SimNPO (Fan et al. 2024) on TOFU forget10")
    assert description(shipped_recipes()["ga_tofu"]) == ("Gradient ascent (GA) on TOFU forget10: the baseline that "
                                                        "collapses (SPEC.md §1)")
    assert accelerate_config("zero3").read_text() == (ROOT / "recipes/accelerate/zero3.yaml").read_text()
    with pytest.raises(RecipeError, match="zero2"):
        accelerate_config("zero4")


def test_cli_recipes_and_train_by_name(capsys):
    from negalign.cli import main

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "quickstart/npo_tofu_tiny" in out and "zero3" in out
    assert main(["accelerate-config", "zero3"]) == 0
    assert capsys.readouterr().out.strip().endswith("accelerate/zero3.yaml")
    assert main(["train", "npo_tofu", "--dry-run"]) == 0
    assert "UnlearnConfig" in capsys.readouterr().out


def test_wheel_carries_the_recipes(tmp_path):
    # a real (non-editable) build of a copy of the checkout (setuptools writes build/ into the tree it builds);
    # no network: the venv's setuptools builds it
    src = tmp_path / "src"
    shutil.copytree(ROOT / "negalign", src / "negalign", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "recipes", src / "recipes")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(src)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("negalign-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    assert {"negalign/recipes/npo_tofu.yaml", "negalign/recipes/quickstart/npo_tofu_tiny.yaml",
            "negalign/recipes/accelerate/zero3.yaml", "negalign/methods.py"} <= names
    # every recipe and launch config of the checkout, as a plain file with the same text (scripts/check_wheel.sh
    # goes on to install the wheel in a new venv and run `negalign recipes` and a shipped recipe from elsewhere)
    repo = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert len(repo) > 20
    for path in repo:
        name = "negalign/recipes/" + path.relative_to(ROOT / "recipes").as_posix()
        assert archive.read(name).decode() == path.read_text(), name


def test_train_accelerate_config_by_name_trl_style(capsys, monkeypatch):
    import subprocess as sp

    from negalign.cli import main

    # TRL's `trl sft --accelerate_config zero3`; before: "unknown override key 'accelerate_config'"
    assert main(["train", "npo_tofu_tiny", "--accelerate_config", "zero3", "--num_processes", "2", "max_steps=1",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    launch = out.splitlines()[0]
    zero3, tiny = accelerate_config("zero3"), find_recipe("npo_tofu_tiny")
    assert launch.startswith("# would launch: ") and launch.endswith(
        f"accelerate launch --config_file {zero3} --num_processes 2 -m negalign train {tiny} max_steps=1")
    # without --dry-run the same command runs (the process boundary is recorded instead of launching)
    calls = []
    monkeypatch.setattr(sp, "call", lambda cmd: calls.append(cmd) or 0)
    assert main(["train", "--config", tiny, "--accelerate-config", str(zero3), "--learning_rate", "1e-4"]) == 0
    assert calls and calls[0][1:] == ["launch", "--config_file", str(zero3), "-m", "negalign", "train", tiny,
                                      "learning_rate=1e-4"]
    assert main(["train", "npo_tofu_tiny", "--accelerate_config", "zero4", "--dry-run"]) == 2
    assert "no shipped accelerate config 'zero4'" in capsys.readouterr().err
    assert main(["train", "npo_tofu_tiny", "--num_processes", "2", "--dry-run"]) == 2
    assert "--num_processes needs --accelerate_config" in capsys.readouterr().err
    # a plain `pip install negalign` has no DeepSpeed: one line naming the extra (before: accelerate's ImportError
    # from every launched process)
    import negalign.train

    monkeypatch.setattr(negalign.train, "_have_deepspeed", lambda: False)
    assert main(["train", "npo_tofu_tiny", "--accelerate_config", "zero3", "--dry-run"]) == 2
    assert "pip install 'negalign[deepspeed]'" in capsys.readouterr().err
    assert main(["train", "npo_tofu_tiny", "--accelerate_config", "multi_gpu", "--dry-run"]) == 0
