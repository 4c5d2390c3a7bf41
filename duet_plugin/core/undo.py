"""UNDO's framework-free pieces (Lee et al., 2025): its config, the distillation loss, the retain-recovery gap.

Unlearn (any method) -> noise a copy (:func:`duet_plugin.core.noise.shrink_and_perturb`) -> distil the unlearned
teacher's outputs into it with forward KL over generic/retain text, until the student's retain loss is back within a
fraction of the teacher's. The OU trainer (``duet_plugin.openunlearning.trainers.undo``) wires these in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from duet_plugin.core.losses import forward_kl_loss, select_topk, topk_distillation_loss, validate_top_k
from duet_plugin.core.noise import DEFAULT_EXCLUDE

STUDENT_INITS = ("teacher", "model")
POSITIONS = ("labels", "all")


@dataclass
class UNDOConfig:
    """UNDO hyper-parameters (``trainer.method_args`` in ``configs/trainer/UNDO.yaml``).

    ``alpha``/``beta`` default to the paper's recommendation for its synthetic tasks (0.6, 0.1); its WMDP run
    uses ``alpha=0.25, beta=0``. ``recovery=0.95`` stops once the student's retain loss is within 5% of the
    teacher's (the official code's synthetic-task criterion: relative gap < 0.05); ``None`` trains to max_steps.
    """

    alpha: float = 0.6
    beta: float = 0.1
    noise_include: list[str] = field(default_factory=lambda: [r".*"])
    noise_exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    noise_seed: int = 0
    student_init: str = "teacher"
    top_k: int | None = None
    temperature: float = 1.0
    positions: str = "labels"
    streams: list[str] = field(default_factory=lambda: ["retain"])
    recovery: float | None = 0.95
    recovery_eval_steps: int = 10
    recovery_batches: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"trainer.method_args.alpha must be in [0, 1] (0 = no noise), got {self.alpha}.")
        if self.beta < 0:
            raise ValueError(f"trainer.method_args.beta must be >= 0, got {self.beta}.")
        if self.student_init not in STUDENT_INITS:
            raise ValueError(
                f"Unknown student_init {self.student_init!r}; trainer.method_args.student_init must be one of "
                f"{STUDENT_INITS} (teacher: a noised copy of the teacher; model: a noised copy of model=...)."
            )
        if self.top_k is not None:
            validate_top_k(self.top_k, vocab_size=self.top_k)
        if self.temperature <= 0:
            raise ValueError(f"trainer.method_args.temperature must be positive, got {self.temperature}.")
        if self.positions not in POSITIONS:
            raise ValueError(f"Unknown positions {self.positions!r}; trainer.method_args.positions: {POSITIONS}.")
        self.streams = [self.streams] if isinstance(self.streams, str) else list(self.streams)
        if not self.streams or any(s not in ("forget", "retain") for s in self.streams):
            raise ValueError(
                f"trainer.method_args.streams={self.streams}: choose from forget/retain (UNDO distils on retain, "
                "i.e. generic, data; the paper never distils on the forget set)."
            )
        if self.recovery is not None and not 0.0 < self.recovery <= 1.0:
            raise ValueError(f"trainer.method_args.recovery must be in (0, 1] or null, got {self.recovery}.")
        if self.recovery_eval_steps < 1 or self.recovery_batches < 1:
            raise ValueError("trainer.method_args.recovery_eval_steps and recovery_batches must be >= 1.")
        self.noise_include = [self.noise_include] if isinstance(self.noise_include, str) else list(self.noise_include)
        self.noise_exclude = [self.noise_exclude] if isinstance(self.noise_exclude, str) else list(self.noise_exclude)


def distill_mask(
    labels: torch.Tensor | None, attention_mask: torch.Tensor | None, input_ids: torch.Tensor, positions: str
) -> torch.Tensor:
    """Which of the ``L - 1`` next-token positions to distil: those predicting a label (``labels``), or every
    attended token (``all``). Position ``j`` predicts token ``j + 1``."""
    if positions == "labels":
        if labels is None:
            raise ValueError("positions=labels needs labels in the batch; use positions=all for unlabelled text.")
        return labels[:, 1:] != -100
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    return mask[:, 1:].bool() & mask[:, :-1].bool()


def undo_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, cfg: UNDOConfig
) -> torch.Tensor:
    """KL(teacher || student) at the next-token positions in ``mask`` (``[B, L-1]``), over the full vocabulary
    (the paper) or over the teacher's top-K plus a tail bucket (``top_k``)."""
    s, t = student_logits[:, :-1], teacher_logits[:, :-1]
    if cfg.top_k is None:
        return forward_kl_loss(s, t, mask, cfg.temperature)
    mask = mask.bool()
    targets = select_topk(t[mask].float() / cfg.temperature, cfg.top_k)
    if len(targets) == 0:
        return student_logits.sum() * 0.0
    return topk_distillation_loss(s[mask].float() / cfg.temperature, targets, distance="kl")


def label_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL over the label tokens and their count (to average over several batches)."""
    shifted = labels[:, 1:]
    keep = shifted != -100
    if not bool(keep.any()):
        return 0.0, 0
    nll = F.cross_entropy(logits[:, :-1][keep].float(), shifted[keep], reduction="sum")
    return float(nll), int(keep.sum())


def recovery_gap(student_nll: float, teacher_nll: float) -> float:
    """Relative retain-loss gap ``(student - teacher) / teacher``; 0 means the teacher's retain performance."""
    if teacher_nll <= 0:
        return 0.0 if student_nll <= teacher_nll else float("inf")
    return (student_nll - teacher_nll) / teacher_nll


def recovered(gap: float, recovery: float) -> bool:
    """True when the gap is within ``1 - recovery`` (95% recovery = a retain loss at most 5% above the teacher's)."""
    return gap <= 1.0 - recovery + 1e-12
