"""UNDO as an OpenUnlearning trainer: noise a copy of an unlearned model, then distil the unlearned teacher back in.

Thin adapter over ``duet_plugin.core`` (noise, loss, recovery gap): it checks the teacher checkpoint(s) before any
compute, starts the student from the teacher's weights (or from ``model=``), applies shrink-and-perturb, distils with
forward KL on the retain (generic) stream of OU's unlearning data, and stops through
:class:`RetainRecoveryCallback` once the student's retain loss is back within ``1 - recovery`` of the teacher's.
With ``lora`` (``duet_plugin.core.lora``) the noised student is wrapped with peft adapters after the noise: only the
adapters train over the frozen noised base (a rank-r update cannot undo full-rank noise: :data:`LORA_WARNING`), and
the output_dir receives the merged plain model plus ``adapter/``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader
from trainer.unlearn.base import UnlearnTrainer
from transformers import TrainerCallback

from duet_plugin.core.collate import to_device
from duet_plugin.core.distributed import is_zero3_partitioned
from duet_plugin.core.ensemble import check_checkpoint, parse_teachers
from duet_plugin.core.lora import (
    LORA_KEY,
    ZERO3_REFUSAL,
    LoRAConfig,
    target_module_names,
    wrap,
    zero3_requested,
)
from duet_plugin.core.noise import shrink_and_perturb
from duet_plugin.core.undo import UNDOConfig, distill_mask, label_nll, recovered, recovery_gap, undo_loss
from duet_plugin.openunlearning.trainers.duet import reject_unknown_options
from duet_plugin.openunlearning.trainers.lora_saving import LoRASaving
from duet_plugin.openunlearning.trainers.teachers import ensemble, load_teachers, prepare_frozen

logger = logging.getLogger(__name__)

TEACHER_KEY = "trainer.method_args.teacher"
METHOD_ARGS = ("teacher", "lora", *UNDOConfig.__dataclass_fields__)
#: Logged at start when ``lora`` is set: what a LoRA student recovers (scripts/bench_undo_lora.py).
LORA_WARNING = (
    f"UNDO with {LORA_KEY}: only the adapters train, over the frozen noised base, and a rank-r update cannot undo "
    "full-rank noise: expect the retain gap to stall above the recovery target. Measured (scripts/bench_undo_lora.py: "
    "demo-sized Llama, alpha 0.25, beta 0.1, 200 steps, gap 8.5 after the noise): LoRA r=8 all-linear 1.08, r=64 "
    "all-linear 1.18, r=8 q,v 1.98 (r=8 all-linear after 600 steps: 0.85); full fine-tuning -0.01. To save memory "
    "without LoRA: trainer.args.gradient_checkpointing=true."
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
        t, cfg = self.trainer, self.trainer.undo
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
        cfg = self.trainer.undo
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


class UNDO(LoRASaving, UnlearnTrainer):
    """``trainer=UNDO``: see ``configs/trainer/UNDO.yaml`` for every option."""

    def __init__(self, teacher: Any = None, lora: Any = None, *args: Any, **kwargs: Any) -> None:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in UNDOConfig.__dataclass_fields__}
        reject_unknown_options(kwargs, "UNDO", METHOD_ARGS, "undo")
        self.lora = LoRAConfig.from_config(lora)
        self.undo = UNDOConfig(**options)
        if self.lora is not None:  # before the teachers are loaded or anything is noised
            if kwargs.get("model") is None:
                raise ValueError(f"{LORA_KEY} needs the model (OU passes it to every trainer).")
            target_module_names(kwargs["model"], self.lora)
            if zero3_requested(kwargs.get("args")):
                raise NotImplementedError(ZERO3_REFUSAL)
        specs = parse_teachers(teacher, TEACHER_KEY)
        if not specs:
            raise ValueError(
                f"UNDO needs the unlearned model to distil from: set {TEACHER_KEY}=<folder> (the output_dir of a DUET, "
                "BiDistill or OU baseline run, e.g. saves/unlearn/<task_name>), or a list of {path, weight} teachers."
            )
        for i, spec in enumerate(specs):
            where = f"{TEACHER_KEY}[{i}]" if len(specs) > 1 else TEACHER_KEY
            if spec.path is None:
                raise ValueError(f"{where} has no path; every UNDO teacher is a saved checkpoint.")
            if spec.prefix is not None:
                raise ValueError(
                    f"{where}.prefix: UNDO distils on plain retain text, where a prompt prefix has no place; "
                    "prefixed teachers belong to DUET (trainer.method_args.teachers)."
                )
            check_checkpoint(spec.path, where)

        model = kwargs["model"]
        train_dataset = kwargs.get("train_dataset")
        if train_dataset is not None:
            kwargs["train_dataset"] = distillation_dataset(train_dataset, self.undo.streams)
        teachers = load_teachers(specs, model, TEACHER_KEY)
        if self.undo.student_init == "teacher":
            self._copy_weights(teachers[0], model, specs[0].path)
        changed = shrink_and_perturb(
            model,
            self.undo.alpha,
            self.undo.beta,
            include=self.undo.noise_include,
            exclude=self.undo.noise_exclude,
            seed=self.undo.noise_seed,
        )
        logger.info(
            "UNDO: student = %s, shrink-and-perturb alpha=%g beta=%g on %d parameter tensors",
            specs[0].path if self.undo.student_init == "teacher" else "model=...",
            self.undo.alpha,
            self.undo.beta,
            len(changed),
        )

        if self.lora is not None:  # after the noise: the noised base stays frozen, only the adapters train
            kwargs["model"] = wrap(model, self.lora)
            logger.warning(LORA_WARNING)

        super().__init__(*args, **kwargs)
        if self.lora is not None and self.is_deepspeed_enabled:
            if self.accelerator.state.deepspeed_plugin.zero_stage == 3:
                raise NotImplementedError(ZERO3_REFUSAL)
        self.model_accepts_loss_kwargs = False
        self.teacher_model = ensemble([prepare_frozen(self, t) for t in teachers], specs)
        self.pending_logs: dict[str, float] = {}
        self._loss_logs: dict[str, list[float]] = defaultdict(list)
        self.recovery_callback = RetainRecoveryCallback(self)
        self.add_callback(self.recovery_callback)

    @staticmethod
    @torch.no_grad()
    def _copy_weights(teacher: Any, student: Any, path: str) -> None:
        """The teacher's weights into the student. Under DeepSpeed ZeRO-3 with ``zero3_init_flag`` the teacher,
        loaded after the training arguments, is partitioned at load: its shards are gathered for the copy."""
        gathered = contextlib.nullcontext()
        if is_zero3_partitioned(teacher):
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(teacher.parameters()))
        try:
            with gathered:
                student.load_state_dict(teacher.state_dict())
        except RuntimeError as err:
            raise ValueError(
                f"student_init=teacher: the teacher at {path} does not fit model=... ({err}). Point model at the "
                "teacher's base model, or set trainer.method_args.student_init=model to start from model=... instead."
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
        mask = distill_mask(
            inputs.get("labels"), inputs.get("attention_mask"), inputs["input_ids"], self.undo.positions
        )
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        with torch.no_grad():
            teacher_logits = self.teacher_model(
                input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
            ).logits
        loss = undo_loss(outputs.logits, teacher_logits, mask, self.undo)
        self._loss_logs["kl"].append(loss.detach().item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for key, values in self._loss_logs.items():
            if values:
                logs[f"undo/{key}"] = round(sum(values) / len(values), 6)
        self._loss_logs.clear()
        logs.update(self.pending_logs)
        self.pending_logs.clear()
        super().log(logs, *args, **kwargs)
