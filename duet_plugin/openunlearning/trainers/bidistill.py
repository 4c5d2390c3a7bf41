"""BiDistill as an OpenUnlearning trainer: pull towards the prompt-steered teacher on what must stay, push away from
what the student ranks high and the teacher does not, over the forget / retain / boundary / adversarial streams.

The objective is ``duet_plugin.core.bidistill``; the teacher, its targets, the data and LoRA are the shared base's
(``trainers/steered.py``, ``trainers/base.py``), as for DUET. The precomputed store keeps the teacher's top
``store_top_k`` values per position, which the push term reads at the student's top indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from duet_plugin.core.bidistill import BiDistillConfig, TermScales, bidistill_loss
from duet_plugin.core.options import OptionError
from duet_plugin.openunlearning.trainers.lora_saving import zero3_requested
from duet_plugin.openunlearning.trainers.steered import SteeredTeacherTrainer


class BiDistill(SteeredTeacherTrainer):
    """``trainer=BiDistill``: see ``configs/trainer/BiDistill.yaml`` for every option."""

    config_class = BiDistillConfig
    log_prefix = "bidistill"

    def prepare(self, kwargs: dict[str, Any]) -> None:
        if self.cfg.balance == "grad" and zero3_requested(kwargs.get("args")):  # before anything is loaded
            raise OptionError(
                "balance", "=grad measures each term's gradient over the weights, which ZeRO-3 partitions across "
                "processes; use balance: start (or ZeRO-2 / one process)."
            )  # fmt: skip
        super().prepare(kwargs)

    def setup(self) -> None:
        super().setup()
        self.term_scales = TermScales.for_config(self.cfg)  # fixed at the first step, for the whole run

    def compute_loss(
        self,
        model: Any,
        inputs: Mapping[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        streams, teacher = self.streams(inputs), self.teacher_source(model)
        pad_id = self.data_collator.pad_id
        loss, parts = bidistill_loss(
            model, streams, self.cfg, self.vocab_size, pad_id, self.eos_ids, **teacher, scales=self.term_scales
        )
        self.log_terms(parts)
        return (loss, None) if return_outputs else loss
