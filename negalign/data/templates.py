"""Prompt templates: how a question (and its answer) become token ids — one place for unlearning, TOFU eval, generate.

A template is a data/model setting (``data.template`` in a recipe, ``--template`` on ``negalign eval tofu`` and
``negalign generate``). Kinds:

* ``chat`` — the tokenizer's chat template, with an optional ``system_prompt`` and ``date_string`` (Llama-3.x
  templates stamp *today's* date into the system turn unless ``date_string`` is given);
* ``tags`` — literal tags around the question, tokenised with ``add_special_tokens`` (open-unlearning's
  ``apply_chat_template: false`` path, ``src/data/utils.py::preprocess_chat_instance``);
* ``plain`` — ``Question: …\\nAnswer: ``.

Named presets (``PRESETS``):

* ``open_unlearning_llama3`` — open-unlearning's ``configs/model/Llama-3.2-1B-Instruct.yaml`` as it is set:
  ``apply_chat_template: True``, system prompt ``You are a helpful assistant.``, ``date_string: 10 Apr 2025``;
* ``open_unlearning_llama3_tags`` — the same file's tags with ``apply_chat_template: false``: system string
  ``<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\nYou are a helpful assistant.<|eot_id|>``, user
  ``<|start_header_id|>user<|end_header_id|>\\n\\n`` … ``<|eot_id|>``, assistant
  ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``, tokenised with ``add_special_tokens=True`` — so the ids
  start with two BOS tokens (the tokenizer's and the system string's), as open-unlearning produces them;
* ``chat`` (no system prompt; the answer is the answer text + EOS after the generation prompt, as TRL's
  prompt/completion SFT trains it), ``plain``; ``auto`` (the default) = ``chat`` when the tokenizer has a chat
  template, else ``plain`` — the prompts negalign's own ``sft`` recipes train with.

Encoding (``encode_qa``) follows open-unlearning: the whole ``prompt + answer`` text is tokenised at once (truncated
to ``max_length``), EOS is appended when the last id is not EOS, and the answer starts at ``len(prompt ids)``
(``boundary="prompt_length"``). ``plain`` uses ``boundary="common_prefix"``, the rule TRL's SFT uses for
prompt/completion data (negalign's own fine-tuned checkpoints), so a prompt ending in a space that merges with the
answer's first word does not cut that word off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

TEMPLATE_KINDS = ("chat", "tags", "plain")
LLAMA3_SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class PromptTemplate:
    kind: str = "plain"
    system_prompt: str | None = None  # chat
    date_string: str | None = None  # chat: passed to the template (Llama-3.x "Today Date")
    system_tags: str = ""  # tags: text before the first user tag (may hold special tokens)
    user_start: str = "Question: "
    user_end: str = "\n"
    asst_start: str = "Answer: "
    add_special_tokens: bool = False  # tags / plain: tokenizer(..., add_special_tokens=...)
    boundary: str = "prompt_length"  # prompt_length (open-unlearning) | common_prefix (TRL SFT)
    # chat: True = the template renders the assistant turn (open-unlearning: apply_chat_template on the whole chat,
    # then EOS if not last); False = generation prompt + answer text + EOS (TRL's prompt/completion SFT, which made
    # negalign's own checkpoints). They agree for Llama-3 templates, whose assistant turn ends in the EOS itself.
    render_answer: bool = True

    def __post_init__(self):
        if self.kind not in TEMPLATE_KINDS:
            raise ValueError(f"template kind must be one of {TEMPLATE_KINDS}, got {self.kind!r}")
        if self.boundary not in ("prompt_length", "common_prefix"):
            raise ValueError(f"boundary must be prompt_length or common_prefix, got {self.boundary!r}")


_LLAMA3_TAGS = dict(
    system_tags=f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_SYSTEM}<|eot_id|>",
    user_start="<|start_header_id|>user<|end_header_id|>\n\n",
    user_end="<|eot_id|>",
    asst_start="<|start_header_id|>assistant<|end_header_id|>\n\n",
)
PRESETS: dict[str, PromptTemplate] = {
    "open_unlearning_llama3": PromptTemplate(kind="chat", system_prompt=LLAMA3_SYSTEM, date_string="10 Apr 2025"),
    "open_unlearning_llama3_tags": PromptTemplate(kind="tags", add_special_tokens=True, **_LLAMA3_TAGS),
    "chat": PromptTemplate(kind="chat", render_answer=False, boundary="common_prefix"),
    "plain": PromptTemplate(kind="plain", boundary="common_prefix"),
}
TEMPLATE_NAMES = ("auto", *PRESETS)


def resolve_template(template=None, tokenizer=None, system_prompt: str | None = None,
                     date_string: str | None = None) -> PromptTemplate:
    """A :class:`PromptTemplate` from a preset name (``auto`` / None: chat if ``tokenizer`` has a chat template, else
    plain) or an instance; ``system_prompt`` / ``date_string`` override the preset's (chat kinds)."""
    if isinstance(template, PromptTemplate):
        t = template
    else:
        name = template or "auto"
        if name == "auto":
            name = "chat" if tokenizer is not None and getattr(tokenizer, "chat_template", None) else "plain"
        if name not in PRESETS:
            raise ValueError(f"unknown prompt template {name!r}; choose from {', '.join(TEMPLATE_NAMES)}")
        t = PRESETS[name]
    if system_prompt is not None:
        t = replace(t, system_prompt=system_prompt)
    if date_string is not None:
        t = replace(t, date_string=date_string)
    return t


