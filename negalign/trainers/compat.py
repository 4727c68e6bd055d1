"""Every private TRL / transformers name negalign uses, in one table, and the check each trainer module runs at import.

negalign's trainers are thin subclasses of TRL's: they override private methods (``DPOTrainer._compute_loss``,
``GRPOTrainer._generate_and_score_completions``, ...), read private attributes (``_metrics``, ``_tp_size``) and import
helpers from TRL's internal modules (``trl.data_utils._tokenize``). None of these is a stable API; they change between
minor versions, and an override of a method that no longer exists is silently never called. So each trainer module
calls :func:`check` for the owners it uses, at import: outside the tested version range, or when a listed name is gone,
it raises ``ImportError`` naming the missing name, its user in negalign and the tested range.

``NEGALIGN_ALLOW_UNTESTED_TRL=1`` (``..._TRANSFORMERS=1``) skips the version-range check at your own risk; a missing
name is always an error (the code that uses it cannot work).

Adding a use of a private name: add it to the owner's row below (and the user to ``users``); ``tests/test_compat.py``
checks the table against the installed versions.
"""

from __future__ import annotations

import importlib
import os
import types
from dataclasses import dataclass

from packaging.version import Version

# [low, high) per package: pyproject's pins, the versions the test suite runs with
TESTED = {"trl": ("1.16.0", "1.17.0"), "transformers": ("5.20.0", "5.24.0")}
ALLOW_UNTESTED_ENV = {"trl": "NEGALIGN_ALLOW_UNTESTED_TRL", "transformers": "NEGALIGN_ALLOW_UNTESTED_TRANSFORMERS"}


@dataclass(frozen=True)
class PrivateUse:
    """The private names negalign uses from one TRL / transformers class or module.

    ``names``: looked up on the owner (methods overridden or called, class attributes, module-level helpers).
    ``attributes``: instance attributes the owner's own code sets or reads (found in its byte code, so the check runs
    without building a trainer)."""

    owner: str  # "package.module:Class" or "package.module"
    names: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    @property
    def package(self) -> str:
        return self.owner.split(".", 1)[0]


PRIVATE_API: dict[str, PrivateUse] = {
    "trl.GRPOTrainer": PrivateUse(
        "trl.trainer.grpo_trainer:GRPOTrainer",
        names=("_generate", "_generate_and_score_completions", "_calculate_rewards",
               "_get_per_token_logps_and_entropies", "_compute_loss", "_tag_names"),
        attributes=("_buffered_inputs", "_step", "_metrics", "_tokenizer"),
        users=("trainers.nsr", "trainers.nft", "benchmarks.rl_step"),
    ),
    "trl.DPOTrainer": PrivateUse(
        "trl.trainer.dpo_trainer:DPOTrainer",
        names=("_prepare_dataset", "_precompute_ref_logps", "_compute_loss", "_set_signature_columns_if_needed",
               "_tag_names"),
        attributes=("_metrics", "_total_train_tokens", "_tp_size", "_tokenizer", "_precompute_engine"),
        users=("trainers.d2o", "trainers.madpo", "trainers.perstep", "trainers.common.dpo_reference_scorer",
               "trainers.common.precompute_dpo_reference"),
    ),
    "trl._BaseTrainer": PrivateUse(  # TRL's private base class of its trainers; negalign's unlearning trainer subclasses it
        "trl.trainer.base_trainer:_BaseTrainer",
        names=("_tag_names", "_name", "_paper"),
        users=("trainers.unlearn (subclass; _tag_names, _name, _paper, _metrics)", "hub.attach_to_trainer"),
    ),
    "trl.trainer.base_trainer": PrivateUse(
        "trl.trainer.base_trainer", names=("_BaseTrainer",), users=("trainers.unlearn",),
    ),
    "trl.trainer.base_config": PrivateUse(
        "trl.trainer.base_config", names=("_BaseConfig",), users=("trainers.unlearn_config",),
    ),
    "trl.data_utils": PrivateUse(
        "trl.data_utils", names=("_tokenize", "common_prefix_length"), users=("trainers.d2o", "trainers.madpo"),
    ),
    # public names of TRL modules that are not part of its documented API
    "trl.models.utils": PrivateUse(
        "trl.models.utils", names=("unwrap_model_for_generation", "prepare_deepspeed"),
        users=("trainers.d2o.refresh_anchors", "trainers.common.dpo_reference_scorer", "trainers.unlearn"),
    ),
    "trl.trainer.dpo_trainer": PrivateUse(
        "trl.trainer.dpo_trainer", names=("DataCollatorForPreference",), users=("trainers.madpo",),
    ),
    "transformers.Trainer": PrivateUse(
        "transformers.trainer:Trainer",
        names=("_get_num_items_in_batch", "_get_grad_norm", "_set_signature_columns_if_needed", "_prepare_inputs",
               "_save_checkpoint", "_load_rng_state", "_get_output_dir"),
        attributes=("_signature_columns",),
        users=("trainers.perstep (_get_num_items_in_batch)", "trainers.guard (_get_grad_norm)",
               "trainers.nsr (_save_checkpoint, _load_rng_state, _get_output_dir)",
               "trainers.d2o (_prepare_inputs)", "trainers.unlearn (_save_checkpoint, _signature_columns)"),
    ),
    "transformers.PretrainedConfig": PrivateUse(
        "transformers.configuration_utils:PretrainedConfig", attributes=("_name_or_path",),
        users=("trainers.d2o (vLLM anchors from the reference's folder)",),
    ),
    "transformers.integrations.deepspeed": PrivateUse(
        "transformers.integrations.deepspeed",
        names=("_hf_deepspeed_config_weak_ref", "set_hf_deepspeed_config", "unset_hf_deepspeed_config"),
        users=("models.unsharded_loading",),
    ),
}


