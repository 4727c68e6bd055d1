"""TOFU (Maini et al. 2024): the fictitious-author unlearning benchmark, as forget/retain data for the NPO family.

Loads ``locuslab/TOFU`` by Hub id and config name (``forget10``, ``retain90``, ``full``, ...) or a local folder with
the same file names (``<folder>/forget10.json`` etc., JSON lines), e.g. ``../shared/data/tofu`` here.

    loader = TofuData(path="../shared/data/tofu", forget_split="forget10")
    pairs = loader.load_unlearning(tokenizer, process_index=accelerator.process_index)

Prompts follow ``template`` (``negalign.data.templates``: ``auto`` = the tokenizer's chat template when it has one,
else ``Question: …\\nAnswer: ``; ``open_unlearning_llama3`` / ``open_unlearning_llama3_tags`` for open-unlearning's
Llama-3.x checkpoints). ``load_unlearning`` tokenises each pair as open-unlearning does (answer + EOS, the loss on the
answer tokens only); unlearning, ``negalign eval tofu`` and ``negalign generate`` use the same template.

Every forget example is paired with ``retain_draws`` retain examples (one per epoch, cycling), drawn from
``numpy.random.default_rng([seed, process_index])``: reproducible for a given process, and *different on each
process* so that data-parallel ranks do not all regularise on the same retain rows. For IdkDPO
(``load_unlearning(alternates=True)``) each forget question also gets ``retain_draws`` refusal answers drawn from
TOFU's ``idontknow.jsonl`` (one line each; next to the split files, or open-unlearning's copy for the Hub id).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from negalign.data.core import DataError, completion_suffix, read_records, require_columns
from negalign.data.templates import TEMPLATE_NAMES, encode_qa, prompt_text, resolve_template

HUB_ID = "locuslab/TOFU"
# The configs of locuslab/TOFU (and the file stems of a local copy).
SPLITS = (
    "full",
    "forget01", "forget05", "forget10",
    "retain90", "retain95", "retain99",
    "forget01_perturbed", "forget05_perturbed", "forget10_perturbed",
    "retain_perturbed",
    "real_authors", "real_authors_perturbed",
    "world_facts", "world_facts_perturbed",
)
_FORGET_RE = re.compile(r"^forget(\d\d)$")
IDK_FILE = "idontknow.jsonl"  # TOFU's refusal answers, one per line (plain text), beside the split files
# for the Hub id: open-unlearning's copy of the same lines (its setup_data.py --idk; TOFU_QA_forget_idk.yaml idk_path)
IDK_HUB = ("open-unlearning/idk", "idk.jsonl")


def default_retain_split(forget_split: str) -> str:
    """TOFU's complement of a forget split: ``forget10`` → ``retain90``."""
    m = _FORGET_RE.match(forget_split)
    if not m:
        raise DataError(f"forget split {forget_split!r} is not of the form forgetNN; name data.retain_split explicitly")
    return f"retain{100 - int(m.group(1)):02d}"


def is_local(path: str) -> bool:
    from pathlib import Path

    return Path(path).exists() or path.startswith((".", "/"))


def read_split(path: str, name: str) -> list[dict]:
    """Rows of TOFU split ``name`` from a local folder or the Hub id ``path`` (config ``name``, split ``train``)."""
    if not name:
        raise DataError("empty TOFU split name")
    if is_local(path):
        from pathlib import Path

        p = Path(path)
        if not p.is_dir():
            where = "" if p.is_absolute() else f" (relative to the working directory {Path.cwd()})"
            raise DataError(f"TOFU path {p} is not a folder{where}: set data.path=FOLDER (a local copy of TOFU, with "
                            f"{name}.json) or data.path=locuslab/TOFU (the Hub)")
        return read_records(str(p), split=name)
    if name not in SPLITS:
        raise DataError(f"unknown TOFU split {name!r}; {HUB_ID}-style configs are: {', '.join(SPLITS)}")
    return read_records(path, split="train", config=name)


