"""UNDO as an OpenUnlearning trainer: noise a copy of an unlearned model, then distil the unlearned teacher back in.

The noise, the loss and the recovery gap are ``duet_plugin.core`` (``noise.py``, ``undo.py``); LoRA and the teacher
preparation are the shared base's (``trainers/base.py``). Before any compute the teacher checkpoint(s) are checked;
the student starts from the teacher's weights (or from ``model=``), gets shrink-and-perturb, and distils with forward
KL on the retain (generic) stream of OU's unlearning data, until :class:`RetainRecoveryCallback` sees its retain loss
back within ``1 - recovery`` of the teacher's. With ``lora`` the noised student is wrapped after the noise: only the
adapters train over the frozen noised base (docs/training.md has what that recovers).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader
from transformers import TrainerCallback

from duet_plugin.core.collate import to_device
from duet_plugin.core.ensemble import as_teacher, check_checkpoint
from duet_plugin.core.noise import shrink_and_perturb
from duet_plugin.core.undo import (
    UNDOConfig,
    copy_weights,
    distill_mask,
    from_first_distilled,
    label_nll,
    recovered,
    recovery_gap,
    undo_logits,
    undo_loss,
)
from duet_plugin.openunlearning.trainers.base import METHOD_ARGS, DistillationTrainer, method_args_errors

logger = logging.getLogger(__name__)

TEACHER_KEY = f"{METHOD_ARGS}.teacher"
#: Logged at start when ``lora`` is set.
LORA_WARNING = (
    f"UNDO with {METHOD_ARGS}.lora: only the adapters train, over the frozen noised base, and a rank-r update cannot "
    "undo full-rank noise: expect the retain gap to stall above the recovery target (measured in "
    "docs/training.md). To save memory without LoRA: trainer.args.gradient_checkpointing=true."
)


def distillation_dataset(train_dataset: Any, streams: list[str]) -> Any:
    """The stream(s) of OU's ForgetRetainDataset to distil on (UNDO: retain); any other dataset as it is."""
    if not (hasattr(train_dataset, "forget") and hasattr(train_dataset, "retain")):
        return train_dataset
    parts = []
    for stream in streams:
        part = getattr(train_dataset, stream)
        if part is None or len(part) == 0:
            raise ValueError(
                f"UNDO distils on the {stream} stream but data.{stream} is empty; set it (generic/retain text) or "
                f"change trainer.method_args.streams."
            )
        parts.append(part)
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


class RetainRecoveryCallback(TrainerCallback):
    """Every ``recovery_eval_steps`` steps: the student's and the teacher's NLL on a fixed retain sample; logs
    ``undo/retain_gap`` (``(student - teacher) / teacher``) and stops training once the gap is within
    ``1 - recovery``."""

    def __init__(self, trainer: UNDO) -> None:
        self.trainer = trainer
        self.teacher_nll: float | None = None
        self.gaps: list[tuple[int, float]] = []

    def _sample(self) -> list[dict[str, Any]]:
        t, cfg = self.trainer, self.trainer.cfg
        loader = DataLoader(t.train_dataset, batch_size=t.args.per_device_train_batch_size, collate_fn=t.data_collator)
        batches = []
        for batch in loader:
            batches.append(batch)
            if len(batches) == cfg.recovery_batches:
                break
        return batches

    @torch.no_grad()
    def _nll(self, model: Any, batches: list[dict[str, Any]]) -> float:
        total, count = 0.0, 0
        for batch in batches:
            batch = to_device(batch, self.trainer.accelerator.device)
            with self.trainer.accelerator.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
            s, n = label_nll(logits, batch["labels"])
            total, count = total + s, count + n
        return total / max(count, 1)

    def measure(self, step: int) -> float:
        t = self.trainer
        batches = self._sample()
        if self.teacher_nll is None:
            self.teacher_nll = self._nll(t.teacher_model, batches)
        was_training = t.model.training
        t.model.eval()
        student = self._nll(t.model, batches)
        t.model.train(was_training)
        gap = recovery_gap(student, self.teacher_nll)
        self.gaps.append((step, gap))
        t.pending_logs.update(
            {"undo/retain_gap": gap, "undo/student_retain_nll": student, "undo/teacher_retain_nll": self.teacher_nll}
        )
        return gap

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        gap = self.measure(state.global_step)
        logger.info("UNDO: retain gap of the noised student before distillation: %.4f", gap)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        cfg = self.trainer.cfg
        if state.global_step % cfg.recovery_eval_steps:
            return control
        gap = self.measure(state.global_step)
        if cfg.recovery is not None and recovered(gap, cfg.recovery):
            logger.info(
                "UNDO: retain gap %.4f <= %.4f at step %d: %.0f%% recovery reached, stopping",
                gap,
                1 - cfg.recovery,
                state.global_step,
                100 * cfg.recovery,
            )
            control.should_training_stop = True
            control.should_log = True
        return control


