"""Recipes: overrides, unknown keys with the closest valid one, missing files, and the CLI surface."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from negalign.config import RecipeError, load_recipe
from negalign.data import DataError

ROOT = Path(__file__).resolve().parents[1]
SFT = ROOT / "recipes/quickstart/sft_tofu_tiny.yaml"


def test_overrides_dotted_bare_and_alias():
    r = load_recipe(SFT, ["training.learning_rate=3e-4", "max_steps=4", "output_dir=/tmp/x", "data.max_samples=8"])
    assert r.training["learning_rate"] == 3e-4 and r.training["max_steps"] == 4
    assert r.output_dir == "/tmp/x" and r.data["max_samples"] == 8
    cfg = r.build_config()
    assert cfg.learning_rate == 3e-4 and cfg.max_steps == 4 and cfg.output_dir == "/tmp/x" and cfg.use_cpu


def test_unknown_key_names_closest():
    with pytest.raises(RecipeError, match=r"unknown key training.learnig_rate.*Did you mean training.learning_rate"):
        load_recipe(SFT, ["training.learnig_rate=1"])
    with pytest.raises(RecipeError, match=r"unknown override key 'max_step'.*Did you mean training.max_steps\?"):
        load_recipe(SFT, ["max_step=3"])
    with pytest.raises(RecipeError, match=r"unknown key data.max_sample.*Did you mean data.max_samples"):
        load_recipe(SFT, ["data.max_sample=3"])
    with pytest.raises(RecipeError, match=r"unknown method 'npp'.*'npo'"):
        load_recipe(SFT, ["method.name=npp"])


def test_unknown_section_and_bad_files(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text(yaml.safe_dump({"model": {"name_or_path": "x"}, "method": {"name": "sft"}, "trainig": {}}))
    with pytest.raises(RecipeError, match="'trainig'.*Did you mean 'training'"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad.write_text(yaml.safe_dump({"method": {"name": "sft"}}))
    with pytest.raises(RecipeError, match="model needs name_or_path"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="not of the form key=value"):
        load_recipe(SFT, ["max_steps"])


def test_missing_data_file_is_a_clear_error(tmp_path):
    from negalign.trainers.common import data_loader

    r = load_recipe(SFT, ["data.path=" + str(tmp_path / "nope.json")])
    with pytest.raises(DataError, match="data file not found"):
        data_loader(r).rows()
    (tmp_path / "d.jsonl").write_text('{"q": "a", "answer": "b"}\n')
    r = load_recipe(SFT, ["data.path=" + str(tmp_path / "d.jsonl")])
    with pytest.raises(DataError, match=r"lacks column\(s\) \['question'\]"):
        data_loader(r).rows()


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "negalign", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_help_lists_commands():
    out = _cli("--help")
    assert out.returncode == 0
    for cmd in ("train", "eval", "generate", "push", "quickstart", "bench"):
        assert cmd in out.stdout
    out = _cli("train", "--help")
    assert out.returncode == 0 and "key=value" in out.stdout
    out = _cli("train", "--show-method", "npo")  # no recipe needed to read a method's keys
    assert out.returncode == 0 and "method.beta" in out.stdout and "method.retain_loss" in out.stdout
    out = _cli("train", "--show-method", "simnpo")  # the preset's values, not the class defaults
    assert "method.beta (default 4.5)" in out.stdout and "method.forget_loss (default 'simnpo')" in out.stdout


def test_cli_reports_recipe_errors_cleanly():
    out = _cli("train", str(SFT), "training.learnig_rate=1")
    assert out.returncode == 2 and "Did you mean training.learning_rate" in out.stderr and "Traceback" not in out.stderr
