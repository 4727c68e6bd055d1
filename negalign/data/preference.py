"""Loaders for alignment data: negatives only (D²O) and preference pairs (DPO / IPO / MADPO and its reward model).

``NegativesData`` yields ``prompt`` (formatted for the tokenizer) and ``rejected`` (the human negative), plus
``anchors`` (a list of K self-generated responses) when the file already holds them. ``PreferenceData`` yields
``prompt`` / ``chosen`` / ``rejected``. Both read a local ``.json``/``.jsonl``/``.parquet`` file, a folder with a split,
or a Hub id, and refuse rows they cannot use with a message naming the row and the column.

Presets for public sets (``format``):
    ``pku_saferlhf`` (PKU-Alignment/PKU-SafeRLHF): ``response_0``/``response_1`` with ``is_response_{0,1}_safe``. As a
        negatives set each prompt's first *unsafe* response is its negative; prompts whose responses are all safe have
        no negative and are left out (counted in ``skipped``). As a preference set the ``safer_response_id`` response
        is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from negalign.data.core import DataError, format_prompt, read_records, require_columns

FORMATS = ("plain", "pku_saferlhf")
STRIP_MODES = ("auto", "always", "never")


def _message_text(value) -> str:
    """A response given as text, or as a conversation (list of ``{"role", "content"}``): its last message's text."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    return "" if value is None else str(value)


def _prompt_text(value, tokenizer, chat: bool) -> str:
    """A prompt given as text or as a conversation, formatted for ``tokenizer``.

    Text is wrapped in the chat template when ``chat`` (and the tokenizer has one), else used as it is (a raw prefix,
    e.g. the start of a movie review). A conversation is always rendered with the chat template."""
    if isinstance(value, list):
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            return "\n".join(str(m.get("content", "")) for m in value) + "\n"
        return tokenizer.apply_chat_template(value, tokenize=False, add_generation_prompt=True)
    return format_prompt(str(value), tokenizer) if chat else str(value)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; expected one of {FORMATS}")


