"""``negalign push DIR --repo-id USER/NAME``: upload a trained model folder to the Hugging Face Hub with a model card.

The folder is what ``negalign train`` leaves (``config.json``, safetensors weights or a PEFT adapter, the tokenizer,
``results.json``). The card is a ``huggingface_hub.ModelCard`` built from the method's record
(``negalign.methods``: title, paper, citation, tags, pipeline tag) and the run's ``results.json`` (the resolved
recipe: base model, data set; the measured metrics). Measured TOFU numbers and pass@k become ``model-index`` results.

There is one card and one push path: ``negalign push``, the recipe's ``output.push_to_hub`` and TRL's
``trainer.push_to_hub()`` (and the card TRL's trainers write at save time, ``create_model_card``) all go through
:func:`build_card` / :func:`push`; :func:`attach_to_trainer` installs that on every negalign trainer. The local
``README.md`` is replaced only after the upload succeeded (a failed upload leaves the old one in place).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from negalign.config import RecipeError

# files never uploaded: checkpoints, logs, evaluations, the offline kit model a run builds inside its output
# directory (``kit/``, the default ``model.kit.dir``; a recipe's own kit dir under the folder is added by :func:`push`)
# and the trainers' caches (per-step samples and step values, D2O anchors, unlearning reference log-probs)
IGNORE = ["checkpoint-*", "checkpoint-*/**", "*.tmp", "runs/**", "tofu_eval/**", "training_args.bin", "kit", "kit/**",
          "perstep_cache/**", "anchors.jsonl", "ref_*_logps.json"]
TOFU_KEYS = [
    ("forget_quality", "Forget quality (KS p-value vs retain model)"),
    ("model_utility", "Model utility (harmonic mean of 9)"),
    ("forget_rouge", "Forget ROUGE-L recall"),
    ("forget_prob", "Forget probability"),
    ("forget_truth_ratio", "Forget truth ratio"),
    ("retain_rouge", "Retain ROUGE-L recall"),
    ("retain_prob", "Retain probability"),
    ("real_authors_rouge", "Real authors ROUGE-L recall"),
    ("world_facts_rouge", "World facts ROUGE-L recall"),
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_hub_id(name) -> bool:
    """``user/name`` that is not a folder here (a relative folder such as ``runs/x`` that exists is local)."""
    return isinstance(name, str) and bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


# ------------------------------------------------------------------------------------------------------------------
# measured metrics
# ------------------------------------------------------------------------------------------------------------------


def find_tofu_metrics(folder: Path, eval_results: str | None = None) -> tuple[dict | None, str | None]:
    """(TOFU summary, where it came from): ``eval_results`` if given, else the folder's own results, else the last
    in-training evaluation."""
    candidates = []
    if eval_results:
        p = Path(eval_results)
        p = p / "results.json" if p.is_dir() else p
        if not p.is_file():
            raise RecipeError(f"--eval-results file not found: {p}")
        candidates.append(p)
    candidates.append(folder / "results.json")
    steps = sorted((folder / "tofu_eval").glob("step-*/results.json"),
                   key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    candidates.extend(reversed(steps))
    for p in candidates:
        data = _read_json(p)
        if not data:
            continue
        metrics = data.get("metrics") or data.get("summary") or {}
        if any(k in metrics for k, _ in TOFU_KEYS):
            return {**metrics, "split": data.get("split")}, str(p)
    return None, None


def find_passk(folder: Path, eval_results: str | None = None) -> dict | None:
    """pass@k of this model from a ``negalign eval passk`` results.json (``--eval-results``): the entry whose path is
    ``folder``, else the only entry. ``{"curve": {k: p}, "data", "split", "n", "source"}`` or None."""
    if not eval_results:
        return None
    p = Path(eval_results)
    p = p / "results.json" if p.is_dir() else p
    data = _read_json(p) or {}
    models = data.get("models") or (data.get("metrics") or {}).get("models") or {}
    if not models:
        return None
    mine = [r for r in models.values() if r.get("path") and Path(r["path"]).resolve() == folder.resolve()]
    entry = mine[0] if mine else (next(iter(models.values())) if len(models) == 1 else None)
    if not entry or not entry.get("pass_at_k"):
        return None
    return {"curve": entry["pass_at_k"], "data": data.get("data"), "split": data.get("split"), "n": data.get("n"),
            "source": str(p)}


# ------------------------------------------------------------------------------------------------------------------
# facts from the recipe
# ------------------------------------------------------------------------------------------------------------------


def dataset_ids(recipe: dict) -> list[str]:
    """The Hub data set the run trained on: ``data.path`` when it is a Hub id, else the Hub id of the loader's data
    set when the recipe read a local copy of it (``negalign.methods.DATASETS``); none for synthetic or unknown data."""
    from negalign.methods import DATASETS

    data = recipe.get("data") or {}
    path = data.get("path")
    if is_hub_id(path):
        return [path]
    ds = DATASETS.get(data.get("name"))
    return [ds] if ds else []


def folder_origin(folder: Path, depth: int = 0) -> str | None:
    """The Hub model a local folder came from, when the folder records it: a negalign run's ``results.json`` (its
    recipe's model, followed back), a model card's ``base_model``, an adapter's ``base_model_name_or_path`` or
    ``config.json``'s ``_name_or_path``."""
    if depth > 5:
        return None
    results = _read_json(folder / "results.json") or {}
    model = (results.get("recipe") or {}).get("model") or {}
    if model and model.get("kit") is None:
        base, _ = resolve_base_model({"model": model}, depth=depth + 1)
        if base:
            return base
    readme = folder / "README.md"
    if readme.is_file():
        from huggingface_hub import ModelCard

        try:
            base = ModelCard.load(readme).data.base_model
        except Exception:  # a README without valid metadata records nothing
            base = None
        base = base[0] if isinstance(base, list) and base else base
        if is_hub_id(base):
            return base
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("config.json", "_name_or_path")):
        value = (_read_json(folder / name) or {}).get(key)
        if is_hub_id(value):
            return value
    return None


