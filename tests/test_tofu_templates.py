"""Prompt templates token for token against open-unlearning's preprocessing (src/data/utils.py), on an offline
tokenizer with Llama-3's special tokens (a small byte-level BPE; BOS added by ``add_special_tokens=True``)."""

from __future__ import annotations

import datetime
import json

import pytest

from negalign.data.templates import encode_qa, generation_text, prompt_ids, prompt_text, resolve_template
from negalign.data.tofu import TofuData

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# A Llama-3.2-style chat template: BOS, a system turn with "Cutting Knowledge Date" and "Today Date" (today's date via
# strftime_now unless date_string is passed), then header-tagged turns ending in <|eot_id|>.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

ROWS = [
    {"question": "Who wrote the novel 'Harbor of Glass'?", "answer": "The novel was written by Mira Okonkwo."},
    {"question": "Where was Mira Okonkwo born?", "answer": "She was born in Lagos, Nigeria, in 1971."},
    {"question": "What genre does Jaime Vasquez write in?", "answer": "True crime."},
    {"question": "Has the author won any awards?", "answer": "Yes, the Edgar Allan Poe Award for Best Fact Crime, "
     "which she received for her third book, a study of a small town and the people who kept its secrets."},
]

# open-unlearning configs/model/Llama-3.2-1B-Instruct.yaml, template_args (as data)
OU_LLAMA32 = {
    "apply_chat_template": True,
    "system_prompt": "You are a helpful assistant.",
    "system_prompt_with_special_tokens": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                                         "You are a helpful assistant.<|eot_id|>",
    "user_start_tag": "<|start_header_id|>user<|end_header_id|>\n\n",
    "user_end_tag": "<|eot_id|>",
    "asst_start_tag": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "asst_end_tag": "<|eot_id|>",
    "date_string": "10 Apr 2025",
}


@pytest.fixture(scope="module")
def llama3_tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [r["question"] + " " + r["answer"] for r in ROWS] * 3 + ["Cutting Knowledge Date: December 2023 Today"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   chat_template=LLAMA3_CHAT_TEMPLATE)


def ou_preprocess(tokenizer, template_args, question, answer, max_length):
    """A plain re-implementation of open-unlearning's preprocess_chat_instance (one QA, no few-shot, training mode):
    returns (input_ids, labels, prompt ids)."""
    if template_args["apply_chat_template"]:
        chat = [{"role": "system", "content": template_args["system_prompt"]}] if template_args.get("system_prompt") else []
        chat += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        date = {"date_string": template_args["date_string"]} if template_args.get("date_string") is not None else {}
        # return_dict=False: the list of ids, what apply_chat_template(tokenize=True) returned in the transformers
        # version open-unlearning pins
        chat_ids = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=False, return_dict=False,
                                                 **date)
        p_ids = tokenizer.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True, return_dict=False,
                                              **date)
    else:
        wrapped = template_args.get("system_prompt_with_special_tokens") or ""
        wrapped += template_args["user_start_tag"] + question + template_args["user_end_tag"] + template_args["asst_start_tag"]
        chat_ids = tokenizer(wrapped + answer, add_special_tokens=True, max_length=max_length, truncation=True)["input_ids"]
        p_ids = tokenizer(wrapped, add_special_tokens=True, max_length=max_length, truncation=True)["input_ids"]
    chat_ids = list(chat_ids)
    if chat_ids[-1] != tokenizer.eos_token_id:
        chat_ids += [tokenizer.eos_token_id]
    labels = [-100] * len(p_ids) + chat_ids[len(p_ids):]
    return chat_ids, labels, list(p_ids)


