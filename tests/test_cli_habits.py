"""A TRL user's habits (issue #16 items 3 and 4): TRL-style flags, --show-keys, hints that point across sections,
peft=null, a dry run that prints the resolved configuration, activation_checkpointing without a FutureWarning, the
kit model inside the run's directory, local files through datasets.load_dataset, and a fast one-line error for a Hub
dataset with no network. Each test failed on the code before these changes (see the comments)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from negalign.config import RecipeError, load_recipe, yaml_load
from negalign.data import DataError

ROOT = Path(__file__).resolve().parents[1]
NPO_TINY = ROOT / "recipes" / "quickstart" / "npo_tofu_tiny.yaml"
SFT_TINY = ROOT / "recipes" / "quickstart" / "sft_tofu_tiny.yaml"
PERSTEP = ROOT / "recipes" / "perstep_gsm8k.yaml"


def _cli(argv, capsys):
    from negalign.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------- TRL-style flags


def test_trl_flags_become_overrides_after_the_other_arguments():
    from negalign.train import translate_argv

    # before: no translate_argv; argparse stopped at "unrecognized arguments: --learning_rate 1e-5"
    argv = ["train", "--config", "r.yaml", "--learning_rate", "1e-5", "--max-steps=3", "--dry-run", "--bf16",
            "beta=0.2", "--warmup_ratio", "-0.0"]
    assert translate_argv(argv) == ["train", "--config", "r.yaml", "--dry-run", "beta=0.2", "learning_rate=1e-5",
                                    "max_steps=3", "bf16=true", "warmup_ratio=-0.0"]
    # negalign's own options (and their values) are left alone
    assert translate_argv(["train", "r.yaml", "--show-method", "npo", "--overwrite"]) == \
        ["train", "--show-method", "npo", "--overwrite", "r.yaml"]


def test_trl_form_config_and_flags_dry_run(capsys):
    # before: exit 2 from argparse ("unrecognized arguments: --config ... --learning_rate 1e-5")
    code, out, err = _cli(["train", "--config", NPO_TINY, "--learning_rate", "1e-5", "--max_steps=3", "--dry-run"],
                          capsys)
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["training"]["learning_rate"] == 1e-5 and resolved["training"]["max_steps"] == 3


def test_unknown_flag_gets_a_one_line_hint(capsys):
    code, _, err = _cli(["train", "--config", NPO_TINY, "--learnig_rate", "1e-5", "--dry-run"], capsys)
    assert code == 2 and "Did you mean training.learning_rate?" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------- --show-keys


def test_show_keys_lists_what_the_error_points_to(capsys):
    with pytest.raises(RecipeError) as e:
        load_recipe(SFT_TINY, ["training.learnig_rate=1"])
    # the message names the command that lists the keys (before: "see `negalign train --help`", which did not)
    command = str(e.value).split("`")[1].split()
    assert command == ["negalign", "train", "--show-keys", "training", "sft"]
    code, out, _ = _cli(command[1:], capsys)
    assert code == 0 and "training.learning_rate (default 2e-05)" in out  # SFTConfig's default, not transformers'
    assert not any(line.startswith("  method.") for line in out.splitlines())
    code, out, _ = _cli(["train", "--show-keys", "method", "npo"], capsys)
    assert code == 0 and "method.beta" in out and "method.retain_loss" in out
    code, out, _ = _cli(["train", "--show-keys", "training"], capsys)  # no method: the keys every method takes
    assert code == 0 and "training.per_device_train_batch_size" in out
    code, out, _ = _cli(["train", NPO_TINY, "--show-keys", "data"], capsys)  # the recipe's loader
    assert code == 0 and "data.forget_split" in out


# ------------------------------------------------------------------------------------------------------ hints


def test_hints_point_across_sections():
    # before: "unknown key method.'beta'. Did you mean 'awr_beta'?": beta is TRL's DPOConfig field for perstep_dpo
    with pytest.raises(RecipeError, match=r"method.beta is not a method key for method perstep_dpo: it is "
                                          r"training.beta; write training.beta=VALUE"):
        load_recipe(PERSTEP, ["method.beta=0.2"])
    # and the other way round for NPO, whose beta is negalign's method key
    with pytest.raises(RecipeError, match=r"it is method.beta"):
        load_recipe(NPO_TINY, ["training.beta=0.2"])
    with pytest.raises(RecipeError, match=r"it is training.max_steps"):
        load_recipe(NPO_TINY, ["method.max_steps=3"])
    load_recipe(PERSTEP, ["beta=0.2"])  # the bare key finds its section


def test_hints_never_repeat_the_typo_as_advice():
    # before: "unknown override key 'max_step'. Did you mean 'max_steps'? Use section.key, e.g. training.max_step"
    with pytest.raises(RecipeError) as e:
        load_recipe(NPO_TINY, ["max_step=3"])
    message = str(e.value)
    assert "Did you mean training.max_steps?" in message
    assert message.count("max_step") == 2  # the key as given, once, and the suggestion (max_steps)
    with pytest.raises(RecipeError) as e:
        load_recipe(NPO_TINY, ["zzqqxx=3"])
    assert str(e.value).count("zzqqxx") == 1 and "--show-keys" in str(e.value)


# ------------------------------------------------------------------------------------------------- peft=null


def test_peft_null_override_disables_lora():
    from negalign.trainers.common import peft_config

    lora = load_recipe(NPO_TINY, ["peft.r=4", "peft.lora_alpha=8"])
    assert lora.peft == {"r": 4, "lora_alpha": 8} and peft_config(lora).r == 4
    # before: "unknown override key 'peft'. Did you mean 'project'?"
    plain = load_recipe(NPO_TINY, ["peft.r=4", "peft=null"])
    assert plain.peft is None and peft_config(plain) is None
    assert load_recipe(NPO_TINY, ["peft={r: 2}"]).peft == {"r": 2}
    with pytest.raises(RecipeError, match="only the peft section can be removed"):
        load_recipe(NPO_TINY, ["model=null"])


# ------------------------------------------------------------------------------------------------- --dry-run


def test_dry_run_prints_the_resolved_configuration(capsys):
    code, out, err = _cli(["train", NPO_TINY, "--dry-run", "peft.r=4"], capsys)
    assert code == 0, err
    resolved = yaml.safe_load(out)
    recipe = yaml.safe_load(NPO_TINY.read_text())
    # before: the YAML echo, which has neither TrainingArguments' defaults nor the method fields the recipe leaves out
    assert "adam_beta1" not in recipe["training"] and resolved["training"]["adam_beta1"] == 0.9
    assert set(recipe["method"]) < set(resolved["method"]) and resolved["method"]["name"] == recipe["method"]["name"]
    assert resolved["peft"]["r"] == 4 and resolved["peft"]["lora_alpha"] == 8  # LoraConfig's default alpha
    assert resolved["data"]["max_samples"] is None  # the loader's fields, defaults included


# ---------------------------------------------------------------------------------- activation_checkpointing


def test_no_gradient_checkpointing_future_warning():
    # transformers 5.23 deprecates gradient_checkpointing; TRL's configs default it to True, so every config built
    # the old way warned (before: FutureWarning from every one of these)
    for path in (NPO_TINY, SFT_TINY, ROOT / "recipes" / "nsr_gsm8k.yaml", PERSTEP):
        recipe = load_recipe(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            config = recipe.build_config()
        assert config.activation_checkpointing == config.gradient_checkpointing
    # TRL's default is kept (True for a GRPO config), the recipe's value wins, and the old name still works
    assert load_recipe(ROOT / "recipes" / "nsr_gsm8k.yaml", ["activation_checkpointing=false"]).build_config() \
        .activation_checkpointing is False
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert load_recipe(SFT_TINY, ["gradient_checkpointing=true"]).build_config().activation_checkpointing is True
    # an override under the old name replaces the recipe's value under the new one (NPO_TINY sets
    # activation_checkpointing: false; before, this override was refused as a disagreement), and the last of two
    # overrides wins whichever name each uses
    assert load_recipe(NPO_TINY, ["gradient_checkpointing=true"]).build_config().activation_checkpointing is True
    assert load_recipe(NPO_TINY, ["gradient_checkpointing=true", "activation_checkpointing=false"]) \
        .build_config().activation_checkpointing is False
    # both names with different values in one recipe are still an error: which one was meant is unknowable
    data = yaml_load(NPO_TINY.read_text())
    data["training"]["gradient_checkpointing"] = True
    with pytest.raises(RecipeError, match="disagree"):
        load_recipe(data=data).build_config()


def test_recipes_use_activation_checkpointing():
    for path in sorted((ROOT / "recipes").glob("**/*.yaml")):
        if "accelerate" not in path.parts:
            assert "gradient_checkpointing" not in path.read_text(), path


# --------------------------------------------------------------------------------------------- kit directory


def test_kit_model_defaults_inside_the_output_dir(tmp_path):
    # the shipped recipes leave model.kit.dir out, so a pip user's run keeps its kit in its own output_dir (before:
    # the quickstarts wrote runs/kit/... under whatever directory the command was started in)
    for path in sorted((ROOT / "recipes").glob("**/*.yaml")):
        kit = (yaml.safe_load(path.read_text()).get("model") or {}).get("kit")
        assert kit is None or "dir" not in kit, path
    data = yaml.safe_load(NPO_TINY.read_text())
    data["output"]["dir"] = str(tmp_path / "out")
    # before: no dir in the recipe, and load_model_and_tokenizer built the kit in ./runs/kit
    assert load_recipe(data=data).model["kit"]["dir"] == str(tmp_path / "out" / "kit")
    assert load_recipe(data=data, overrides=[f"output_dir={tmp_path / 'o2'}"]).model["kit"]["dir"] == \
        str(tmp_path / "o2" / "kit")
    data["model"]["kit"]["dir"] = "runs/kit/tofu-qwen2-tiny-unlearn"
    assert load_recipe(data=data).model["kit"]["dir"] == "runs/kit/tofu-qwen2-tiny-unlearn"  # an explicit dir stays


def test_missing_relative_data_folder_says_how_to_override(tmp_path, monkeypatch):
    from negalign.data.tofu import read_split

    # a pip user runs a shipped quickstart (data.path: ../shared/data/tofu) outside the checkout; before: "TOFU path
    # ../shared/data/tofu is not a folder (expected a folder with forget01.json, or a Hub id)", no way out named
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        read_split("../shared/data/tofu", "forget01")
    assert f"relative to the working directory {tmp_path}" in str(e.value)
    assert "data.path=FOLDER" in str(e.value) and "data.path=locuslab/TOFU" in str(e.value)


# ------------------------------------------------------------------------------------ datasets for local files


def test_local_files_go_through_load_dataset(tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from negalign.data import QAData, read_records

    calls = []
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    (tmp_path / "train.jsonl").write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": "2"}\n')
    (tmp_path / "test.json").write_text(json.dumps([{"question": "c", "answer": "3"}]))
    pq.write_table(pa.Table.from_pylist([{"question": "d", "answer": "4"}]), tmp_path / "dev.parquet")
    assert read_records(str(tmp_path), "train") == [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}]
    assert read_records(str(tmp_path / "test.json")) == [{"question": "c", "answer": "3"}]
    assert QAData(path=str(tmp_path), split="dev", num_proc=1).rows() == [{"question": "d", "answer": "4"}]
    # before: a hand-written reader; load_dataset was never called for a local file
    assert [c[0][0] for c in calls] == ["json", "json", "parquet"]
    assert calls[2][1]["num_proc"] == 1 and calls[0][1]["data_files"] == str(tmp_path / "train.jsonl")


def test_empty_and_unreadable_files_are_one_line_errors(tmp_path):
    from negalign.data import read_records

    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match=r"e.jsonl is empty"):
        read_records(str(tmp_path / "e.jsonl"))


HUB_SCRIPT = """
import time
t = time.time()
from negalign.data import DataError, read_records
try:
    read_records("negalign-test/no-such-data", split="train")
