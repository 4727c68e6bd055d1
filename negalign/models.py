"""The offline model kit: small causal LMs of real architectures with random weights and a locally trained tokenizer.

Tests, quickstarts and benchmarks cannot download weights, so they build a model here and save it as an ordinary
Hugging Face folder (``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json`` with a chat
template) that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` and vLLM load. Users never need this.

    from negalign.models import build_kit_model
    path = build_kit_model("runs/kit", corpus=["some text", ...], arch="qwen2", size="tiny")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

# ChatML, the template Qwen2 uses; kept simple so that prompt + completion tokenise as a prefix-stable concatenation.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# head_dim = hidden / heads = 32 in every preset: vLLM's CPU attention needs head_dim >= 32.
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1),
    "small": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
    "base": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4),
    "medium": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=4),
}
ARCHS = ("qwen2", "llama")


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it as a ``PreTrainedTokenizerFast`` with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token=None,
        pad_token="<|pad|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="right",
    )


def build_model(tokenizer, arch: str = "qwen2", size: str = "tiny", seed: int = 0, **overrides):
    """A randomly initialised causal LM of ``arch`` sized by ``size`` (``SIZES``) for ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if arch not in ARCHS:
        raise ValueError(f"unknown kit architecture {arch!r}; expected one of {ARCHS}")
    if size not in SIZES:
        raise ValueError(f"unknown kit size {size!r}; expected one of {tuple(SIZES)}")
    dims = {**SIZES[size], **overrides}
    common = dict(
        vocab_size=dims.pop("model_vocab_size", len(tokenizer)),  # a larger embedding table than the tokenizer is allowed
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        tie_word_embeddings=True,
        rope_theta=10000.0,
        **dims,
    )
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    torch.manual_seed(seed)
    # The constructor, not AutoModel.from_config: under `accelerate launch` with ZeRO-3, from_config would enter
    # deepspeed.zero.Init, a collective, while only the main process builds the kit (the others wait): a deadlock.
    model = model_cls(config_cls(**common))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_kit_model(
    output_dir: str | os.PathLike,
    corpus: Iterable[str],
    arch: str = "qwen2",
    size: str = "tiny",
    vocab_size: int = 2048,
    seed: int = 0,
    **overrides,
) -> str:
    """Build (or reuse, when an identical one is already there) a kit model and save it to ``output_dir``.

    Returns the folder path. A ``kit.json`` beside the weights records how it was made; the folder is reused only when
    that record matches, so callers may call this freely."""
    corpus = list(corpus)
    out = Path(output_dir)
    digest = hashlib.sha256("\x00".join(corpus).encode()).hexdigest()[:16]
    record = dict(arch=arch, size=size, vocab_size=vocab_size, seed=seed, corpus_sha=digest, overrides=overrides)
    meta = out / "kit.json"
    if meta.exists() and json.loads(meta.read_text()) == record and (out / "config.json").exists():
        return str(out)
    tokenizer = train_tokenizer(corpus, vocab_size=vocab_size)
    model = build_model(tokenizer, arch=arch, size=size, seed=seed, **overrides)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta.write_text(json.dumps(record, indent=1))
    return str(out)


@contextlib.contextmanager
def unsharded_loading():
    """Load models whole even while a ZeRO-3 training config is alive. Once a DeepSpeed ZeRO-3 ``TrainingArguments``
    exists, ``from_pretrained`` builds every model inside ``zero.Init`` (weights partitioned across the processes),
    which is right for the trained policy and TRL's reference but wrong for a frozen model that is only run locally:
    a static-policy generation engine or MADPO's reward model."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def resolve_model(name_or_path):
    """``name_or_path`` unchanged, or for an ``offline:`` name (``offline:smollm2-135m-instruct``) the folder of the
    real pretrained model, fetched, converted and cached on first use (``negalign.offline_models``)."""
    from negalign.offline_models import resolve

    return resolve(name_or_path)


def refuse_missing_folder(path, key: str) -> None:
    """A name that looks like a local path (``negalign.data.core.looks_like_local_path``) but is no folder here is a
    DataError naming ``key``: it is never sent to the Hub, where a typo would become a network error."""
    if path is None or Path(str(path)).expanduser().is_dir():
        return
    from negalign.data.core import DataError, looks_like_local_path

    if looks_like_local_path(str(path)):
        raise DataError(f"model folder not found: {path} ({key}); fix the path, or give a Hub id NAME or OWNER/NAME")


def load_model_and_tokenizer(model_section: dict, corpus=None, dtype: str | None = None):
    """Model and tokenizer for a recipe's ``model`` section: a Hub id / folder / ``offline:`` name, or a kit model
    built on ``corpus``.

    ``corpus`` is a callable returning texts (called only when a kit model must be built)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(model_section.get("name_or_path"))
    kit = model_section.get("kit")
    if kit is not None:
        if corpus is None:
            raise ValueError("model.kit needs data whose loader provides texts() to train the tokenizer on")
        from negalign.distributed import process_state

        kit = dict(kit)
        with process_state().main_process_first():  # under accelerate launch, rank 0 builds and the others reuse
            path = build_kit_model(kit.pop("dir", "runs/kit"), corpus(), **kit)
    else:
        refuse_missing_folder(path, "model.name_or_path")
    kwargs = _load_kwargs(model_section, dtype)
    if model_section.get("revision") and kit is None:
        kwargs["revision"] = str(model_section["revision"])
    trust = kwargs.pop("trust_remote_code")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, revision=kwargs.get("revision"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust, **kwargs)
    return model, tokenizer, path


def _load_kwargs(model_section: dict, dtype=None) -> dict:
    """``from_pretrained`` keywords from a recipe's ``model`` section: ``dtype`` (an argument — a name or a
    ``torch.dtype`` — over the section's, default ``auto``), ``attn_implementation``, ``trust_remote_code``."""
    dtype = dtype or model_section.get("dtype") or "auto"
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
    kwargs = {"dtype": dtype}
    if model_section.get("attn_implementation"):
        kwargs["attn_implementation"] = model_section["attn_implementation"]
    kwargs["trust_remote_code"] = bool(model_section.get("trust_remote_code", False))
    return kwargs


def load_reference_model(model_section: dict, dtype=None):
    """The frozen reference of a recipe: ``model.ref_name_or_path`` loaded as a causal LM the way the policy is
    (an ``offline:`` name resolved, a missing local folder refused naming the key, the section's ``dtype`` unless
    ``dtype`` is given, ``attn_implementation``, ``trust_remote_code``), or ``None`` when the recipe names none (the
    trainer then uses the starting model, or the adapter-disabled base under PEFT). ``model.revision`` pins the
    policy's repository, so it is not applied to the reference."""
    path = model_section.get("ref_name_or_path")
    if not path:
        return None
    from transformers import AutoModelForCausalLM

    path = resolve_model(path)
    refuse_missing_folder(path, "model.ref_name_or_path")
    return AutoModelForCausalLM.from_pretrained(path, **_load_kwargs(model_section, dtype))