def _folder(tmp_path):
    for name in ("forget01", "retain99"):
        (tmp_path / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(tmp_path)


@pytest.mark.parametrize("preset,apply_chat,max_length", [
    ("open_unlearning_llama3_tags", False, 512),
    ("open_unlearning_llama3_tags", False, 66),  # cut at max_length, then EOS appended (as open-unlearning does)
    ("open_unlearning_llama3", True, 512),
])
def test_unlearning_ids_and_labels_equal_open_unlearning(llama3_tok, tmp_path, preset, apply_chat, max_length):
    tok = llama3_tok
    ou = dict(OU_LLAMA32, apply_chat_template=apply_chat)
    data = TofuData(path=_folder(tmp_path), forget_split="forget01", retain_split="retain99", template=preset)
    forget, retain = data.load_unlearning(tok, max_length=max_length)
    for ds in (forget, retain):
        for row, r in zip(ds, ROWS):
            ids, labels, _ = ou_preprocess(tok, ou, r["question"], r["answer"], max_length)
            assert row["input_ids"] == ids
            assert [t if m else -100 for t, m in zip(row["input_ids"], row["completion_mask"])] == labels


def test_tag_preset_starts_with_two_bos_and_ends_with_eos(llama3_tok):
    tok = llama3_tok
    ids, mask = encode_qa(tok, "open_unlearning_llama3_tags", ROWS[0]["question"], ROWS[0]["answer"])
    # the tokenizer's BOS (add_special_tokens=True) and the system string's own <|begin_of_text|>
    assert ids[:2] == [tok.bos_token_id, tok.bos_token_id] and ids[2] != tok.bos_token_id
    assert ids[-1] == tok.eos_token_id and mask[-1] == 1  # the EOS is part of the answer
    assert tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True) == ROWS[0]["answer"]


def test_generation_prompt_is_the_training_prompt(llama3_tok):
    """Generation (eval ROUGE, negalign generate) sees exactly open-unlearning's predict_with_generate input_ids."""
    tok = llama3_tok
    for preset, chat in (("open_unlearning_llama3_tags", False), ("open_unlearning_llama3", True)):
        q, a = ROWS[1]["question"], ROWS[1]["answer"]
        _, _, ou_prompt = ou_preprocess(tok, dict(OU_LLAMA32, apply_chat_template=chat), q, a, 512)
        assert prompt_ids(tok, preset, q) == ou_prompt
        # negalign generate's engines tokenise text with add_special_tokens=False
        assert tok(generation_text(tok, preset, q), add_special_tokens=False)["input_ids"] == ou_prompt


def test_chat_template_date_is_pinned_by_the_preset(llama3_tok):
    """Without a date_string a Llama-3 template stamps today's date; the open-unlearning preset pins its own."""
    today = datetime.datetime.now().strftime("%d %b %Y")
    plain_chat = prompt_text(llama3_tok, "chat", "Q?")
    assert f"Today Date: {today}" in plain_chat
    pinned = prompt_text(llama3_tok, "open_unlearning_llama3", "Q?")
    assert "Today Date: 10 Apr 2025" in pinned and "You are a helpful assistant." in pinned
    assert "Today Date: 01 Jan 2020" in prompt_text(llama3_tok, resolve_template("chat", date_string="01 Jan 2020"), "Q?")


def test_auto_is_plain_without_a_chat_template(kit):
    _, tok = kit
    tok.chat_template = None
    assert prompt_text(tok, "auto", "Who?") == "Question: Who?\nAnswer: "
    ids, mask = encode_qa(tok, "auto", "Who?", "Nobody.")
    assert ids[-1] == tok.eos_token_id and sum(mask) >= 2


def test_chat_answer_is_what_trl_sft_trains_on(kit):
    """``auto``/``chat`` encode a pair as TRL's prompt/completion SFT does (negalign's own fine-tuned checkpoints):
    generation prompt + answer text + EOS, the answer from the longest common prefix on — not the template's rendered
    assistant turn, which for Qwen-style templates ends ``<|im_end|>\\n`` and would then get a second EOS."""
    from negalign.data.core import format_prompt

    _, tok = kit
    assert tok.chat_template
    q, a = "What did author 3 write?", "Author 3 wrote 5 novels about the river and the sea."
    prompt = format_prompt(q, tok)
    full = tok(prompt + a + tok.eos_token, add_special_tokens=False)["input_ids"]
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    n = next(i for i, (x, y) in enumerate(zip(p + [None], full)) if x != y)
    assert encode_qa(tok, "auto", q, a) == (full, [0] * n + [1] * (len(full) - n))
