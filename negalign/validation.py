"""Values and types of a recipe, checked when it loads (``negalign.config.load_recipe``, so also ``--dry-run``) from
each config field's type annotation, before any model or data is loaded. Every failure is a one-line ``RecipeError``
naming the key, the value and what it must be.

Booleans are parsed as booleans: ``'false'`` / ``'no'`` / ``'0'`` (a quoted string in YAML or an override) become
``False``; any other non-boolean value is an error. Numbers must be finite. A few fields have a range (batch sizes and
lengths at least 1, ``beta`` positive, or non-negative for the GRPO family where 0 turns the KL term off)."""

from __future__ import annotations

import enum
import math
import types
import typing

from negalign.config import RecipeError

TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}
AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "max_length", "max_prompt_length", "max_completion_length", "num_generations")
NON_NEGATIVE = ("learning_rate", "weight_decay", "warmup_ratio", "warmup_steps", "max_grad_norm")
MODEL_BOOLS = ("trust_remote_code",)
OUTPUT_BOOLS = ("push_to_hub", "private")


def parse_bool(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise RecipeError(f"{key}={value!r}: expects a boolean (true or false)")


def _describe(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(key: str, value, tp):
    """``value`` for a field annotated ``tp``, converted where the conversion is exact (``'false'`` -> False,
    ``4.0`` -> 4 for an int); raises RecipeError when it cannot be one."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(key, value, arg)
            except RecipeError:
                continue
        raise RecipeError(f"{key}={value!r}: expects {' or '.join(_describe(a) for a in args)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise RecipeError(f"{key}={value!r}: expects one of {', '.join(map(repr, typing.get_args(tp)))}")
        return value
    if tp is bool:
        return parse_bool(key, value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not value.is_integer()):
            raise RecipeError(f"{key}={value!r}: expects an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{key}={value!r}: expects a number")
        if not math.isfinite(value):
            raise RecipeError(f"{key}={value!r}: expects a finite number")
        return value
    if tp is str:
        if isinstance(value, (dict, list)):
            raise RecipeError(f"{key}={value!r}: expects a string")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        valid = [m.value for m in tp]
        if value not in valid:
            raise RecipeError(f"{key}={value!r}: expects one of {', '.join(map(str, valid))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple, str)):
            raise RecipeError(f"{key}={value!r}: expects a list")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, (dict, str)):
            raise RecipeError(f"{key}={value!r}: expects a mapping")
        return value
    return value


def _hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: check nothing rather than guess
        return {}


def _check_section(section: str, values: dict, hints: dict) -> None:
    for key, value in list(values.items()):
        if key in hints and not (section == "method" and key == "name"):
            values[key] = check_value(f"{section}.{key}", value, hints[key])


def validate_sections(sections: dict, config_cls) -> None:
    """Check (and convert in place) the values the recipe sets; raise RecipeError on the first bad one."""
    hints = _hints(config_cls)
    for s in ("method", "training"):
        _check_section(s, sections[s], hints)
    data = sections.get("data") or {}
    if data.get("name"):
        from negalign.data import LOADERS

        if data["name"] in LOADERS:
            _check_section("data", data, {k: v for k, v in _hints(LOADERS[data["name"]]).items() if k != "name"})
    for key in MODEL_BOOLS:
        if key in sections["model"]:
            sections["model"][key] = parse_bool(f"model.{key}", sections["model"][key])
    for key in OUTPUT_BOOLS:
        if key in sections["output"]:
            sections["output"][key] = parse_bool(f"output.{key}", sections["output"][key])
    _check_ranges(sections, config_cls)


def _check_ranges(sections: dict, config_cls) -> None:
    given = {**sections["training"], **{k: v for k, v in sections["method"].items() if k != "name"}}
    for key in AT_LEAST_ONE:
        if given.get(key) is not None and given[key] < 1:
            raise RecipeError(f"{_where(sections, key)}={given[key]!r}: must be at least 1")
    for key in NON_NEGATIVE:
        if given.get(key) is not None and given[key] < 0:
            raise RecipeError(f"{_where(sections, key)}={given[key]!r}: must not be negative")
    if "beta" in given and given["beta"] is not None:
        from trl import GRPOConfig

        if issubclass(config_cls, GRPOConfig):
            if given["beta"] < 0:
                raise RecipeError(f"method.beta={given['beta']!r}: must not be negative (0 turns the KL term off)")
        elif given["beta"] <= 0:
            raise RecipeError(f"method.beta={given['beta']!r}: must be positive (it divides the log-ratio)")
    epochs, steps = given.get("num_train_epochs"), given.get("max_steps")
    if steps is not None and steps == 0:
        raise RecipeError("training.max_steps=0: trains nothing; set a positive number, or -1 to use num_train_epochs")
    if epochs is not None and epochs <= 0 and not (steps is not None and steps > 0):
        raise RecipeError(f"training.num_train_epochs={epochs!r}: must be positive (or set training.max_steps)")
    out = sections["output"]
    if out.get("push_to_hub") and not out.get("repo_id"):
        raise RecipeError("output.push_to_hub is true but output.repo_id is not set; set output.repo_id=USER/NAME "
                          "(checked now so that the upload cannot fail after training)")


def _where(sections: dict, key: str) -> str:
    return f"method.{key}" if key in sections["method"] else f"training.{key}"