except DataError as e:
    print("DATAERROR", e)
print("SECONDS", time.time() - t)
"""


def test_hub_id_without_network_fails_fast_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                             "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))  # loopback: nothing listens there
    start = time.time()
    out = subprocess.run([sys.executable, "-c", HUB_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    # before: 5 retries over ~25-60 s, "Retrying in 1s" lines and a ConnectionError traceback
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("DATAERROR"))
    assert "cannot reach the Hub at http://127.0.0.1:9" in line and "HF_HUB_OFFLINE=1" in line and "local" in line
    assert "Retrying" not in out.stderr and time.time() - start < 60


def test_hub_id_offline_and_not_cached_says_so(tmp_path, monkeypatch):
    from negalign.data import read_records

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"not in the datasets cache.*local folder or file"):
        read_records("negalign-test/no-such-data", split="train")


def test_a_reader_that_leaves_early_gets_no_traceback():
    # `negalign recipes | head -1`: head exits and the pipe closes under the writer. Before, Python printed a
    # BrokenPipeError traceback; now the command stops quietly with a shell's SIGPIPE status, 141. The reading end is
    # closed before the command starts, so its first write fails every time (reading a line first and then closing
    # raced the command: its short listing could fit the pipe's buffer before the close, and then it exited 0).
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "negalign", "recipes", "--paths"], stdout=w,
                                stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        os.close(w)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err, err
