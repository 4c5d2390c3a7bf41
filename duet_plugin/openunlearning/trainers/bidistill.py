"""BiDistill as an OpenUnlearning trainer: DUET's prompt-steered teacher, pulled towards on what must stay and pushed
away from on what must go, over the forget / retain / boundary / adversarial streams.

Thin adapter over DUET's trainer (same prefix, teachers, collator and teacher modes); the config and the loss are
framework-free (``duet_plugin.core.bidistill``). The precomputed store keeps the teacher's top ``store_top_k`` values
per position, which the push term reads at the student's top indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from duet_plugin.core.bidistill import BiDistillConfig, bidistill_loss
from duet_plugin.core.ensemble import vocab_size
from duet_plugin.core.losses import validate_top_k
from duet_plugin.openunlearning.trainers.duet import DUET, reject_unknown_options

#: What ``trainer.method_args`` may hold: the prefix spec, the teacher list, LoRA, every BiDistillConfig field.
METHOD_ARGS = ("prefix", "teachers", "lora", *BiDistillConfig.__dataclass_fields__)


class BiDistill(DUET):
    """``trainer=BiDistill``: see ``configs/trainer/BiDistill.yaml`` for every option."""

    log_prefix = "bidistill"

    def __init__(
        self,
        prefix: Mapping[str, Any] | str | None = None,
        top_k: int = 10,
        push_top_k: int = 10,
        store_top_k: int | None = 256,
        distance: str = "huber",
        huber_delta: float = 1.0,
        bild_temperature: float = 3.0,
        w_pull: float = 1.0,
        w_push: float = 1.0,
        stream_weights: Mapping[str, Any] | None = None,
        prefill_target: str = "restart",
        positions: str = "first",
        num_positions: int = 8,
        teacher: str = "precomputed",
        teacher_batch_size: int = 16,
        teachers: Any = None,
        lora: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        reject_unknown_options(kwargs, method="BiDistill", method_args=METHOD_ARGS, experiment="bidistill")
        self.bi = BiDistillConfig(
            top_k=top_k,
            push_top_k=push_top_k,
            store_top_k=store_top_k,
            distance=distance,
            huber_delta=huber_delta,
            bild_temperature=bild_temperature,
            w_pull=w_pull,
            w_push=w_push,
            stream_weights=stream_weights,
            prefill_target=prefill_target,
            positions=positions,
            num_positions=num_positions,
            teacher=teacher,
            teacher_batch_size=teacher_batch_size,
        )
        model = kwargs.get("model")
        if model is None:
            raise ValueError("BiDistill needs the model (OU passes it to every trainer).")
        self.vocab_size = vocab_size(model)
        for key, k in (("top_k", top_k), ("push_top_k", push_top_k)):
            try:
                validate_top_k(k, self.vocab_size)
            except ValueError as err:
                raise ValueError(str(err).replace("top_k", key, 1)) from None
        teacher_cfg = self.bi.teacher_config(self.vocab_size)
        super().__init__(
            prefix=prefix,
            top_k=teacher_cfg.top_k,
            huber_delta=huber_delta,
            positions=positions,
            num_positions=num_positions,
            teacher=teacher,
            teacher_batch_size=teacher_batch_size,
            teachers=teachers,
            lora=lora,
            *args,  # noqa: B026 - OU passes everything by keyword; args is empty
            **kwargs,
        )
        self.data_collator.configure(
            template_args=self.data_collator.template_args,
            prefix=self.data_collator.prefix,
            extra_prefixes=self.data_collator.extra_prefixes,
            teacher_prefill=self.bi.prefill_target == "continue",
        )

    def objective(self, model: Any, streams: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
        return bidistill_loss(
            model,
            streams,
            self.bi,
            self.vocab_size,
            self._pad_id,
            self._eos_ids,
            teacher=self.teacher_model,
            store=self.targets,
        )