@dataclass
class TofuData:
    """TOFU forget/retain data for unlearning (and plain QA rows of any split for fine-tuning)."""

    path: str = field(default=HUB_ID, metadata={"help": "Hub id (locuslab/TOFU) or a local folder with the same file names."})
    forget_split: str = field(default="forget10", metadata={"help": "Forget split: forget01, forget05 or forget10."})
    retain_split: str | None = field(
        default=None, metadata={"help": "Retain split (default: the complement, retain90 for forget10)."}
    )
    split: str = field(default="full", metadata={"help": "Split that load() returns as prompt/completion (fine-tuning)."})
    question_field: str = field(default="question", metadata={"help": "Column holding the question."})
    answer_field: str = field(default="answer", metadata={"help": "Column holding the answer."})
    max_forget: int | None = field(default=None, metadata={"help": "Keep only the first N forget rows."})
    max_retain: int | None = field(default=None, metadata={"help": "Keep only the first N retain rows (the pool)."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep only the first N rows of `split` (load())."})
    retain_draws: int = field(
        default=10, metadata={"help": "Retain partners drawn per forget example (epoch e uses draw e mod N)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the retain draws (combined with the process index)."})
    template: str = field(
        default="auto",
        metadata={"help": "Prompt template: " + ", ".join(TEMPLATE_NAMES) + " (negalign.data.templates). Use the one "
                  "the checkpoint was fine-tuned with (open-unlearning's Llama-3.x TOFU models: open_unlearning_llama3)."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message for chat templates."})
    idk_path: str | None = field(
        default=None,
        metadata={"help": "Refusal answers for IdkDPO, one per line (TOFU's idontknow.jsonl). Default: "
                  "<path>/idontknow.jsonl for a local folder; for a Hub id, open-unlearning's copy (dataset "
                  "open-unlearning/idk, file idk.jsonl)."},
    )
    date_string: str | None = field(
        default=None, metadata={"help": "date_string for chat templates that stamp a date (Llama-3.x: today's date "
                                "when unset, so prompts change from day to day)."},
    )

    # ---------------------------------------------------------------- rows
    def _rows(self, name: str, limit: int | None = None) -> list[dict]:
        rows = read_split(self.path, name)
        where = f"TOFU split {name!r} at {self.path}"
        if not rows:
            raise DataError(f"{where} is empty")
        require_columns(rows, [self.question_field, self.answer_field], where)
        return rows[:limit] if limit else rows

    def forget_rows(self) -> list[dict]:
        if not self.forget_split:
            raise DataError("data.forget_split is empty; name a TOFU forget split (forget01, forget05, forget10)")
        return self._rows(self.forget_split, self.max_forget)

    def retain_rows(self) -> list[dict]:
        return self._rows(self.retain_split or default_retain_split(self.forget_split), self.max_retain)

    def rows(self) -> list[dict]:
        return self._rows(self.split, self.max_samples)

    # ---------------------------------------------------------------- formatting
    def prompt_template(self, tokenizer=None):
        """The resolved :class:`~negalign.data.templates.PromptTemplate` (``template`` + system prompt + date)."""
        return resolve_template(self.template, tokenizer, self.system_prompt, self.date_string)

    def prompt(self, question: str, tokenizer=None) -> str:
        if tokenizer is None:
            return f"Question: {question}\nAnswer: "
        return prompt_text(tokenizer, self.prompt_template(tokenizer), question)

    def _encoded(self, rows, tokenizer, max_length):
        t = self.prompt_template(tokenizer)
        out = []
        for r in rows:
            ids, mask = encode_qa(tokenizer, t, str(r[self.question_field]), str(r[self.answer_field]), max_length)
            out.append({"input_ids": ids, "completion_mask": mask})
        return out

    def _examples(self, rows, tokenizer):
        end = completion_suffix(tokenizer)
        return [(self.prompt(r[self.question_field], tokenizer), str(r[self.answer_field]) + end) for r in rows]

    def load(self, tokenizer=None):
        """``split`` as a ``datasets.Dataset`` with ``prompt`` / ``completion`` text (for SFT on TOFU)."""
        from datasets import Dataset

        return Dataset.from_list([{"prompt": p, "completion": c} for p, c in self._examples(self.rows(), tokenizer)])

    def retain_choices(self, n_forget: int, n_retain: int, process_index: int = 0) -> np.ndarray:
        """``[n_forget, retain_draws]`` retain indices: column e is a shuffled pass over the pool (cycled as needed),
        from ``default_rng([seed, process_index])`` — the same for a given process on every run, different per process."""
        if n_retain == 0:
            raise DataError("the retain split is empty")
        rng = np.random.default_rng([int(self.seed), int(process_index)])
        draws = max(1, int(self.retain_draws))
        cols = []
        order = np.empty(0, dtype=np.int64)
        for _ in range(draws):
            while len(order) < n_forget:
                order = np.concatenate([order, rng.permutation(n_retain)])
            cols.append(order[:n_forget])
            order = order[n_forget:]
        return np.stack(cols, axis=1)

    def idk_file(self) -> str:
        """The refusal file: ``idk_path``, else ``idontknow.jsonl`` in the local folder, else open-unlearning's copy
        on the Hub (downloaded to the Hugging Face cache)."""
        if self.idk_path:
            return self.idk_path
        if is_local(self.path):
            from pathlib import Path

            return str(Path(self.path) / IDK_FILE)
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download(IDK_HUB[0], IDK_HUB[1], repo_type="dataset")
        except Exception as e:  # offline, missing: say which setting to use instead
            raise DataError(f"could not fetch the refusal answers {IDK_HUB[1]} of the Hub dataset {IDK_HUB[0]} ({e}); "
                            "set data.idk_path to TOFU's idontknow.jsonl") from e

    def alternate_answers(self) -> list[str]:
        """The refusal answers of IdkDPO (the ``alternate`` segment): the stripped, non-empty lines of ``idk_file``."""
        from pathlib import Path

        path = Path(self.idk_file())
        if not path.is_file():
            raise DataError(f"refusal answers not found: {path} (TOFU's {IDK_FILE}, one answer per line; set "
                            "data.idk_path)")
        answers = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not answers:
            raise DataError(f"{path} holds no refusal answers")
        return answers

    def alternate_choices(self, n_forget: int, n_answers: int) -> np.ndarray:
        """``[n_forget, retain_draws]`` refusal indices, uniform with replacement (open-unlearning draws one per item
        access with ``torch.randint``), from a stream of their own (``seed``, spawn key 1: the retain draws stay as
        they are). The same on every process, so that the refusals' reference pass can be sharded across them."""
        rng = np.random.default_rng(np.random.SeedSequence(int(self.seed), spawn_key=(1,)))
        return rng.integers(0, n_answers, size=(n_forget, max(1, int(self.retain_draws))))

    def load_unlearning(self, tokenizer=None, process_index: int = 0, max_length: int | None = None,
                        alternates: bool = False):
        """``(forget, retain)`` datasets for an unlearning trainer.

        ``forget`` has ``prompt``, ``completion`` and ``retain_index`` (``retain_draws`` indices into ``retain``, drawn
        per process); ``retain`` has ``prompt`` and ``completion``. With a tokenizer both also carry ``input_ids`` and
        ``completion_mask`` from ``negalign.data.templates.encode_qa`` (the trainer uses them as they are).
        ``alternates=True`` adds ``alternate_completions`` (``retain_draws`` refusals per forget question, one per
        epoch) and, with a tokenizer, ``alternate_input_ids`` / ``alternate_completion_mask``. Raises
        ``DataError`` on an empty forget split, an unknown split name or missing columns, before any model work."""
        from datasets import Dataset

        f_rows, r_rows = self.forget_rows(), self.retain_rows()
        forget = self._examples(f_rows, tokenizer)
        retain = self._examples(r_rows, tokenizer)
        choices = self.retain_choices(len(forget), len(retain), process_index)
        f_list = [{"prompt": p, "completion": c, "retain_index": choices[i].tolist()} for i, (p, c) in enumerate(forget)]
        r_list = [{"prompt": p, "completion": c} for p, c in retain]
        if tokenizer is not None:
            for d, e in zip(f_list, self._encoded(f_rows, tokenizer, max_length)):
                d.update(e)
            for d, e in zip(r_list, self._encoded(r_rows, tokenizer, max_length)):
                d.update(e)
        if alternates:
            answers = self.alternate_answers()
            end = completion_suffix(tokenizer)
            picks = self.alternate_choices(len(f_rows), len(answers))
            for d, r, row_picks in zip(f_list, f_rows, picks):
                alts = [{self.question_field: r[self.question_field], self.answer_field: answers[j]} for j in row_picks]
                d["alternate_completions"] = [a[self.answer_field] + end for a in alts]
                if tokenizer is not None:
                    enc = self._encoded(alts, tokenizer, max_length)
                    d["alternate_input_ids"] = [e["input_ids"] for e in enc]
                    d["alternate_completion_mask"] = [e["completion_mask"] for e in enc]
        return Dataset.from_list(f_list), Dataset.from_list(r_list)

    def eval_rows(self, name: str) -> list[dict]:
        """Rows of an evaluation split (``forget10_perturbed``, ``retain_perturbed``, ...), columns checked."""
        rows = read_split(self.path, name)
        if not rows:
            raise DataError(f"TOFU split {name!r} at {self.path} is empty")
        return rows

    def texts(self) -> list[str]:
        """Texts to train a kit tokenizer on: the questions and answers of ``split`` (default ``full``)."""
        out = []
        for r in self._rows(self.split):
            out.append(f"{r[self.question_field]} {r[self.answer_field]}")
            for key in ("paraphrased_answer",):
                if key in r:
                    out.append(str(r[key]))
        return out