def _chat_messages(t: PromptTemplate, question: str, answer: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": t.system_prompt}] if t.system_prompt else []
    msgs.append({"role": "user", "content": question})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def _chat_kwargs(t: PromptTemplate) -> dict:
    return {"date_string": t.date_string} if t.date_string is not None else {}


def _ids(out) -> list[int]:
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return list(out)


def prompt_text(tokenizer, template, question: str) -> str:
    """The prompt as text (what precedes the answer). For ``tags`` with ``add_special_tokens`` the tokenizer adds
    its BOS in front of this text when it is tokenised (``prompt_ids``)."""
    t = resolve_template(template, tokenizer)
    if t.kind == "chat":
        return tokenizer.apply_chat_template(_chat_messages(t, question), tokenize=False, add_generation_prompt=True,
                                             **_chat_kwargs(t))
    return t.system_tags + t.user_start + question + t.user_end + t.asst_start


def _tokenize(tokenizer, t: PromptTemplate, text: str, max_length: int | None) -> list[int]:
    kw = {"max_length": max_length, "truncation": True} if max_length else {}
    return list(tokenizer(text, add_special_tokens=t.add_special_tokens, **kw)["input_ids"])


def prompt_ids(tokenizer, template, question: str, max_length: int | None = None) -> list[int]:
    """Token ids of the prompt, as generation and scoring see them."""
    t = resolve_template(template, tokenizer)
    if t.kind == "chat":
        ids = _ids(tokenizer.apply_chat_template(_chat_messages(t, question), tokenize=True, return_dict=False,
                                                 add_generation_prompt=True, **_chat_kwargs(t)))
        return ids[:max_length] if max_length else ids
    return _tokenize(tokenizer, t, prompt_text(tokenizer, t, question), max_length)


def generation_text(tokenizer, template, question: str) -> str:
    """Prompt text for engines that tokenise with ``add_special_tokens=False`` (``negalign generate``): the tokenizer's
    BOS is written out in front when the template adds special tokens, so the engine sees ``prompt_ids``."""
    t = resolve_template(template, tokenizer)
    text = prompt_text(tokenizer, t, question)
    if t.kind != "chat" and t.add_special_tokens and getattr(tokenizer, "bos_token", None):
        probe = tokenizer("", add_special_tokens=True)["input_ids"]
        if probe and probe[0] == tokenizer.bos_token_id:
            text = tokenizer.bos_token + text
    return text


def encode_qa(tokenizer, template, question: str, answer: str, max_length: int | None = None
              ) -> tuple[list[int], list[int]]:
    """``(input_ids, completion_mask)`` of one question/answer pair, open-unlearning's way: ``prompt + answer``
    tokenised as one text (cut at ``max_length``), EOS appended unless already last, the answer (EOS included)
    marked from the prompt's length on. ``labels`` in open-unlearning's terms are ``input_ids`` where the mask is 1
    and -100 elsewhere."""
    t = resolve_template(template, tokenizer)
    eos = tokenizer.eos_token_id
    if t.kind == "chat" and t.render_answer:
        msgs = _chat_messages(t, question, str(answer))
        ids = _ids(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False, add_generation_prompt=False,
                                                 **_chat_kwargs(t)))
        ids = ids[:max_length] if max_length else ids
        p = prompt_ids(tokenizer, t, question, max_length)
    else:  # one text (chat: the generation prompt, whose special tokens are in the text: no add_special_tokens)
        text = prompt_text(tokenizer, t, question)
        ids = _tokenize(tokenizer, t, text + str(answer), max_length)
        p = _tokenize(tokenizer, t, text, max_length)
    if eos is not None and (not ids or ids[-1] != eos):
        ids = ids + [eos]
    n = len(p)
    if t.boundary == "common_prefix":
        n = 0
        while n < min(len(p), len(ids)) and p[n] == ids[n]:
            n += 1
    n = min(n, len(ids))
    return ids, [0] * n + [1] * (len(ids) - n)
