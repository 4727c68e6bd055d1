"""Reading records from files or the Hub, prompt formatting, and the generic question-answer loader."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Data that cannot be used: missing file or column, empty split. The message says what is wrong and where."""


def read_records(path: str, split: str | None = None, config: str | None = None,
                 revision: str | None = None) -> list[dict]:
    """Rows of a local ``.json``/``.jsonl``/``.parquet`` file, of ``<folder>/<split>.<ext>``, or of a Hub dataset.

    A local JSON file may hold one object per line or a single list. A path that does not exist locally is taken as a
    Hub id (``datasets.load_dataset(path, config, split=split)``)."""
    p = Path(path)
    if p.is_dir():
        if split is None:
            raise DataError(f"{p} is a folder: name the split (file stem) to read from it")
        for ext in (".json", ".jsonl", ".parquet"):
            if (p / f"{split}{ext}").exists():
                return read_records(str(p / f"{split}{ext}"))
        known = sorted({f.stem for f in p.iterdir() if f.suffix in (".json", ".jsonl", ".parquet")})
        raise DataError(f"no split {split!r} in {p}; available: {', '.join(known) or 'none'}")
    if p.is_file():
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(p).to_pylist()
        return _read_json_rows(p)
    if p.suffix in (".json", ".jsonl", ".parquet") or looks_like_local_path(str(path)):
        raise DataError(f"data file not found: {p} (a path is never looked up on the Hub; fix the path, or give a "
                        "Hub id NAME or OWNER/NAME)")
    from datasets import load_dataset

    return list(load_dataset(path, config, split=split or "train", revision=revision))


def looks_like_local_path(name: str) -> bool:
    """A name meant as a local path, never to be sent to the Hub: it starts with ``.``, ``/`` or ``~``, has more than
    one ``/`` (a Hub id is NAME or OWNER/NAME) or a backslash, or its first component exists here (``runs/sft``)."""
    if name.startswith((".", "/", "~")) or "\\" in name:
        return True
    parts = name.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).exists())


def _read_json_rows(p: Path) -> list[dict]:
    """Rows of a JSON list or a JSONL file; a malformed line is a DataError naming the file and the line."""
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

    def rows(self) -> list[dict]:
        rows = read_records(self.path, self.split, self.config)
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