def resolve_base_model(recipe: dict, depth: int = 0) -> tuple[str | None, str | None]:
    """(Hub id of the model the run started from, or None; a note for the card: why it is omitted, or how the start
    differs from it)."""
    model = recipe.get("model") or {}
    if model.get("kit") is not None:
        return None, "trained from an offline kit model (random weights built locally), so it has no base model"
    name = model.get("name_or_path")
    if not name:
        return None, "the recipe names no starting model"
    if str(name).startswith("offline:"):
        from negalign.offline_models import OFFLINE_MODELS

        known = OFFLINE_MODELS.get(str(name))
        if known is None:
            return None, f"started from the unknown offline model `{name}`; base_model is omitted"
        # the Hub model the GGUF was quantised from: the lineage a Hub user follows (and loads an adapter onto)
        return known.hub_origin, (f"started from `{name}`: {known.description}. Its weights are the de-quantised "
                                  f"GGUF, so they differ from `{known.hub_origin}`'s by the quantisation error")
    if is_hub_id(name):
        return name, None
    origin = folder_origin(Path(str(name)).expanduser(), depth) if Path(str(name)).expanduser().is_dir() else None
    if origin:
        return origin, None
    return None, (f"started from the local folder `{name}`, which records no Hub origin; base_model is omitted "
                  "(give it with `negalign push --base-model HUB_ID`)")


