"""Frozen teachers for the plugin's trainers: checkpoints loaded and prepared exactly like OU's reference model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from duet_plugin.core.ensemble import TeacherEnsemble, TeacherSpec, check_same_vocab, load_checkpoint

logger = logging.getLogger(__name__)


def prepare_frozen(trainer: Any, model: Any) -> Any:
    """Move a frozen model to the trainer's device and wrap it as OU's ``GradDiff._prepare_ref_model`` does
    (DeepSpeed-aware: ZeRO-3 partitions it like the student), without copying it."""
    model = model.to(trainer.accelerator.device)
    model.eval()
    if trainer.is_deepspeed_enabled:
        return trainer._prepare_deepspeed(model)
    return trainer.accelerator.prepare_model(model, evaluation_mode=True)


def load_teachers(specs: Sequence[TeacherSpec], student: Any, key: str) -> list[Any]:
    """Load every checkpoint teacher (``spec.path``), in the student's dtype, and check the vocabularies match."""
    models = []
    for i, spec in enumerate(specs):
        where = f"{key}[{i}].path" if len(specs) > 1 else key
        teacher = load_checkpoint(spec.path, where, dtype=student.dtype)
        check_same_vocab(student, teacher, where)
        logger.info("Teacher %d: %s (weight %.3g)", i, spec.path, spec.weight)
        models.append(teacher)
    return models


def ensemble(models: Sequence[Any], specs: Sequence[TeacherSpec], views: Sequence[int] | None = None) -> Any:
    """The model itself for one teacher on the main prompt view; else a :class:`TeacherEnsemble` with the specs'
    weights."""
    views = list(views) if views is not None else [0] * len(models)
    if len(models) == 1 and views == [0]:
        return models[0]
    return TeacherEnsemble([(m, v, s.weight) for m, v, s in zip(models, views, specs, strict=True)])
