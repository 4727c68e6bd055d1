"""``negalign push DIR --repo-id USER/NAME``: upload a trained model folder to the Hugging Face Hub with a model card.

The folder is what ``negalign train`` leaves (``config.json``, safetensors weights or a PEFT adapter, the tokenizer,
``results.json``). The card (``README.md``, written into the folder before upload) names the method, embeds the
resolved recipe, the TOFU metrics found in the folder's results (``results.json`` of a ``negalign eval tofu`` run
given with ``--eval-results``, or the folder's own ``results.json`` / ``tofu_eval/step-N/results.json``) and the
citations. ``output.push_to_hub: true`` in a recipe calls :func:`push` at the end of training.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from negalign.config import RecipeError

IGNORE = ["checkpoint-*", "checkpoint-*/**", "*.tmp", "runs/**", "tofu_eval/**", "training_args.bin"]
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
METHOD_TEXT = {
    "ga": "gradient ascent on the forget set",
    "grad_diff": "GradDiff: gradient ascent on the forget set + NLL on the retain set",
    "npo": "NPO (Negative Preference Optimization, Zhang et al. 2024)",
    "npo_rt": "NPO + retain NLL (NPO+RT, Zhang et al. 2024)",
    "npo_kl": "NPO + KL to the reference on the retain set (Zhang et al. 2024)",
    "simnpo": "SimNPO (Fan et al. 2024): reference-free, length-normalised NPO + retain NLL",
}
CITATIONS = {
    "npo": "@inproceedings{zhang2024negative,\n  title={Negative Preference Optimization: From Catastrophic Collapse to "
           "Effective Unlearning},\n  author={Ruiqi Zhang and Licong Lin and Yu Bai and Song Mei},\n  "
           "booktitle={First Conference on Language Modeling},\n  year={2024}\n}",
    "simnpo": "@article{fan2024simplicity,\n  title={Simplicity Prevails: Rethinking Negative Preference Optimization "
              "for LLM Unlearning},\n  author={Chongyu Fan and Jiancheng Liu and Licong Lin and Jinghan Jia and Ruiqi "
              "Zhang and Song Mei and Sijia Liu},\n  journal={arXiv preprint arXiv:2410.07163},\n  year={2024}\n}",
    "tofu": "@inproceedings{maini2024tofu,\n  title={TOFU: A Task of Fictitious Unlearning for LLMs},\n  author={Pratyush "
            "Maini and Zhili Feng and Avi Schwarzschild and Zachary C. Lipton and J. Zico Kolter},\n  "
            "booktitle={First Conference on Language Modeling},\n  year={2024}\n}",
}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


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


def model_card(folder: Path, repo_id: str, eval_results: str | None = None) -> str:
    """The README.md text for ``folder``."""
    results = _read_json(folder / "results.json") or {}
    recipe = results.get("recipe") or {}
    method = results.get("method") or (recipe.get("method") or {}).get("name") or "unknown"
    base = (recipe.get("model") or {}).get("name_or_path")
    tofu, source = find_tofu_metrics(folder, eval_results)
    tags = ["negalign", "unlearning", "trl", method]
    front = {"library_name": "transformers", "tags": tags, "datasets": ["locuslab/TOFU"]}
    if base and not Path(str(base)).exists():
        front["base_model"] = base
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {repo_id.split('/')[-1]}", ""]
    lines.append(f"Unlearned with **{METHOD_TEXT.get(method, method)}** using "
                 f"negalign (TRL)" + (f", starting from `{base}`." if base else "."))
    lines += ["", "## TOFU metrics", ""]
    if tofu:
        lines += [f"Forget split: `{tofu.get('split')}` (from `{Path(source).name if source else ''}`).", "",
                  "| metric | value |", "|---|---|"]
        for key, label in TOFU_KEYS:
            v = tofu.get(key)
            if v is not None:
                lines.append(f"| {label} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {label} | {v} |")
    else:
        lines.append("No TOFU evaluation was found next to this model (run `negalign eval tofu` and pass "
                     "`--eval-results`).")
    train_metrics = {k: v for k, v in (results.get("metrics") or {}).items() if isinstance(v, (int, float))}
    if train_metrics:
        lines += ["", "## Training", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted(train_metrics.items())]
    if recipe:
        lines += ["", "## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```"]
    versions = results.get("versions") or {}
    if versions:
        lines += ["", "## Framework versions", ""] + [f"- {k}: {v}" for k, v in versions.items()]
    cites = [CITATIONS["simnpo"] if method == "simnpo" else CITATIONS["npo"], CITATIONS["tofu"]]
    lines += ["", "## Citation", "", "```bibtex", "\n\n".join(cites), "```", ""]
    return "\n".join(lines)


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
         commit_message: str | None = None) -> str:
    """Write the model card into ``folder`` and upload the folder (weights, tokenizer, card, results) to ``repo_id``.

    Returns the repository URL. The network calls are ``HfApi.create_repo`` and ``HfApi.upload_folder``."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not repo_id or "/" not in repo_id:
        raise RecipeError(f"repo_id must be of the form user/name, got {repo_id!r}")
    check_folder(folder)
    (folder / "README.md").write_text(model_card(folder, repo_id, eval_results))
    api = HfApi(token=token)
    url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", ignore_patterns=IGNORE,
                      commit_message=commit_message or "Upload model trained with negalign")
    return str(url)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="Model folder written by `negalign train` (output_dir).")
    parser.add_argument("--repo-id", required=True, help="Hub repository, user/name.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--eval-results", help="results.json of `negalign eval tofu` on this model (for the card).")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one / HF_TOKEN).")


def main(args) -> int:
    url = push(args.folder, args.repo_id, private=args.private, token=args.token, eval_results=args.eval_results)
    print(f"pushed {args.folder} to {url}")
    return 0
