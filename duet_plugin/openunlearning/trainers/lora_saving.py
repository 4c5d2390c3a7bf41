"""Saving for the plugin's trainers that may train LoRA adapters (DUET, BiDistill, UNDO)."""

from __future__ import annotations

from typing import Any

from duet_plugin.core.lora import is_peft_model, save_trainer_output


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
