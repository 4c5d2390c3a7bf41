"""DUET's objective: the student imitates the prompt-steered teacher's top-K logits on the forget and retain queries.

The teacher's targets come from the shared engine (``duet_plugin.core.teacher_targets``); the OU trainer
(``duet_plugin.openunlearning.trainers.duet``) wires this objective into OU's ``UnlearnTrainer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from duet_plugin.core.losses import TopKTargets, topk_distillation_loss, validate_distance, validate_top_k
from duet_plugin.core.options import OptionError, option, positive_int
from duet_plugin.core.teacher_targets import (
    PrefixCaches,
    SteeredTeacherConfig,
    TargetConfig,
    TeacherTargetStore,
    stream_targets,
    student_logits_at,
)


@dataclass
class DUETConfig(SteeredTeacherConfig):
    """DUET's options (the shipped defaults: ``configs/trainer/DUET.yaml``).

    Defaults follow the paper where it says (first position, Huber on raw logits, forget and retain in one
    objective with equal weight); ``top_k=10`` and ``huber_delta=1.0`` are our choices (not published).
    """

    top_k: int = option(10, help="Teacher top-K vocabulary indices per aligned position (1..vocabulary size).")
    distance: str = option(
        "huber", help="huber (the paper: raw logits) | mse | kl (softmax over the K plus a tail bucket)."
    )
    huber_delta: float = option(1.0, help="The Huber loss's delta (distance: huber).")
    stream_weights: dict[str, float] = option(
        help="Per-stream weights of the summed objective; the paper uses one objective (forget 1, retain 1).",
        factory=lambda: {"forget": 1.0, "retain": 1.0},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int("top_k", self.top_k)  # the vocabulary check needs the model: validate_top_k
        validate_distance(self.distance)
        if self.huber_delta <= 0:
            raise OptionError("huber_delta", f"must be positive, got {self.huber_delta!r}.")
        weights = self.stream_weights or {"forget": 1.0, "retain": 1.0}
        self.stream_weights = {str(k): float(v) for k, v in dict(weights).items()}
        if any(w < 0 for w in self.stream_weights.values()):
            raise OptionError("stream_weights", f"must be non-negative, got {self.stream_weights}.")

    def target_config(self, vocab_size: int | None = None) -> TargetConfig:
        if vocab_size is not None:
            validate_top_k(self.top_k, vocab_size)
        return TargetConfig(self.top_k, self.continuation_length, self.teacher_batch_size)


def student_loss(model: Any, batch: Mapping[str, torch.Tensor], targets: TopKTargets, cfg: DUETConfig) -> torch.Tensor:
    """The student's distillation loss on one stream batch (query-only view, no prefix)."""
    at = student_logits_at(model, batch)
    return topk_distillation_loss(at, targets.to(at.device), cfg.distance, cfg.huber_delta)


def duet_loss(
    model: Any,
    streams: Mapping[str, Mapping[str, torch.Tensor]],
    cfg: DUETConfig,
    pad_id: int,
    eos_ids: Sequence[int],
    teacher: Any = None,
    store: TeacherTargetStore | None = None,
    prefix_caches: PrefixCaches | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DUET's objective on a batch of collated streams: the weighted sum of the per-stream student losses.

    Targets come from ``teacher`` (online) or from ``store`` (precomputed). Returns the loss and each stream's
    unweighted loss, for logging.
    """
    if (teacher is None) == (store is None):
        raise ValueError("Give exactly one of `teacher` (online) or `store` (precomputed targets).")
    target = cfg.target_config()
    loss, parts = None, {}
    for stream, batch in streams.items():
        weight = cfg.stream_weights.get(stream, 1.0)
        if weight == 0:
            continue
        targets, batch = stream_targets(
            stream, batch, target, pad_id, eos_ids, teacher=teacher, store=store, prefix_caches=prefix_caches
        )
        stream_loss = student_loss(model, batch, targets, cfg)
        parts[stream] = stream_loss.detach().item()
        loss = weight * stream_loss if loss is None else loss + weight * stream_loss
    if loss is None:
        raise ValueError(f"No stream with a non-zero weight in the batch (streams: {sorted(streams)}).")
    return loss, parts
