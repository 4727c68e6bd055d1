"""Recipes: one YAML schema for every method, resolved into the method's TRL config.

A recipe has six sections::

    model:    {name_or_path, dtype, kit}                 # kit: build an offline kit model instead of loading one
    data:     {name, path, ...}                          # keys of the loader named by `name` (negalign.data.LOADERS)
    method:   {name, ...hyper-parameters}                # fields the method's config adds to TRL's (e.g. beta)
    training: {learning_rate, max_steps, ...}            # TRL / transformers TrainingArguments names
    peft:     null | {r, lora_alpha, target_modules, ...} # peft.LoraConfig names
    output:   {dir, push_to_hub, repo_id, private}

``key=value`` overrides take a dotted path (``training.learning_rate=1e-5``) or a bare key that exactly one section
accepts (``max_steps=4``; ``output_dir`` means ``output.dir``). Values are parsed as YAML. Every key is checked
against the method's config before anything heavy happens; an unknown one is an error naming the closest valid key.
"""

from __future__ import annotations

import copy
import os
import dataclasses
import difflib
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from negalign import methods as _method_records

SECTIONS = ("model", "data", "method", "training", "peft", "output")

# method name -> the module that trains it, from the method records (negalign.methods: one record per method). The
# module defines CONFIG_CLASS (a dataclass extending a TRL config), optional METHOD_DEFAULTS {method name: {field:
# value}} (read through ``Method.defaults()``), and train(recipe) -> dict of metrics.
METHODS = {name: record.trainer for name, record in _method_records.METHODS.items()}

MODEL_KEYS = {
    "name_or_path": "Hub id or local folder of the model to train.",
    "dtype": "Weights dtype: auto, float32, bfloat16 or float16.",
    "attn_implementation": "transformers attention implementation (eager, sdpa, flash_attention_2).",
    "trust_remote_code": "Allow custom modelling code from the Hub.",
    "kit": "Build an offline kit model instead: {dir, arch, size, vocab_size, seed} (corpus = the recipe's data).",
    "ref_name_or_path": "Reference model when it differs from the starting model (default: the starting model).",
    "revision": "Hub revision (commit, tag or branch) of name_or_path; pin it for a paper's numbers.",
}
KIT_KEYS = ("dir", "arch", "size", "vocab_size", "seed")
OUTPUT_KEYS = {
    "dir": "Output directory (checkpoints, results.json, the final model).",
    "push_to_hub": "Upload the final model with a model card after training.",
    "repo_id": "Hub repository id for push_to_hub.",
    "private": "Create the Hub repository as private.",
    "license": "License of the model on the Hub (the model card's license), e.g. apache-2.0.",
}
ALIASES = {"output_dir": "output.dir"}


from negalign.errors import RecipeError  # noqa: E402,F401  (its home; re-exported here)


def _closest(key: str, valid) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def _unknown(section: str, key: str, valid, elsewhere: dict | None = None, method: str | None = None) -> RecipeError:
    """The error for ``section.key`` that ``section`` does not take. It never echoes the typo back as advice: it
    names the section that does take ``key`` (``elsewhere``: section -> its keys), else the closest valid key written
    out in full, else where to list the valid keys."""
    owners = [s for s, keys in (elsewhere or {}).items() if s != section and key in keys]
    for_method = f" for method {method}" if method else ""
    if owners:
        return RecipeError(f"{section}.{key} is not a {section} key{for_method}: it is {owners[0]}.{key}; write "
                           f"{owners[0]}.{key}=VALUE (or {key}=VALUE)")
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    hint = f" Did you mean {section}.{match[0]}?" if match else ""
    if len(valid) <= 12:
        shown = f"Valid {section} keys: {', '.join(sorted(valid))}"
    else:
        shown = f"List the {len(valid)} {section} keys with `negalign train --show-keys {section}{' ' + method if method else ''}`"
    return RecipeError(f"unknown key {section}.{key}{for_method}.{hint} {shown}")


def method_module(name: str):
    if name not in METHODS:
        raise RecipeError(f"unknown method {name!r}.{_closest(name, METHODS)} Known methods: {', '.join(METHODS)}")
    return importlib.import_module(METHODS[name])


def config_fields(config_cls) -> tuple[dict[str, dataclasses.Field], dict[str, dataclasses.Field]]:
    """Split a method config's fields into (method fields added by negalign, training fields inherited from TRL)."""
    own: dict[str, dataclasses.Field] = {}
    for cls in config_cls.__mro__:
        if cls.__module__.startswith("negalign") and dataclasses.is_dataclass(cls):
            for name in getattr(cls, "__annotations__", {}):
                own.setdefault(name, None)
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    method = {k: v for k, v in fields.items() if k in own}
    training = {k: v for k, v in fields.items() if k not in own}
    return method, training


