"""DUET as an OpenUnlearning trainer: the student imitates the prompt-steered teacher by top-K logit distillation.

The objective is ``duet_plugin.core.duet``; the teacher, its targets, the data and LoRA are the shared base's
(``trainers/steered.py``, ``trainers/base.py``). Options: ``DUETConfig``, ``configs/trainer/DUET.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from duet_plugin.core.duet import DUETConfig, duet_loss
from duet_plugin.openunlearning.trainers.steered import SteeredTeacherTrainer


class DUET(SteeredTeacherTrainer):
    """``trainer=DUET``: see ``configs/trainer/DUET.yaml`` for every option."""

    config_class = DUETConfig
    log_prefix = "duet"

    def compute_loss(
        self,
        model: Any,
        inputs: Mapping[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        streams = self.streams(inputs)
        teacher = self.teacher_source(model)
        loss, parts = duet_loss(model, streams, self.cfg, self.data_collator.pad_id, self.eos_ids, **teacher)
        self.log_terms({f"{stream}_loss": value for stream, value in parts.items()})
        return (loss, None) if return_outputs else loss
