"""Reading records from files or the Hub, prompt formatting, and the generic question-answer loader."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


from negalign.errors import DataError  # noqa: F401  (its home; re-exported here)


FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}  # suffix -> datasets' packaged builder
HUB_PROBE_TIMEOUT = 5.0  # seconds to wait for the Hub endpoint before calling a Hub id unreachable


class Records(list):
    """Rows of a data set; ``source`` is the local JSON file they were read from (``None`` otherwise), so that an
    error about a row can look at the raw line (``require_columns``: a missing key vs an explicit null)."""

    source: Path | None = None

    def __getitem__(self, index):
        out = super().__getitem__(index)
        if isinstance(index, slice) and index.start in (None, 0) and index.step in (None, 1):
            out = Records(out)
            out.source = self.source  # rows[:n] keeps the file's numbering
        return out


def read_records(path: str, split: str | None = None, config: str | None = None,
                 revision: str | None = None, num_proc: int | None = None) -> list[dict]:
    """Rows of a local ``.json``/``.jsonl``/``.parquet`` file, of ``<folder>/<split>.<ext>``, or of a Hub dataset,
    all read by ``datasets.load_dataset`` (its Arrow cache; ``num_proc`` processes; ``revision`` for a Hub id).

    A local JSON file may hold one object per line or a single list; when ``datasets`` cannot read one, the error
    names the file and the malformed line. A name that does not exist locally is taken as a Hub id, unless it looks
    like a path; with no network it fails at once saying what to do (HF_HUB_OFFLINE=1 or a local path)."""
    p = Path(path)
    if p.is_dir():
        if split is None:
            raise DataError(f"{p} is a folder: name the split (file stem) to read from it")
        for ext in FILE_BUILDERS:
            if (p / f"{split}{ext}").exists():
                return read_records(str(p / f"{split}{ext}"), num_proc=num_proc)
        known = sorted({f.stem for f in p.iterdir() if f.suffix in FILE_BUILDERS})
        raise DataError(f"no split {split!r} in {p}; available: {', '.join(known) or 'none'}")
    if p.is_file():
        return _read_file(p, num_proc)
    if p.suffix in FILE_BUILDERS or looks_like_local_path(str(path)):
        raise DataError(f"data file not found: {p} (a path is never looked up on the Hub; fix the path, or give a "
                        "Hub id NAME or OWNER/NAME)")
    return _read_hub(str(path), config, split or "train", revision, num_proc)


def _read_file(p: Path, num_proc: int | None) -> list[dict]:
    import logging

    from datasets import load_dataset

    if p.suffix not in FILE_BUILDERS:
        raise DataError(f"{p}: unknown data file type {p.suffix!r}; use .json, .jsonl or .parquet")
    quiet = logging.getLogger("datasets.packaged_modules.json.json")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its "Failed to load JSON" line: the DataError below says it in one line
    try:
        rows = Records(load_dataset(FILE_BUILDERS[p.suffix], data_files=str(p), split="train",
                                    num_proc=num_proc).to_list())
    except Exception as e:
        if FILE_BUILDERS[p.suffix] == "json":
            _json_rows(p)  # raises the DataError naming the file and the line
        cause = e.__cause__ or e
        text = " ".join(str(cause).split()) or type(cause).__name__
        if isinstance(cause, StopIteration) or not p.read_bytes().strip():
            raise DataError(f"{p} is empty") from e
        raise DataError(f"{p}: datasets could not read it ({text[:300]})") from e
    finally:
        quiet.setLevel(level)
    if FILE_BUILDERS[p.suffix] == "json":
        rows.source = p
    return rows


def _read_hub(name: str, config: str | None, split: str, revision: str | None, num_proc: int | None) -> list[dict]:
    from datasets import load_dataset
    from huggingface_hub import constants

    offline = constants.is_offline_mode() or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes",
                                                                                                     "on")
    todo = ("set HF_HUB_OFFLINE=1 to use a copy already in the datasets cache, or give a local folder or "
            ".json/.jsonl/.parquet file as data.path")
    if not offline:
        reason = _unreachable(constants.ENDPOINT)
        if reason:
            raise DataError(f"dataset {name!r}: cannot reach the Hub at {constants.ENDPOINT} ({reason}); {todo}")
    try:
        return Records(load_dataset(name, config, split=split, revision=revision, num_proc=num_proc).to_list())
    except (ConnectionError, OSError) as e:  # datasets' "Couldn't reach ..." / "Couldn't find cache ..." and the like
        text = " ".join(str(e).split())[:300]
        if offline:
            raise DataError(f"dataset {name!r} is not in the datasets cache and the Hub is off (HF_HUB_OFFLINE / "
                            f"HF_DATASETS_OFFLINE): run once with network, or give a local folder or file ({text})") from e
        raise DataError(f"dataset {name!r}: {text}; {todo}") from e


def _unreachable(endpoint: str) -> str | None:
    """Why the Hub ``endpoint`` cannot be reached (one request, ``HUB_PROBE_TIMEOUT``, no retries), or ``None``. Any
    HTTP answer counts as reachable: load_dataset then says what is wrong with the name itself."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT)
    except Exception as e:  # connection refused, DNS failure, timeout, proxy error
        return " ".join(str(e).split())[:200] or type(e).__name__
    return None


