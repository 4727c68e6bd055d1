"""Values, types and data checked before work starts (issue #13 items 4-6): one-line errors, before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from negalign.config import RecipeError, load_recipe
from negalign.data import DataError

ROOT = Path(__file__).resolve().parents[1]
NPO_TINY = ROOT / "recipes" / "quickstart" / "npo_tofu_tiny.yaml"


# --------------------------------------------------------------------------------- 4. values and types at load time


@pytest.mark.parametrize("recipe,override,message", [
    (NPO_TINY, "beta=abc", "method.beta='abc': expects a number"),
    (NPO_TINY, "learning_rate=abc", "training.learning_rate='abc': expects a number"),
    (NPO_TINY, "max_steps=two", "training.max_steps='two': expects an integer"),
    (ROOT / "recipes" / "nsr_gsm8k.yaml", "lam=abc", "method.lam='abc': expects a number"),
    (NPO_TINY, "num_train_epochs=-1", "training.num_train_epochs=-1: must be positive"),
    (NPO_TINY, "method.max_length=0", "method.max_length=0: must be at least 1"),
    (ROOT / "recipes" / "madpo_dpo.yaml", "beta=-0.1", "method.beta=-0.1: must be positive"),
    (NPO_TINY, "per_device_train_batch_size=0", "training.per_device_train_batch_size=0: must be at least 1"),
    (NPO_TINY, "beta=.nan", "method.beta=nan: expects a finite number"),
    (NPO_TINY, "beta=.inf", "method.beta=inf: expects a finite number"),
    (NPO_TINY, "output.push_to_hub=true", "output.push_to_hub is true but output.repo_id is not set"),
    (NPO_TINY, "model.trust_remote_code=maybe", "model.trust_remote_code='maybe': expects a boolean"),
    (NPO_TINY, "gradient_checkpointing=sometimes", "training.gradient_checkpointing='sometimes': expects a boolean"),
])
def test_bad_values_are_one_line_errors_at_load(recipe, override, message):
    # before: all accepted by load_recipe (most raised a traceback later, after the model and the reference pass;
    # num_train_epochs=-1 "trained" 0 steps and exited 0; max_length=0 / a negative or NaN beta / batch size 0 ran)
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_dry_run_reports_the_bad_value(capsys):
    from negalign.cli import main

    assert main(["train", str(NPO_TINY), "learning_rate=abc", "--dry-run"]) == 2
    assert "training.learning_rate='abc': expects a number" in capsys.readouterr().err


def test_grpo_family_accepts_beta_zero():
    # TRL's GRPO: beta = 0 means no KL term (its default); only a negative one is wrong
    load_recipe(ROOT / "recipes" / "nsr_gsm8k.yaml", ["beta=0.0"])
    with pytest.raises(RecipeError, match="must not be negative"):
        load_recipe(ROOT / "recipes" / "nsr_gsm8k.yaml", ["beta=-1"])


def test_max_steps_wins_over_epochs_and_every_shipped_recipe_loads():
    load_recipe(NPO_TINY, ["num_train_epochs=0", "max_steps=4"])
    for path in sorted((ROOT / "recipes").glob("**/*.yaml")):
        if "accelerate" not in path.parts:
            load_recipe(path)


# ---------------------------------------------------------------------------------- 5. booleans parsed as booleans


@pytest.mark.parametrize("text,value", [("'false'", False), ("'False'", False), ("'no'", False), ("'true'", True),
                                        ("false", False), ("0", False)])
def test_quoted_booleans_are_booleans(text, value):
    # before: trust_remote_code: 'false' (a string) was truthy and ran a local auto_map module
    recipe = load_recipe(NPO_TINY, [f"model.trust_remote_code={text}", f"training.bf16={text}"])
    assert recipe.model["trust_remote_code"] is value
    assert recipe.training["bf16"] is value


def test_quoted_false_in_yaml_file(tmp_path):
    text = NPO_TINY.read_text().replace("model:\n", "model:\n  trust_remote_code: 'false'\n", 1)
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert load_recipe(path).model["trust_remote_code"] is False


# -------------------------------------------------------------------------------------- 6. data errors say where


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    from negalign.data import read_records

    p = tmp_path / "d.jsonl"
    p.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": "2"}\n{"question": "c", \n')
    with pytest.raises(DataError, match=rf"{p} line 4: not valid JSON"):  # before: JSONDecodeError ... line 1
        read_records(str(p))


def test_malformed_json_list_names_the_line(tmp_path):
    from negalign.data import read_records

    p = tmp_path / "d.json"
    p.write_text('[\n {"question": "a", "answer": "1"},\n {"question": "b" "answer": "2"}\n]\n')
    with pytest.raises(DataError, match=rf"{p} line 3 column"):
        read_records(str(p))


def _qa(tmp_path, rows):
    from negalign.data import QAData

    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return QAData(path=str(p), split=None)


def test_a_column_missing_after_the_first_row_names_the_row(tmp_path):
    qa = _qa(tmp_path, [{"question": "a", "answer": "1"}, {"question": "b"}])
    with pytest.raises(DataError, match=r"row 2 lacks column 'answer'"):  # before: a bare KeyError
        qa.load()


def test_a_null_answer_is_an_error_not_the_string_none(tmp_path):
    qa = _qa(tmp_path, [{"question": "a", "answer": "1"}, {"question": "b", "answer": None}])
    with pytest.raises(DataError, match=r"row 2 has answer: null"):  # before: trained on "None"
        qa.load()


def test_path_looking_names_never_go_to_the_hub(tmp_path, monkeypatch):
    import datasets

    from negalign.data import read_records
    from negalign.models import load_model_and_tokenizer

    def no_hub(*a, **k):
        raise AssertionError("sent to the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name in ("data/tofu_typo", "./tofu", "../x/y", "a/b/c", "~/d"):
        with pytest.raises(DataError, match="data file not found"):  # before: a Hub lookup, a network traceback
            read_records(name, "train")
    with pytest.raises(DataError, match=r"model folder not found: \./runs/sft \(model.name_or_path\)"):
        load_model_and_tokenizer({"name_or_path": "./runs/sft"})  # before: "Repo id must be in the form ..."
    from types import SimpleNamespace

    from negalign.trainers.common import reference_model

    with pytest.raises(DataError, match=r"model folder not found: runs-typo/ref/x \(model.ref_name_or_path\)"):
        reference_model(SimpleNamespace(model={"ref_name_or_path": "runs-typo/ref/x"}))