class UNDO(DistillationTrainer):
    """``trainer=UNDO``: see ``configs/trainer/UNDO.yaml`` for every option."""

    config_class = UNDOConfig
    log_prefix = "undo"

    def prepare(self, kwargs: dict[str, Any]) -> None:
        self.teacher_specs = specs = self.cfg.teachers()
        for i, spec in enumerate(specs):
            check_checkpoint(spec.path, f"{TEACHER_KEY}[{i}]" if len(specs) > 1 else TEACHER_KEY)
        if kwargs.get("train_dataset") is not None:
            kwargs["train_dataset"] = distillation_dataset(kwargs["train_dataset"], self.cfg.streams)
        model = kwargs["model"]
        self._teachers = self.load_teachers(specs, model, TEACHER_KEY)
        if self.cfg.student_init == "teacher":
            self._copy_weights(self._teachers[0], model, specs[0].path)
        changed = shrink_and_perturb(
            model, self.cfg.alpha, self.cfg.beta, self.cfg.noise_include, self.cfg.noise_exclude, self.cfg.noise_seed
        )
        logger.info(
            "UNDO: student = %s, shrink-and-perturb alpha=%g beta=%g on %d parameter tensors",
            specs[0].path if self.cfg.student_init == "teacher" else "model=...",
            self.cfg.alpha,
            self.cfg.beta,
            len(changed),
        )
        if self.cfg.lora is not None:  # wrapped next, by the base: the noised base stays frozen
            logger.warning(LORA_WARNING)

    def setup(self) -> None:
        frozen = [self.prepare_frozen(t) for t in self._teachers]
        del self._teachers
        self.teacher_model = as_teacher(frozen, [s.weight for s in self.teacher_specs])
        self.recovery_callback = RetainRecoveryCallback(self)
        self.add_callback(self.recovery_callback)

    @staticmethod
    def _copy_weights(teacher: Any, student: Any, path: str) -> None:
        """The teacher's weights into the student. Under DeepSpeed ZeRO-3 with ``zero3_init_flag`` the teacher,
        loaded after the training arguments, is partitioned at load: :func:`copy_weights` gathers it."""
        try:
            copy_weights(teacher, student)
        except RuntimeError as err:
            raise ValueError(
                f"student_init=teacher: the teacher at {path} does not fit model=... ({err}). Point model at the "
                f"teacher's base model, or set {METHOD_ARGS}.student_init=model to start from model=... instead."
            ) from None

    def compute_loss(
        self,
        model: Any,
        inputs: Mapping[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        if "input_ids" not in inputs:
            raise ValueError(
                f"UNDO expects flat token batches, got keys {sorted(inputs)}: give it OU's ForgetRetainDataset "
                "(data=unlearn) or a plain token dataset, not a custom nested one."
            )
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        with method_args_errors():  # tokens=labels on a batch without labels
            positions = distill_mask(inputs.get("labels"), mask, ids, self.cfg.tokens)
        keep = from_first_distilled(positions)  # the LM head skips the prompt positions no row distils
        outputs = undo_logits(model, ids, mask, keep)
        with torch.no_grad():
            teacher_logits = undo_logits(self.teacher_model, ids, mask, keep).logits
        width = min(outputs.logits.shape[1], teacher_logits.shape[1])  # keep, or all for a model without the arg
        student, teacher = outputs.logits[:, -width:], teacher_logits[:, -width:]
        loss = undo_loss(student, teacher, positions[:, positions.shape[1] + 1 - width :], self.cfg)
        self.log_terms({"kl": loss.detach().item()})
        return (loss, outputs) if return_outputs else loss