@dataclass
class NegativesData:
    """Prompts with a human-annotated negative response only (D²O): ``prompt``, ``rejected`` [, ``anchors``]."""

    path: str = field(default="", metadata={"help": "File, folder (with `split`) or Hub id, e.g. PKU-Alignment/PKU-SafeRLHF."})
    split: str | None = field(default="train", metadata={"help": "Split name, or file stem inside a folder."})
    config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (branch, tag or commit) to pin; "
                                 "PKU-SafeRLHF was re-released in 2024: `v0` is the release the D2O paper used."})
    format: str = field(default="plain", metadata={"help": "plain (prompt + negative columns) or pku_saferlhf."})
    prompt_field: str = field(default="prompt", metadata={"help": "Column holding the prompt."})
    negative_field: str = field(default="rejected", metadata={"help": "Column holding the negative (format plain)."})
    anchors_field: str | None = field(
        default=None, metadata={"help": "Optional column holding K self-generated responses per prompt (a list)."}
    )
    chat: bool = field(default=True, metadata={"help": "Wrap text prompts in the tokenizer's chat template."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep only the first N usable rows."})

    skipped: int = field(default=0, init=False, repr=False)

    def rows(self) -> list[dict]:
        """Usable raw rows as ``{"prompt", "rejected"[, "anchors"]}`` (prompt not yet formatted)."""
        _check_format(self.format)
        where = f"data {self.path} (split {self.split})"
        raw = read_records(self.path, self.split, self.config, self.revision)
        out = []
        self.skipped = 0
        if self.format == "pku_saferlhf":
            require_columns(raw, [self.prompt_field, "response_0", "response_1", "is_response_0_safe",
                                  "is_response_1_safe"], where)
            for r in raw:
                unsafe = [r[f"response_{i}"] for i in (0, 1) if not r[f"is_response_{i}_safe"]]
                if not unsafe:
                    self.skipped += 1  # both responses safe: this prompt has no negative
                    continue
                out.append({"prompt": r[self.prompt_field], "rejected": unsafe[0]})
                if self.max_samples and len(out) >= self.max_samples:
                    break
            if not out:
                raise DataError(f"{where}: no prompt has an unsafe response to use as its negative")
            return out
        columns = [self.prompt_field, self.negative_field] + ([self.anchors_field] if self.anchors_field else [])
        require_columns(raw, columns, where)
        for i, r in enumerate(raw):
            negative = _message_text(r.get(self.negative_field))
            if not negative.strip():
                raise DataError(
                    f"{where}: row {i} has no negative (column {self.negative_field!r} is empty); D2O needs a "
                    "human-annotated negative response for every prompt. Remove the row or fill it in."
                )
            if r.get(self.prompt_field) in (None, "", []):
                raise DataError(f"{where}: row {i} has an empty prompt (column {self.prompt_field!r})")
            row = {"prompt": r[self.prompt_field], "rejected": negative}
            if self.anchors_field:
                anchors = r[self.anchors_field]
                if not isinstance(anchors, (list, tuple)) or not anchors:
                    raise DataError(f"{where}: row {i} column {self.anchors_field!r} must be a non-empty list of responses")
                row["anchors"] = [_message_text(a) for a in anchors]
            out.append(row)
            if self.max_samples and len(out) >= self.max_samples:
                break
        return out

    def load(self, tokenizer=None):
        """A ``datasets.Dataset`` with ``prompt`` (formatted for ``tokenizer``), ``rejected`` [and ``anchors``]."""
        from datasets import Dataset

        rows = self.rows()
        return Dataset.from_list(
            [{**r, "prompt": _prompt_text(r["prompt"], tokenizer, self.chat)} for r in rows]
        )

    def texts(self) -> list[str]:
        """Plain texts, e.g. to train a kit tokenizer on."""
        out = []
        for r in self.rows():
            p = r["prompt"] if isinstance(r["prompt"], str) else " ".join(str(m.get("content", "")) for m in r["prompt"])
            out.append(f"{p} {r['rejected']} " + " ".join(r.get("anchors", [])))
        return out


@dataclass
class PreferenceData:
    """Preference pairs ``prompt`` / ``chosen`` / ``rejected`` (DPO, IPO, MADPO and its reward model)."""

    path: str = field(default="", metadata={"help": "File, folder (with `split`) or Hub id."})
    split: str | None = field(default="train", metadata={"help": "Split name, or file stem inside a folder."})
    config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (branch, tag or commit) to pin."})
    format: str = field(default="plain", metadata={"help": "plain (prompt/chosen/rejected columns) or pku_saferlhf."})
    prompt_field: str | None = field(
        default="prompt",
        metadata={"help": "Column holding the prompt; null when chosen/rejected are whole conversations (implicit prompt)."},
    )
    chosen_field: str = field(default="chosen", metadata={"help": "Column holding the preferred response."})
    rejected_field: str = field(default="rejected", metadata={"help": "Column holding the dispreferred response."})
    chat: bool = field(default=False, metadata={"help": "Wrap text prompts in the tokenizer's chat template."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep only the first N rows."})
    strip_prompt: str = field(default="auto", metadata={"help": "Remove the prompt from the start of chosen / "
        "rejected: auto (in a row whose chosen and rejected both start with its text prompt), always (error on a row "
        "where one does not), never. insub/imdb_prefix20_* stores the review prefix (`text`) inside both responses: "
        "its generator returned whole texts and its author's DPO script strips `text` from them; without the strip "
        "the prefix would appear twice."})

    stripped: int = field(default=0, init=False, repr=False)

    def _strip(self, prompt, chosen: str, rejected: str, i: int, where: str) -> tuple[str, str]:
        if self.strip_prompt not in STRIP_MODES:
            raise DataError(f"strip_prompt must be one of {STRIP_MODES}, got {self.strip_prompt!r}")
        if self.strip_prompt == "never" or not isinstance(prompt, str) or not prompt:
            return chosen, rejected
        both = chosen.startswith(prompt) and rejected.startswith(prompt)
        if not both:
            if self.strip_prompt == "always":
                raise DataError(f"{where}: row {i}: strip_prompt is 'always' but chosen or rejected does not start "
                                f"with the prompt {prompt[:60]!r}; use strip_prompt: auto or never")
            return chosen, rejected
        self.stripped += 1
        return chosen[len(prompt):], rejected[len(prompt):]

    def rows(self) -> list[dict]:
        _check_format(self.format)
        where = f"data {self.path} (split {self.split})"
        self.stripped = 0
        raw = read_records(self.path, self.split, self.config, self.revision)
        raw = raw[: self.max_samples] if self.max_samples else raw
        out = []
        if self.format == "pku_saferlhf":
            require_columns(raw, [self.prompt_field or "prompt", "response_0", "response_1", "safer_response_id"], where)
            for r in raw:
                s = int(r["safer_response_id"])
                out.append({"prompt": r[self.prompt_field or "prompt"], "chosen": r[f"response_{s}"],
                            "rejected": r[f"response_{1 - s}"]})
            return out
        columns = [self.chosen_field, self.rejected_field] + ([self.prompt_field] if self.prompt_field else [])
        require_columns(raw, columns, where)
        for i, r in enumerate(raw):
            if self.prompt_field:
                prompt = r[self.prompt_field]
            else:  # implicit prompt: the conversation up to the last (assistant) message
                if not isinstance(r[self.chosen_field], list):
                    raise DataError(f"{where}: prompt_field is null but {self.chosen_field!r} is not a conversation")
                prompt = r[self.chosen_field][:-1]
            chosen, rejected = _message_text(r[self.chosen_field]), _message_text(r[self.rejected_field])
            chosen, rejected = self._strip(prompt, chosen, rejected, i, where)
            if not chosen.strip() or not rejected.strip():
                raise DataError(f"{where}: row {i} has an empty chosen or rejected response")
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return out

    def load(self, tokenizer=None):
        """A ``datasets.Dataset`` with ``prompt`` (formatted for ``tokenizer``), ``chosen``, ``rejected`` text columns."""
        from datasets import Dataset

        return Dataset.from_list(
            [{**r, "prompt": _prompt_text(r["prompt"], tokenizer, self.chat)} for r in self.rows()]
        )

    def texts(self) -> list[str]:
        out = []
        for r in self.rows():
            p = r["prompt"] if isinstance(r["prompt"], str) else " ".join(str(m.get("content", "")) for m in r["prompt"])
            out.append(f"{p} {r['chosen']} {r['rejected']}")
        return out
