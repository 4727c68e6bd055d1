"""Supervised fine-tuning with TRL's SFTTrainer (loss on completion tokens only). The starting point of every
unlearning and RL pipeline (e.g. the TOFU fine-tuned model) and the ``sft`` control of the per-step issue."""

from __future__ import annotations

from trl import SFTConfig, SFTTrainer

from negalign.trainers.common import data_loader, model_and_tokenizer, peft_config, train_and_finish, NonFiniteLossCallback

CONFIG_CLASS = SFTConfig
METHOD_DEFAULTS = {"sft": {"completion_only_loss": True, "activation_checkpointing": False}}


def train(recipe) -> dict:
    loader = data_loader(recipe)
    model, tokenizer, _ = model_and_tokenizer(recipe, loader)
    dataset = loader.load(tokenizer)
    config = recipe.build_config()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(recipe),
        callbacks=[NonFiniteLossCallback()],
    )
    return train_and_finish(trainer, recipe)