@dataclass
class Recipe:
    """A resolved recipe. ``sections`` holds the six sections as plain dicts; ``path`` the file it came from."""

    sections: dict[str, Any]
    path: str | None = None
    overrides: list[str] = field(default_factory=list)

    def __getattr__(self, name):
        sections = self.__dict__.get("sections", {})
        if name in SECTIONS:
            return sections.get(name)
        raise AttributeError(name)

    @property
    def method_name(self) -> str:
        return self.sections["method"]["name"]

    @property
    def output_dir(self) -> str:
        return self.sections["output"].get("dir") or self.sections["training"].get("output_dir") or "runs/default"

    def module(self):
        return method_module(self.method_name)

    def to_dict(self) -> dict:
        return copy.deepcopy(self.sections)

    def resolved(self) -> dict:
        """The configuration the run gets, defaults filled in (``negalign train --dry-run``): ``method`` and
        ``training`` are the fields of the method's config as the trainer receives it, ``data`` the loader's fields,
        ``peft`` LoraConfig's; tokens are redacted."""
        config = self.build_config()
        own, _ = config_fields(type(config))
        values = {k: _plain(v) for k, v in config.to_dict().items()}
        out = self.to_dict()
        out["method"] = {"name": self.method_name, **{k: values[k] for k in own if k in values}}
        out["training"] = {k: v for k, v in values.items() if k not in own}
        if self.sections["data"].get("name"):
            from negalign.data import LOADERS

            data = dict(self.sections["data"])
            loader = LOADERS[data.pop("name")](**data)
            out["data"] = {"name": self.sections["data"]["name"],
                           **{f.name: _plain(getattr(loader, f.name)) for f in dataclasses.fields(loader)}}
        if self.sections["peft"]:
            from peft import LoraConfig

            lora = LoraConfig(**{"task_type": "CAUSAL_LM", **self.sections["peft"]})
            out["peft"] = {k: _plain(getattr(lora, k)) for k in sorted(_peft_keys()) if hasattr(lora, k)}
        return out

    def build_config(self, **extra):
        """The method's TRL config from ``training`` + ``method`` (+ ``extra``), with CPU-friendly defaults."""
        mod = self.module()
        cls = mod.CONFIG_CLASS
        kwargs = _renamed(_method_records.get(self.method_name).defaults(), cls)  # each layer renamed
        kwargs.update(_renamed({k: v for k, v in self.sections["method"].items() if k != "name"}, cls))
        kwargs.update(_renamed(self.sections["training"], cls))
        kwargs.update(_renamed(extra, cls))
        kwargs["output_dir"] = self.output_dir
        _activation_checkpointing_default(kwargs, cls)
        kwargs.setdefault("report_to", "none")
        if not accelerator_available():
            kwargs.setdefault("use_cpu", True)
            # TRL defaults bf16 to True; on a CPU keep float32 unless the launcher asked for bf16
            # (`accelerate launch` with mixed_precision: bf16 sets ACCELERATE_MIXED_PRECISION, and DeepSpeed
            # refuses a config whose bf16 disagrees with the trainer's).
            kwargs.setdefault("bf16", os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16")
        return mod.CONFIG_CLASS(**kwargs)


def _plain(value):
    """``value`` as plain YAML data (enums by value, sets and tuples as lists, anything else unknown as its text)."""
    import enum

    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


RENAMED = {"gradient_checkpointing": "activation_checkpointing",
           "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}  # transformers 5.23: old -> new


def _renamed(values: dict, config_cls) -> dict:
    """``values`` with transformers' deprecated ``gradient_checkpointing*`` names under their new names
    (``activation_checkpointing*``). transformers 5.23 warns (FutureWarning) whenever an old name decides the value;
    recipes, presets and quickstarts may still use either. Applied to each layer of a config (presets, recipe, extra)
    so that a later layer's new name overrides an earlier layer's old one."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    out = dict(values)
    for old, new in RENAMED.items():
        if new not in fields or old not in out:  # an older transformers: nothing renamed
            continue
        value = out.pop(old)
        if out.get(new) is not None and value is not None and out[new] != value:
            raise RecipeError(f"training.{old}={value!r} and training.{new}={out[new]!r} disagree; {old} is "
                              f"transformers' old name of {new}: keep only training.{new}")
        if out.get(new) is None:
            out[new] = value
    return out


def _activation_checkpointing_default(kwargs: dict, config_cls) -> None:
    """TRL's configs default the old name to True, which alone triggers the warning on every run: when no layer set
    the new name, pass the class's default of the old one under the new one (same behaviour, no warning)."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for old, new in RENAMED.items():
        if new in fields and kwargs.get(new) is None and old in fields and \
                fields[old].default not in (None, dataclasses.MISSING):
            kwargs[new] = fields[old].default


from negalign.distributed import accelerator_available  # noqa: E402,F401  (its home; re-exported here)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-5`` as a string; recipes mean a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?[0-9][0-9_]*\.[0-9_]*$|^[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


def parse_value(text: str):
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def _set_path(sections: dict, dotted: str, value) -> None:
    head, *rest = dotted.split(".")
    node = sections.setdefault(head, {})
    if node is None:
        node = sections[head] = {}
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = value


def apply_overrides(sections: dict, overrides: list[str], accepts) -> None:
    """Apply ``key=value`` strings. ``accepts(section) -> set of keys`` resolves bare keys to their section."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = ALIASES.get(key, key)
        if key in SECTIONS:  # a whole section: peft=null turns LoRA off; SECTION={k: v} sets several keys at once
            _set_section(sections, key, parse_value(raw))
            continue
        if "." not in key:
            owners = [s for s in SECTIONS if key in accepts(s)]
            if not owners:
                close = [(m, s) for s in SECTIONS for m in difflib.get_close_matches(key, list(accepts(s)), n=1,
                                                                                    cutoff=0.5)]
                close.sort(key=lambda ms: -difflib.SequenceMatcher(None, key, ms[0]).ratio())
                hint = (f" Did you mean {close[0][1]}.{close[0][0]}?" if close else
                        " List a section's keys with `negalign train --show-keys SECTION`.")
                raise RecipeError(f"unknown override key {key!r}: no recipe section takes it.{hint}")
            if len(owners) > 1:
                raise RecipeError(f"override key {key!r} is ambiguous ({', '.join(owners)}); write section.{key}")
            key = f"{owners[0]}.{key}"
        elif key.split(".", 1)[0] not in SECTIONS:
            raise RecipeError(f"unknown section in override {key!r}; sections are {', '.join(SECTIONS)}")
        section, _, leaf = key.partition(".")
        for old, new in RENAMED.items():  # an override replaces the recipe's value under either name
            if leaf in (old, new) and isinstance(sections.get(section), dict):
                sections[section].pop(old, None)
                sections[section].pop(new, None)
        _set_path(sections, key, parse_value(raw))


def _set_section(sections: dict, name: str, value) -> None:
    if value is None:
        if name != "peft":
            raise RecipeError(f"{name}=null: only the peft section can be removed (peft=null trains all weights)")
        sections[name] = None
    elif isinstance(value, dict):
        sections[name] = {**(sections.get(name) or {}), **value}
    else:
        raise RecipeError(f"{name}={value!r}: a section takes a mapping ({name}={{key: value}}) or, for peft, null; "
                          f"to set one key write {name}.KEY=VALUE")


def _data_keys(data: dict) -> set[str] | None:
    from negalign.data import LOADERS

    name = (data or {}).get("name")
    if name is None:
        return None
    if name not in LOADERS:
        raise RecipeError(f"unknown data loader {name!r}.{_closest(name, LOADERS)} Known: {', '.join(LOADERS)}")
    return {"name"} | {f.name for f in dataclasses.fields(LOADERS[name])}


def _peft_keys() -> set[str]:
    from peft import LoraConfig

    return {f.name for f in dataclasses.fields(LoraConfig)} - {"peft_type", "task_type"} | {"task_type"}


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None) -> Recipe:
    """Read a YAML recipe (or take ``data`` as its dict), apply overrides and validate every key."""
    overrides = list(overrides or [])
    if data is None:
        if path is None:
            raise RecipeError("no recipe given")
        p = Path(path)
        if not p.is_file():
            raise RecipeError(f"recipe file not found: {p}")
        try:
            data = yaml_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping with the sections " + ", ".join(SECTIONS))
    sections = {s: copy.deepcopy(data.get(s)) for s in SECTIONS}
    for key in data:
        if key not in SECTIONS:
            raise RecipeError(f"unknown recipe section {key!r}.{_closest(key, SECTIONS)} Sections: {', '.join(SECTIONS)}")
    for s in SECTIONS:
        if s != "peft" and sections[s] is None:
            sections[s] = {}

    # resolve overrides of method.name first: the method decides which keys are valid
    for item in list(overrides):
        if item.startswith("method.name="):
            sections["method"]["name"] = parse_value(item.split("=", 1)[1])
    if "name" not in sections["method"]:
        raise RecipeError(f"the recipe has no method.name; known methods: {', '.join(METHODS)}")
    mod = method_module(sections["method"]["name"])
    method_fields, training_fields = config_fields(mod.CONFIG_CLASS)

    def accepts(section):
        if section == "model":
            return set(MODEL_KEYS)
        if section == "data":
            return _data_keys(sections["data"]) or set()
        if section == "method":
            return set(method_fields) | {"name"}
        if section == "training":
            return set(training_fields) - {"output_dir"}
        if section == "peft":
            return _peft_keys()
        return set(OUTPUT_KEYS)

    apply_overrides(sections, overrides, accepts)
    for s in SECTIONS:
        if s == "peft" and sections[s] is None:
            continue
        if not isinstance(sections[s], dict):
            raise RecipeError(f"recipe section {s!r} must be a mapping, got {type(sections[s]).__name__}")
        valid = accepts(s)
        if s == "training" and "output_dir" in sections[s]:
            sections["output"].setdefault("dir", sections[s].pop("output_dir"))
        if s == "data" and not valid:
            if sections[s]:
                raise RecipeError("recipe section 'data' needs a 'name' (the loader); known: see negalign.data.LOADERS")
            continue
        for key in sections[s]:
            if key not in valid:
                elsewhere = {o: accepts(o) for o in ("model", "data", "method", "training", "output")}
                raise _unknown(s, key, valid, elsewhere, sections["method"]["name"])
    kit = sections["model"].get("kit")
    if kit is not None:
        for key in kit:
            if key not in KIT_KEYS:
                raise _unknown("model.kit", key, KIT_KEYS)
        # by default the kit model lives inside the run's output directory, not under the working directory
        sections["model"]["kit"] = {"dir": kit_dir_default(sections), **kit} if "dir" not in kit else dict(kit)
    elif not sections["model"].get("name_or_path"):
        raise RecipeError("model needs name_or_path (a Hub id or a local folder) or kit (an offline kit model)")
    from negalign.validation import validate_sections

    validate_sections(sections, mod.CONFIG_CLASS)  # values and types, from each field's annotation (one-line errors)
    return Recipe(sections=sections, path=str(path) if path else None, overrides=overrides)


def kit_dir_default(sections: dict) -> str:
    """Where a kit model without ``model.kit.dir`` is written: ``kit/`` inside the run's output directory."""
    out = (sections.get("output") or {}).get("dir") or (sections.get("training") or {}).get("output_dir") or "runs/default"
    return str(Path(out) / "kit")


def section_keys(section: str, method: str | None = None, data_name: str | None = None) -> dict[str, tuple[Any, str]]:
    """``key -> (default, help)`` for one recipe section (``negalign train --show-keys SECTION [METHOD]``). The
    method and training sections need ``method`` (its config class decides); without one, training lists the keys
    every method takes (transformers' TrainingArguments). The data section needs the loader's name."""
    def from_fields(fields, presets=None):
        presets = presets or {}
        out = {}
        for name, f in fields.items():
            if name in presets:
                default = presets[name]
            elif f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            out[name] = (default, " ".join(str(f.metadata.get("help", "")).split()))
        return out

    if section == "model":
        return {k: (None, v) for k, v in MODEL_KEYS.items()}
    if section == "output":
        return {k: (None, v) for k, v in OUTPUT_KEYS.items()}
    if section == "peft":
        from peft import LoraConfig

        return {k: v for k, v in from_fields({f.name: f for f in dataclasses.fields(LoraConfig)}).items()
                if k in _peft_keys()}
    if section == "data":
        from negalign.data import LOADERS

        if data_name is None:
            raise RecipeError(f"the data keys depend on the loader: name one ({', '.join(LOADERS)}), e.g. "
                              "`negalign train --show-keys data qa`, or give a recipe")
        if data_name not in LOADERS:
            raise RecipeError(f"unknown data loader {data_name!r}.{_closest(data_name, LOADERS)} Known: {', '.join(LOADERS)}")
        return {"name": (data_name, "The loader."), **from_fields({f.name: f for f in dataclasses.fields(LOADERS[data_name])})}
    if section in ("method", "training"):
        if method is None:
            if section == "method":
                raise RecipeError(f"the method keys depend on the method: name one, e.g. `negalign train --show-keys "
                                  f"method npo` (methods: {', '.join(METHODS)})")
            from transformers import TrainingArguments

            fields = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init and f.name != "output_dir"}
            return from_fields(fields)
        mod = method_module(method)
        own, training = config_fields(mod.CONFIG_CLASS)
        presets = _method_records.get(method).defaults()
        if section == "method":
            return {"name": (method, "The method."), **from_fields(own, presets)}
        return from_fields({k: v for k, v in training.items() if k != "output_dir"}, presets)
    raise RecipeError(f"unknown recipe section {section!r}.{_closest(section, SECTIONS)} Sections: {', '.join(SECTIONS)}")


def describe_fields(config_cls, presets: dict | None = None) -> str:
    """Help text for a method config: its own fields, their defaults (``presets`` first: the method's
    METHOD_DEFAULTS entry) and their help (for `negalign train --show-method`)."""
    method, _ = config_fields(config_cls)
    presets = presets or {}
    lines = []
    for name, f in method.items():
        default = presets.get(name, f.default if f.default is not dataclasses.MISSING else None)
        lines.append(f"  method.{name} (default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)