def looks_like_local_path(name: str) -> bool:
    """A name meant as a local path, never to be sent to the Hub: it starts with ``.``, ``/`` or ``~``, has more than
    one ``/`` (a Hub id is NAME or OWNER/NAME) or a backslash, or its first component exists here (``runs/sft``)."""
    if name.startswith((".", "/", "~")) or "\\" in name:
        return True
    parts = name.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).exists())


def _json_rows(p: Path) -> list[dict]:
    """Rows of a JSON list or a JSONL file parsed line by line: the diagnosis when ``datasets`` cannot read a file,
    and the raw rows a row error looks at. A malformed line is a DataError naming the file and the line."""
    text = p.read_text()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p} line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); fix that line") from e
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{p} line {lineno}: not valid JSON ({e.msg} at column {e.colno}); fix or remove "
                                "the line") from e
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{p} row {i + 1}: expected a JSON object with named columns, got "
                            f"{type(row).__name__}")
    return rows


def require_columns(rows: list[dict], columns, where: str, nullable=()) -> None:
    """Every row has each of ``columns`` with a value (null only for those in ``nullable``); the error names the
    row (1-based, as the file's lines of a JSONL file without blank lines)."""
    if not rows:
        raise DataError(f"{where} is empty")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise DataError(f"{where} lacks column(s) {missing}; it has {sorted(rows[0])}")
    for i, row in enumerate(rows):
        for c in columns:
            if row.get(c) is None and c in row and c not in nullable and getattr(rows, "source", None) is not None:
                row = _json_rows(rows.source)[i]  # datasets fills a missing key with null: the raw row tells which
            if c not in row:
                raise DataError(f"{where} row {i + 1} lacks column {c!r} (it has {sorted(row)}); add it or drop "
                                "the row")
            if row[c] is None and c not in nullable:
                raise DataError(f"{where} row {i + 1} has {c}: null; give it a value or drop the row")


def format_prompt(question: str, tokenizer=None, system: str | None = None) -> str:
    """The prompt text for a question: the tokenizer's chat template when it has one, else ``Question: …\\nAnswer: ``."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"Question: {question}\nAnswer: "


def completion_suffix(tokenizer=None) -> str:
    """Text that ends an answer: the chat template's end-of-turn token, else the EOS token."""
    if tokenizer is None:
        return ""
    return tokenizer.eos_token or ""


@dataclass
class QAData:
    """Generic question-answer data for SFT: any file or Hub dataset with a question and an answer column."""

    path: str = field(default="", metadata={"help": "File, folder (with `split`) or Hub id."})
    split: str | None = field(default="train", metadata={"help": "Split name, or file stem inside a folder."})
    config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    question_field: str = field(default="question", metadata={"help": "Column holding the prompt."})
    answer_field: str = field(default="answer", metadata={"help": "Column holding the target answer."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep only the first N rows."})
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (commit, tag or branch)."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes datasets.load_dataset uses to prepare "
                                                                 "the data (None: one)."})

    def rows(self) -> list[dict]:
        rows = read_records(self.path, self.split, self.config, self.revision, self.num_proc)
        require_columns(rows, [self.question_field, self.answer_field], f"data {self.path} (split {self.split})")
        return rows[: self.max_samples] if self.max_samples else rows

    def load(self, tokenizer=None):
        """A ``datasets.Dataset`` with ``prompt`` / ``completion`` text columns (prompt formatted for ``tokenizer``)."""
        from datasets import Dataset

        end = completion_suffix(tokenizer)
        return Dataset.from_list(
            [
                {"prompt": format_prompt(r[self.question_field], tokenizer), "completion": str(r[self.answer_field]) + end}
                for r in self.rows()
            ]
        )

    def texts(self) -> list[str]:
        """Plain texts, e.g. to train a kit tokenizer on."""
        return [f"{r[self.question_field]} {r[self.answer_field]}" for r in self.rows()]
