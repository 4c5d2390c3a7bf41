"""LoRA in the plugin's trainers, where it meets HF's Trainer: the ZeRO-3 refusal and the merged saving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from duet_plugin.core.lora import is_peft_model, save_merged

#: Why LoRA stops a DeepSpeed ZeRO-3 run at start (the trainers raise it as ``NotImplementedError``).
ZERO3_REFUSAL = (
    "trainer.method_args.lora with DeepSpeed ZeRO-3 is not supported yet (merging the adapters for saving needs the "
    "full weights); use ZeRO-2 or one process, or set trainer.method_args.lora=null."
)


def zero3_requested(args: Any) -> bool:
    """Whether HF ``TrainingArguments`` ask for DeepSpeed ZeRO-3, known before the Trainer is built: a
    ``--deepspeed`` config (``hf_deepspeed_config``) or ``accelerate launch``'s DeepSpeed plugin (``deepspeed_plugin``,
    whose ``zero_stage`` it fills from the config file)."""
    config = getattr(args, "hf_deepspeed_config", None)
    if config is not None and config.is_zero3():
        return True
    plugin = getattr(args, "deepspeed_plugin", None)
    return plugin is not None and str(getattr(plugin, "zero_stage", "")) == "3"


def save_trainer_output(model: Any, output_dir: str | Path, args: Any, tokenizer: Any = None) -> None:
    """A LoRA trainer's ``_save``: the merged plain checkpoint plus ``adapter/`` (:func:`save_merged`), the
    tokenizer and the training arguments (``training_args.bin``, as HF's ``Trainer._save`` writes them)."""
    from transformers.trainer import TRAINING_ARGS_NAME

    save_merged(model, output_dir, safe_serialization=args.save_safetensors)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    torch.save(args, os.path.join(output_dir, TRAINING_ARGS_NAME))


class LoRASaving:
    """Mixin before HF's ``Trainer`` in the bases: with a peft student, ``_save`` writes a plain merged checkpoint
    (what OU's eval.py loads) plus the adapter in ``adapter/``, and the trained model keeps its adapters unmerged;
    otherwise HF's own saving."""

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        if not is_peft_model(self.model):
            return super()._save(output_dir, state_dict=state_dict)
        tokenizer = getattr(self, "processing_class", None) or getattr(self, "tokenizer", None)
        save_trainer_output(self.model, output_dir or self.args.output_dir, self.args, tokenizer)
        return None