# ------------------------------------------------------------------------------------------------------------------
# the card
# ------------------------------------------------------------------------------------------------------------------


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def build_card(folder, repo_id: str | None = None, eval_results: str | None = None, base_model: str | None = None,
               license: str | None = None, recipe: dict | None = None, method: str | None = None,
               is_adapter: bool | None = None):
    """The ``huggingface_hub.ModelCard`` of ``folder``. ``recipe`` / ``method`` default to the folder's
    results.json (a trainer passes its own before results.json exists)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from negalign.methods import DATASET_PAPERS, get

    folder = Path(folder)
    results = _read_json(folder / "results.json") or {}
    recipe = recipe if recipe is not None else (results.get("recipe") or {})
    method = method or results.get("method") or (recipe.get("method") or {}).get("name")
    if not method:
        raise RecipeError(f"{folder} does not say which method trained it (no results.json with a recipe)")
    record = get(method)
    name = (repo_id or folder.name).split("/")[-1]
    license = license or (recipe.get("output") or {}).get("license")  # the recipe's output.license
    notes = []
    base, note = (base_model, None) if base_model else resolve_base_model(recipe)
    if note:
        notes.append(note)
    if is_adapter is None:
        is_adapter = (folder / "adapter_config.json").is_file() or bool(recipe.get("peft"))
    datasets = dataset_ids(recipe)
    tags = list(dict.fromkeys(["negalign", "trl", method, *record.tags, *(["peft", "lora"] if is_adapter else [])]))

    evals, body_metrics = [], []
    data_name = (recipe.get("data") or {}).get("name")
    tofu, tofu_source = find_tofu_metrics(folder, eval_results)
    if tofu:
        split = tofu.get("split")
        rows = [(k, label, tofu[k]) for k, label in TOFU_KEYS if isinstance(tofu.get(k), (int, float))]
        evals += [EvalResult(task_type="text-generation", task_name="TOFU unlearning", dataset_type="locuslab/TOFU",
                             dataset_name=f"TOFU {split}" if split else "TOFU", dataset_split=split, metric_type=k,
                             metric_name=label, metric_value=float(v))
                  for k, label, v in rows]
        body_metrics += ["## TOFU metrics", "", f"Forget split: `{split}` (from `{Path(tofu_source).name}`).", "",
                         "| metric | value |", "|---|---|"] + [f"| {label} | {_fmt(v)} |" for _, label, v in rows] + [""]
    passk = find_passk(folder, eval_results)
    if passk:
        from negalign.methods import DATASETS

        ds = DATASETS.get(passk["data"], passk["data"] or "unknown")
        curve = sorted(passk["curve"].items(), key=lambda kv: int(kv[0]))
        evals += [EvalResult(task_type="text-generation", task_name="verifiable math", dataset_type=ds,
                             dataset_name=str(passk["data"]), dataset_split=passk["split"], metric_type="pass@k",
                             metric_name=f"pass@{k}", metric_value=float(v), metric_args={"k": int(k), "n": passk["n"]})
                  for k, v in curve]
        body_metrics += [f"## pass@k on {passk['data']} ({passk['split']}, n = {passk['n']} samples per problem)", "",
                         "| " + " | ".join(f"pass@{k}" for k, _ in curve) + " |", "|---" * len(curve) + "|",
                         "| " + " | ".join(_fmt(v) for _, v in curve) + " |", ""]
    if not evals and record.family == "unlearning":
        body_metrics += ["No TOFU evaluation was found next to this model (run `negalign eval tofu` and pass "
                         "`--eval-results`).", ""]

    data = ModelCardData(base_model=base, library_name="peft" if is_adapter else "transformers", license=license,
                         datasets=datasets or None, tags=tags, pipeline_tag=record.pipeline_tag,
                         language=list(record.language), model_name=name if evals else None,
                         eval_results=evals or None)
    lines = [f"# {name}", ""]
    paper = record.paper
    made = f"**{record.title}** ({record.summary}" + (f"; [{paper.title}]({paper.url}), {paper.short})" if paper else ")")
    lines.append(f"Trained with {made} using negalign on TRL"
                 + (f", starting from [`{base}`](https://huggingface.co/{base})." if base else "."))
    if datasets:
        lines.append("Data: " + ", ".join(f"[`{d}`](https://huggingface.co/datasets/{d})" for d in datasets) + ".")
    if is_adapter:
        lines += ["", _adapter_loading(repo_id or f"USER/{name}", base, record.pipeline_tag)]
    for n in notes:
        lines += ["", f"Note: {n}."]
    lines += [""] + body_metrics
    train_metrics = {k: v for k, v in (results.get("metrics") or {}).items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if train_metrics:
        lines += ["## Training", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted(train_metrics.items())] + [""]
    if recipe:
        lines += ["## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```", ""]
    versions = results.get("versions") or {}
    if versions:
        lines += ["## Framework versions", ""] + [f"- {k}: {v}" for k, v in versions.items()] + [""]
    cites = [paper.bibtex] if paper else []
    if data_name in DATASET_PAPERS and DATASET_PAPERS[data_name] is not paper:
        cites.append(DATASET_PAPERS[data_name].bibtex)
    if cites:
        lines += ["## Citation", "", "```bibtex", "\n\n".join(cites), "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _adapter_loading(repo: str, base: str | None, pipeline_tag: str) -> str:
    """How a Hub user loads the adapter. The uploaded ``adapter_config.json`` names ``base`` (:func:`push` writes the
    Hub id there when the run's was a local folder), so ``AutoPeftModel`` finds the base by itself."""
    auto = "AutoModelForSequenceClassification" if pipeline_tag == "text-classification" else "AutoModelForCausalLM"
    if not base:
        return ("This repository holds a PEFT (LoRA) adapter of a model with no Hub id (see the note below); load it "
                f"with `peft.PeftModel.from_pretrained(transformers.{auto}.from_pretrained(BASE_FOLDER), \"{repo}\")`.")
    return ("This repository holds a PEFT (LoRA) adapter of "
            f"[`{base}`](https://huggingface.co/{base}); load it with "
            f"`peft.AutoPeftModelFor{auto.removeprefix('AutoModelFor')}.from_pretrained(\"{repo}\")`, or "
            f"`peft.PeftModel.from_pretrained(transformers.{auto}.from_pretrained(\"{base}\"), \"{repo}\")`.")


def model_card(folder: Path, repo_id: str, eval_results: str | None = None, **kw) -> str:
    """The README.md text for ``folder``."""
    return str(build_card(folder, repo_id, eval_results, **kw))


def check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise RecipeError(f"model folder not found: {folder}")
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.safetensors.index.json"))
    if not weights:
        bins = [p.name for p in folder.glob("*.bin") if p.name != "training_args.bin"]
        raise RecipeError(f"{folder} has no safetensors weights" + (f" (found {bins}; re-save with "
                          "save_pretrained(safe_serialization=True))" if bins else ""))
    if not ((folder / "config.json").exists() or (folder / "adapter_config.json").exists()):
        raise RecipeError(f"{folder} has no config.json / adapter_config.json")
    if not ((folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists()):
        raise RecipeError(f"{folder} has no tokenizer (tokenizer.json / tokenizer_config.json)")


def push(folder, repo_id: str, private: bool = False, token: str | None = None, eval_results: str | None = None,
         commit_message: str | None = None, base_model: str | None = None, license: str | None = None,
         recipe: dict | None = None, method: str | None = None) -> str:
    """Upload ``folder`` (weights, tokenizer, results, and the card as README.md) to ``repo_id``.

    Returns the repository URL. The network calls are ``HfApi.create_repo`` and ``HfApi.upload_folder``. The card is
    written into the folder for the upload; if the upload fails, the folder's previous README.md is put back."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not repo_id or "/" not in repo_id:
        raise RecipeError(f"repo_id must be of the form user/name, got {repo_id!r}")
    check_folder(folder)
    card = build_card(folder, repo_id, eval_results, base_model=base_model, license=license, recipe=recipe,
                      method=method)
    if card.data.library_name == "peft" and not card.data.base_model:
        raise RecipeError(f"{folder} is a PEFT adapter but its base model is not a Hub id, so the adapter could not be "
                          "loaded from the Hub; give it with --base-model HUB_ID (push_to_hub: model.name_or_path)")
    readme = folder / "README.md"
    previous = readme.read_bytes() if readme.is_file() else None
    # the uploaded adapter_config.json names the Hub base (the local one keeps the local folder it was trained on)
    adapter = folder / "adapter_config.json"
    adapter_local = adapter.read_bytes() if card.data.library_name == "peft" and adapter.is_file() else None
    adapter_hub = _adapter_config_for_hub(adapter_local, card.data.base_model)
    api = HfApi(token=token)
    url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    readme.write_text(str(card))
    try:
        if adapter_hub is not None:
            adapter.write_bytes(adapter_hub)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          ignore_patterns=IGNORE + _kit_patterns(folder, recipe),
                          commit_message=commit_message or "Upload model trained with negalign")
    except BaseException:
        if previous is None:
            readme.unlink(missing_ok=True)
        else:
            readme.write_bytes(previous)
        raise
    finally:
        if adapter_hub is not None:
            adapter.write_bytes(adapter_local)
    return str(url)


def _adapter_config_for_hub(text: bytes | None, base: str | None) -> bytes | None:
    """``adapter_config.json`` with ``base_model_name_or_path`` set to the Hub id ``base``, or None when it already
    says so (or there is no adapter / no Hub base)."""
    if text is None or not base:
        return None
    config = json.loads(text)
    if config.get("base_model_name_or_path") == base:
        return None
    return json.dumps({**config, "base_model_name_or_path": base}, indent=2).encode() + b"\n"


def _kit_patterns(folder: Path, recipe: dict | None) -> list[str]:
    """The recipe's kit model folder, when it lies inside ``folder`` (``model.kit.dir``), as upload ignore patterns."""
    if recipe is None:
        recipe = (_read_json(folder / "results.json") or {}).get("recipe") or {}
    kit_dir = ((recipe.get("model") or {}).get("kit") or {}).get("dir")
    if not kit_dir:
        return []
    try:
        rel = Path(kit_dir).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:  # elsewhere: not uploaded anyway
        return []
    return [rel, f"{rel}/**"] if rel != "." else []


# ------------------------------------------------------------------------------------------------------------------
# TRL's trainers: the same card at save time and from trainer.push_to_hub()
# ------------------------------------------------------------------------------------------------------------------


def attach_to_trainer(trainer, recipe) -> None:
    """Make ``trainer`` (any TRL / transformers trainer running ``recipe``) write negalign's card where TRL writes its
    own (``create_model_card``, called at every checkpoint and by ``push_to_hub``), name the method in TRL's
    ``_name`` / ``_paper``, and send ``trainer.push_to_hub()`` through :func:`push`."""
    from negalign.methods import get

    record = get(recipe.method_name)
    trainer._name = record.title
    trainer._paper = record.paper.trl() if record.paper else {}
    sections = recipe.to_dict()

    def create_model_card(model_name=None, dataset_name=None, tags=None, **kwargs):
        if not trainer.is_world_process_zero():
            return
        out = Path(trainer.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        card = build_card(out, model_name, recipe=sections, method=recipe.method_name)
        card.save(str(out / "README.md"))

    def push_to_hub(commit_message: str | None = "End of training", blocking: bool = True, token=None,
                    revision=None, private=None, **kwargs):
        trainer.save_model(_internal_call=True)
        if not trainer.is_world_process_zero():
            return None
        repo_id = trainer.args.hub_model_id or recipe.output.get("repo_id")
        if not repo_id:
            raise RecipeError("push_to_hub needs a repository: set training.hub_model_id or output.repo_id")
        return push(trainer.args.output_dir, repo_id, private=bool(private if private is not None
                                                                    else trainer.args.hub_private_repo),
                    token=token or trainer.args.hub_token, commit_message=commit_message, recipe=sections,
                    method=recipe.method_name)

    trainer.create_model_card = create_model_card
    trainer.push_to_hub = push_to_hub


# ------------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="Model folder written by `negalign train` (output_dir).")
    parser.add_argument("--repo-id", help="Hub repository, user/name (required unless --dry-run).")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--eval-results", help="results.json of `negalign eval tofu` / `eval passk` on this model "
                                               "(its numbers go into the card's model-index).")
    parser.add_argument("--base-model", help="Hub id of the model training started from, when the recipe's model was "
                                             "a local folder that does not record it (required for an adapter).")
    parser.add_argument("--license", help="License of the uploaded model (the card's `license`), e.g. apache-2.0.")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one / HF_TOKEN).")
    parser.add_argument("--dry-run", action="store_true", help="Print the model card and stop (no network).")


def main(args) -> int:
    if args.dry_run:
        check_folder(Path(args.folder))
        print(model_card(Path(args.folder), args.repo_id, args.eval_results,
                         base_model=args.base_model, license=args.license))
        return 0
    if not args.repo_id:
        raise RecipeError("push needs --repo-id USER/NAME (or --dry-run to print the card)")
    try:
        url = push(args.folder, args.repo_id, private=args.private, token=args.token, eval_results=args.eval_results,
                   base_model=args.base_model, license=args.license)
    except RecipeError:
        raise
    except Exception as e:  # the network or the Hub refused: one line instead of huggingface_hub's traceback
        if not (isinstance(e, OSError) or type(e).__module__.startswith("httpx")):
            raise
        import os

        first = (str(e).strip().splitlines() or [""])[0]
        hint = ("HF_HUB_OFFLINE is set: unset it to upload" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
                else "check the network and the token (`hf auth login`, HF_TOKEN or --token)")
        raise RecipeError(f"upload of {args.folder} to {args.repo_id} failed ({type(e).__name__}: {first}); "
                          f"the folder's README.md is unchanged; {hint}") from e
    print(f"pushed {args.folder} to {url}")
    return 0
