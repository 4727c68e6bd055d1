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

SECTIONS = ("model", "data", "method", "training", "peft", "output")

# method name -> the module that trains it. The module defines CONFIG_CLASS (a dataclass extending a TRL config),
# optional METHOD_DEFAULTS {method name: {field: value}}, and train(recipe) -> dict of metrics.
METHODS = {
    "sft": "negalign.trainers.sft",
    "ga": "negalign.trainers.unlearn",
    "grad_diff": "negalign.trainers.unlearn",
    "npo": "negalign.trainers.unlearn",
    "npo_rt": "negalign.trainers.unlearn",
    "npo_kl": "negalign.trainers.unlearn",
    "simnpo": "negalign.trainers.unlearn",
    "psr": "negalign.trainers.nsr",
    "nsr": "negalign.trainers.nsr",
    "w_reinforce": "negalign.trainers.nsr",
    "reinforce": "negalign.trainers.nsr",
    "grpo": "negalign.trainers.nsr",
    "grpo_trl": "negalign.trainers.nsr",
    "nft": "negalign.trainers.nft",
    "d2o": "negalign.trainers.d2o",
    "madpo_reward": "negalign.trainers.madpo",
    "madpo": "negalign.trainers.madpo",
    "dpo": "negalign.trainers.madpo",
    "perstep_dpo": "negalign.trainers.perstep",
    "perstep_awr": "negalign.trainers.perstep",
    "dpo_full": "negalign.trainers.perstep",
    "rft": "negalign.trainers.perstep",
}

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
}
ALIASES = {"output_dir": "output.dir"}


class RecipeError(ValueError):
    """A recipe that cannot be run: unknown key, missing file, bad value. The message says what to change."""


def _closest(key: str, valid) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def _unknown(section: str, key: str, valid) -> RecipeError:
    shown = ", ".join(sorted(valid)) if len(valid) <= 12 else f"{len(valid)} keys, see `negalign train --help`"
    return RecipeError(f"unknown key {section}.{key!r}.{_closest(key, valid)} Valid {section} keys: {shown}")


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

    def build_config(self, **extra):
        """The method's TRL config from ``training`` + ``method`` (+ ``extra``), with CPU-friendly defaults."""
        mod = self.module()
        kwargs = dict(getattr(mod, "METHOD_DEFAULTS", {}).get(self.method_name, {}))
        kwargs.update({k: v for k, v in self.sections["method"].items() if k != "name"})
        kwargs.update(self.sections["training"])
        kwargs.update(extra)
        kwargs["output_dir"] = self.output_dir
        kwargs.setdefault("report_to", "none")
        if not accelerator_available():
            kwargs.setdefault("use_cpu", True)
            # TRL defaults bf16 to True; on a CPU keep float32 unless the launcher asked for bf16
            # (`accelerate launch` with mixed_precision: bf16 sets ACCELERATE_MIXED_PRECISION, and DeepSpeed
            # refuses a config whose bf16 disagrees with the trainer's).
            kwargs.setdefault("bf16", os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16")
        return mod.CONFIG_CLASS(**kwargs)


def accelerator_available() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


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
        if "." not in key:
            owners = [s for s in SECTIONS if key in accepts(s)]
            if not owners:
                every = {k for s in SECTIONS for k in accepts(s)} | set(ALIASES)
                raise RecipeError(f"unknown override key {key!r}.{_closest(key, every)} Use section.key, e.g. training.{key}")
            if len(owners) > 1:
                raise RecipeError(f"override key {key!r} is ambiguous ({', '.join(owners)}); write section.{key}")
            key = f"{owners[0]}.{key}"
        elif key.split(".", 1)[0] not in SECTIONS:
            raise RecipeError(f"unknown section in override {key!r}; sections are {', '.join(SECTIONS)}")
        _set_path(sections, key, parse_value(raw))


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
            raise _unknown("recipe", key, SECTIONS)
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
                raise _unknown(s, key, valid)
    kit = sections["model"].get("kit")
    if kit is not None:
        for key in kit:
            if key not in KIT_KEYS:
                raise _unknown("model.kit", key, KIT_KEYS)
    elif not sections["model"].get("name_or_path"):
        raise RecipeError("model needs name_or_path (a Hub id or a local folder) or kit (an offline kit model)")
    from negalign.validation import validate_sections

    validate_sections(sections, mod.CONFIG_CLASS)  # values and types, from each field's annotation (one-line errors)
    return Recipe(sections=sections, path=str(path) if path else None, overrides=overrides)


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
