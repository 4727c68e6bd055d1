"""The private-API check (negalign.trainers.compat): passes on the installed TRL / transformers, names a missing private
name with its user and the tested range, refuses versions outside the range, and lists every private method the
trainers override."""

import importlib
import os
import subprocess
import sys

import pytest
import trl

from negalign.trainers import compat


def test_installed_versions_have_every_listed_name():
    for key in compat.PRIVATE_API:
        assert compat.missing(key) == [], key
    compat.check(*compat.PRIVATE_API)


def test_tested_ranges_are_the_pyproject_pins():
    text = open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml")).read()
    assert '"trl>=1.16,<1.17"' in text and '"transformers>=5.20,<5.24"' in text
    assert compat.tested_range("trl") == "trl>=1.16.0,<1.17.0"
    assert compat.tested_range("transformers") == "transformers>=5.20.0,<5.24.0"


def test_missing_method_is_named_with_its_user_and_the_range(monkeypatch):
    import trl.trainer.dpo_trainer as dpo

    class Bare:  # a TRL whose DPOTrainer has none of the private methods or attributes negalign uses
        pass

    monkeypatch.setattr(dpo, "DPOTrainer", Bare)
    assert "_compute_loss" in compat.missing("trl.DPOTrainer")
    with pytest.raises(ImportError) as e:
        compat.check("trl.DPOTrainer")
    msg = str(e.value)
    assert f"trl {trl.__version__} lacks trl.trainer.dpo_trainer.DPOTrainer._prepare_dataset" in msg
    assert "DPOTrainer._compute_loss" in msg and "DPOTrainer._tp_size" in msg  # a method and an instance attribute
    assert "trainers.d2o" in msg and "tested with trl>=1.16.0,<1.17.0" in msg


def test_missing_instance_attribute_is_found_without_building_a_trainer(monkeypatch):
    import trl.trainer.dpo_trainer as dpo

    class FakeDPOTrainer:  # every private method there, but __init__ no longer keeps _total_train_tokens
        _tag_names = []

        def __init__(self):
            self._metrics, self._tp_size, self._tokenizer, self._precompute_engine = {}, 1, None, None

        def _prepare_dataset(self): ...
        def _precompute_ref_logps(self): ...
        def _compute_loss(self): ...
        def _set_signature_columns_if_needed(self): ...

    monkeypatch.setattr(dpo, "DPOTrainer", FakeDPOTrainer)
    assert compat.missing("trl.DPOTrainer") == ["_total_train_tokens"]
    with pytest.raises(ImportError, match=r"lacks trl\.trainer\.dpo_trainer\.DPOTrainer\._total_train_tokens,"):
        compat.check("trl.DPOTrainer")


def test_attribute_scan_reads_the_owner_code():
    """The byte-code scan finds attributes that only an ``__init__`` (or a nested function) assigns."""

    class Owner:
        def __init__(self):
            self._set_in_init = 0

            def inner():
                return self._read_in_nested

            self._inner = inner

    names = compat._attribute_names(Owner)
    assert {"_set_in_init", "_read_in_nested"} <= names and "_never_used" not in names


def test_missing_module_helper_is_named(monkeypatch):
    import trl.data_utils

    monkeypatch.delattr(trl.data_utils, "_tokenize")
    with pytest.raises(ImportError, match=r"lacks trl\.data_utils\._tokenize, private API used by negalign "
                                          r"\(trainers\.d2o, trainers\.madpo\)"):
        compat.check("trl.data_utils")


@pytest.mark.parametrize("package,version", [("trl", "1.17.0"), ("trl", "1.15.2"), ("transformers", "5.19.9"),
                                             ("transformers", "5.24.0")])
def test_version_outside_the_tested_range_is_refused(monkeypatch, package, version):
    module = importlib.import_module(package)  # the module object now in sys.modules (transformers' is lazy)
    monkeypatch.setattr(module, "__version__", version)
    monkeypatch.delenv(compat.ALLOW_UNTESTED_ENV[package], raising=False)
    key = {"trl": "trl.DPOTrainer", "transformers": "transformers.Trainer"}[package]
    with pytest.raises(ImportError, match=f"tested with {compat.tested_range(package)}; found {package} {version}"):
        compat.check(key)
    monkeypatch.setenv(compat.ALLOW_UNTESTED_ENV[package], "1")  # at your own risk: the names are still checked
    compat.check(key)


def test_every_overridden_private_method_is_listed():
    """A private method a negalign trainer defines that a TRL / transformers base also has is an override of private
    API: it must be in the table (else a TRL that drops it would silently skip negalign's code)."""
    from negalign.trainers.d2o import D2OTrainer
    from negalign.trainers.madpo import MADPOTrainer
    from negalign.trainers.nft import NFTTrainer
    from negalign.trainers.nsr import NSRTrainer
    from negalign.trainers.perstep import PerStepAWRTrainer, PerStepDPOTrainer
    from negalign.trainers.unlearn import UnlearnTrainer

    listed = {n for use in compat.PRIVATE_API.values() for n in (*use.names, *use.attributes)}
    unlisted = []
    for cls in (D2OTrainer, MADPOTrainer, NFTTrainer, NSRTrainer, PerStepAWRTrainer, PerStepDPOTrainer, UnlearnTrainer):
        bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in ("trl", "transformers")]
        ours = [k for k in cls.__mro__ if k.__module__.startswith("negalign.")]  # the class and its mixins
        for name in {n for k in ours for n in vars(k)}:
            if name.startswith("_") and not name.startswith("__") and any(name in vars(b) for b in bases):
                if name not in listed:
                    unlisted.append(f"{cls.__name__}.{name}")
    assert unlisted == []


def test_a_trainer_module_fails_at_import_with_the_message():
    code = ("from trl import DPOTrainer; del DPOTrainer._precompute_ref_logps\n"
            "try:\n    import negalign.trainers.d2o\nexcept ImportError as e:\n    print('ERR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert "ERR trl" in out.stdout, out.stdout + out.stderr
    assert "lacks trl.trainer.dpo_trainer.DPOTrainer._precompute_ref_logps" in out.stdout
    assert "tested with trl>=1.16.0,<1.17.0" in out.stdout


def test_errors_live_in_one_module_that_imports_nothing_of_negalign():
    """issue #17 item 5: the exceptions' home imports no other negalign module; the old homes re-export them."""
    import ast

    import negalign.errors as errors
    from negalign.config import RecipeError
    from negalign.data import DataError
    from negalign.generation import GenerationError
    from negalign.offline_models import OfflineModelError
    from negalign.trainers.guard import NonFiniteError

    tree = ast.parse(open(errors.__file__).read())
    imported = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imported)
    assert (RecipeError, DataError, GenerationError, NonFiniteError, OfflineModelError) == (
        errors.RecipeError, errors.DataError, errors.GenerationError, errors.NonFiniteError, errors.OfflineModelError)
    assert issubclass(OfflineModelError, RecipeError) and issubclass(DataError, ValueError)