def tested_range(package: str) -> str:
    low, high = TESTED[package]
    return f"{package}>={low},<{high}"


def _resolve(owner: str):
    module, _, cls = owner.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, cls) if cls else obj


def _code_names(code: types.CodeType, out: set) -> None:
    out.update(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_names(const, out)


def _attribute_names(cls) -> set[str]:
    """Every attribute name the code of ``cls`` and its bases (its own methods, nested functions included) touches."""
    out: set[str] = set()
    for klass in cls.__mro__:
        for value in vars(klass).values():
            func = getattr(value, "fget", None) or getattr(value, "__func__", None) or value
            code = getattr(func, "__code__", None)
            if isinstance(code, types.CodeType):
                _code_names(code, out)
    return out


def check_version(package: str) -> None:
    """Raise ``ImportError`` unless the installed ``package`` (trl or transformers) is in its tested range."""
    if os.environ.get(ALLOW_UNTESTED_ENV[package]) == "1":
        return
    found = Version(importlib.import_module(package).__version__)
    low, high = (Version(v) for v in TESTED[package])
    if not low <= found < high:
        raise ImportError(
            f"negalign's trainers use private {package} API and are tested with {tested_range(package)}; found "
            f"{package} {found}. Install a tested version (pip install '{tested_range(package)}') or set "
            f"{ALLOW_UNTESTED_ENV[package]}=1 to try anyway."
        )


def missing(key: str) -> list[str]:
    """The names of ``PRIVATE_API[key]`` the installed package lacks."""
    use = PRIVATE_API[key]
    try:
        owner = _resolve(use.owner)
    except (ImportError, AttributeError) as e:  # the class or module itself is gone
        return [f"{use.owner.replace(':', '.')} ({type(e).__name__}: {e})"]
    gone = [n for n in use.names if not hasattr(owner, n)]
    if use.attributes:
        seen = _attribute_names(owner) if isinstance(owner, type) else set(vars(owner))
        gone += [n for n in use.attributes if n not in seen]
    return gone


def check(*keys: str) -> None:
    """Raise ``ImportError`` if a package of ``keys`` (rows of ``PRIVATE_API``) is outside its tested range or lacks
    one of the private names negalign uses from it. Each trainer module calls this at import for what it uses."""
    for key in keys:
        use = PRIVATE_API[key]
        check_version(use.package)
        gone = missing(key)
        if gone:
            version = importlib.import_module(use.package).__version__
            names = ", ".join(n if " " in n else f"{use.owner.replace(':', '.')}.{n}" for n in gone)
            raise ImportError(
                f"{use.package} {version} lacks {names}, private API used by negalign ({', '.join(use.users)}); "
                f"negalign is tested with {tested_range(use.package)} (pip install '{tested_range(use.package)}')."
            )
