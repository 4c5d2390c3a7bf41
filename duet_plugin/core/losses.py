"""Distillation losses as plain functions (no trainer, no framework).

DUET (Zhong et al., ICLR 2026, Eq. 3) matches the student's raw logits to the prompt-steered teacher's at the
teacher's top-K vocabulary indices, with a Huber loss, summed over the K indices. ``mse`` and ``kl`` (softmax over
the K logits plus one bucket for the rest of the vocabulary) are the alternatives.

Bidirectional distillation adds the *push* direction: the same distances at the **student's** top-K indices, towards
the teacher's values there (suppressing what the student ranks high and the steered teacher does not), and the BiLD
distance (Li et al., COLING 2025): KL between the softmaxes of the pairwise logit differences over the K indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from duet_plugin.core.options import OptionError, one_of, positive_int

DISTANCES = ("huber", "mse", "kl")
#: Distances of bidirectional distillation: DUET's plus BiLD's pairwise logit differences.
BIDIRECTIONAL_DISTANCES = (*DISTANCES, "bild")


@dataclass
class TopKTargets:
    """Teacher targets at N aligned positions: top-K vocabulary ids, their raw logits, and the full-vocabulary
    log-normalizer (needed by the ``kl`` distance's tail bucket)."""

    indices: torch.Tensor  # [N, K] int64
    values: torch.Tensor  # [N, K] float
    logsumexp: torch.Tensor  # [N] float

    def __len__(self) -> int:
        return self.indices.shape[0]

    def to(self, device: torch.device | str) -> TopKTargets:
        return TopKTargets(self.indices.to(device), self.values.to(device), self.logsumexp.to(device))


def validate_top_k(top_k: int, vocab_size: int, option: str = "top_k") -> None:
    """Raise an :class:`OptionError` naming ``option`` and the fix unless ``0 < top_k <= vocab_size``."""
    positive_int(option, top_k)
    if top_k > vocab_size:
        raise OptionError(
            option,
            f"={top_k} is larger than the model's vocabulary ({vocab_size}); use a value in 1..{vocab_size}.",
        )


def validate_distance(distance: str, allowed: tuple[str, ...] = DISTANCES) -> None:
    one_of("distance", distance, allowed)


def select_topk(teacher_logits: torch.Tensor, top_k: int) -> TopKTargets:
    """Top-K targets from teacher logits ``[N, V]`` (computed in float32)."""
    validate_top_k(top_k, teacher_logits.shape[-1])
    logits = teacher_logits.detach().float()
    values, indices = logits.topk(top_k, dim=-1)
    return TopKTargets(indices=indices, values=values, logsumexp=logits.logsumexp(dim=-1))


def topk_tail_kl(student_logits: torch.Tensor, targets: TopKTargets) -> torch.Tensor:
    """KL(teacher || student) over K+1 outcomes: the K teacher-top tokens and one bucket for all others."""
    s = student_logits.float()
    log_q_all = s.logsumexp(dim=-1, keepdim=True)
    log_q = s.gather(-1, targets.indices) - log_q_all
    log_p = targets.values.float() - targets.logsumexp.float().unsqueeze(-1)
    p = log_p.exp()
    kl = (p * (log_p - log_q)).sum(dim=-1)
    if targets.indices.shape[-1] < s.shape[-1]:
        p_tail = (1.0 - p.sum(dim=-1)).clamp(min=0.0)
        masked = s.scatter(-1, targets.indices, float("-inf"))
        log_q_tail = masked.logsumexp(dim=-1) - log_q_all.squeeze(-1)
        kl = kl + torch.xlogy(p_tail, p_tail) - p_tail * log_q_tail
    return kl


def topk_distillation_loss(
    student_logits: torch.Tensor,
    targets: TopKTargets,
    distance: str = "huber",
    huber_delta: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """DUET's top-K logit distillation loss.

    Args:
        student_logits: ``[N, V]`` student logits at the N aligned positions.
        targets: the teacher's top-K targets at the same positions.
        distance: ``huber`` (raw logits, the paper), ``mse`` (raw logits) or ``kl`` (K + tail bucket).
        huber_delta: the Huber threshold (``huber`` only).
        reduction: ``mean`` over positions (each position sums over its K indices) or ``none`` (``[N]``).
    """
    validate_distance(distance)
    if student_logits.shape[0] != len(targets):
        raise ValueError(f"{student_logits.shape[0]} student positions but {len(targets)} teacher targets.")
    if distance == "kl":
        per_position = topk_tail_kl(student_logits, targets)
    else:
        s = student_logits.float().gather(-1, targets.indices)
        t = targets.values.float()
        if distance == "huber":
            per_position = F.huber_loss(s, t, reduction="none", delta=huber_delta).sum(dim=-1)
        else:
            per_position = (s - t).pow(2).sum(dim=-1)
    if reduction == "none":
        return per_position
    if reduction != "mean":
        raise ValueError(f"Unknown reduction {reduction!r}; use 'mean' or 'none'.")
    if per_position.numel() == 0:
        return student_logits.sum() * 0.0
    return per_position.mean()


def forward_kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Full-vocabulary KL(teacher || student) averaged over the positions where ``mask`` is true.

    UNDO's distillation loss (``forward_kl_loss_fn`` in its official code, temperature 1): logits ``[B, L, V]``,
    ``mask [B, L]`` marks the positions to distil (e.g. those with a label).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ."
        )
    mask = mask.bool()
    s = student_logits[mask].float() / temperature
    t = teacher_logits[mask].detach().float() / temperature
    if s.shape[0] == 0:
        return student_logits.sum() * 0.0
    log_p = t.log_softmax(dim=-1)
    return (log_p.exp() * (log_p - s.log_softmax(dim=-1))).sum(dim=-1).mean()


def teacher_values_at(targets: TopKTargets, indices: torch.Tensor) -> torch.Tensor:
    """The teacher's logits at arbitrary vocabulary ``indices [N, k]`` from stored top-K' targets.

    Exact where the index is among the stored K' (all of them when K' is the vocabulary size); elsewhere the
    smallest stored value, an upper bound on the true logit (so the push term then pushes less than it would
    with the full teacher logits). The vocabulary size is taken from ``indices``' largest possible id.
    """
    fill = targets.values.float().min(dim=-1, keepdim=True).values
    width = int(max(int(indices.max()), int(targets.indices.max()))) + 1
    dense = fill.expand(-1, width).clone().scatter_(-1, targets.indices, targets.values.float())
    return dense.gather(-1, indices)


def pairwise_differences(values: torch.Tensor) -> torch.Tensor:
    """``[N, k] -> [N, k(k-1)/2]``: ``v_i - v_j`` for every ``i < j`` (BiLD's logit differences)."""
    i, j = torch.triu_indices(values.shape[-1], values.shape[-1], offset=1, device=values.device)
    return values[..., i] - values[..., j]


def bild_divergence(
    student_values: torch.Tensor, teacher_values: torch.Tensor, temperature: float = 3.0
) -> torch.Tensor:
    """Per-position ``KL(softmax(d(t/T)) || softmax(d(s/T)))`` over the pairwise differences ``d`` (BiLD, ``[N]``)."""
    if temperature <= 0:
        raise ValueError(f"BiLD temperature must be positive, got {temperature}.")
    if student_values.shape[-1] < 2:
        raise ValueError("BiLD needs at least 2 indices per position (top_k >= 2).")
    log_q = pairwise_differences(student_values.float() / temperature).log_softmax(dim=-1)
    log_p = pairwise_differences(teacher_values.detach().float() / temperature).log_softmax(dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def _reduce(per_position: torch.Tensor, student_logits: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_position
    if reduction != "mean":
        raise ValueError(f"Unknown reduction {reduction!r}; use 'mean' or 'none'.")
    return per_position.mean() if per_position.numel() else student_logits.sum() * 0.0


def directed_loss(
    student_logits: torch.Tensor,
    targets: TopKTargets,
    direction: str,
    top_k: int,
    distance: str = "huber",
    huber_delta: float = 1.0,
    bild_temperature: float = 3.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """One direction of bidirectional top-K distillation at N aligned positions.

    ``pull``: the teacher's top ``top_k`` indices, student -> teacher (DUET's term). ``push``: the student's top
    ``top_k`` indices (chosen without gradient), the student's logits there -> the teacher's
    (:func:`teacher_values_at`). ``targets`` holds the teacher's top-K' (K' >= top_k) ids, values and log-normalizer.
    """
    validate_distance(distance, BIDIRECTIONAL_DISTANCES)
    if direction not in ("pull", "push"):
        raise ValueError(f"direction must be 'pull' or 'push', got {direction!r}.")
    if student_logits.shape[0] != len(targets):
        raise ValueError(f"{student_logits.shape[0]} student positions but {len(targets)} teacher targets.")
    validate_top_k(top_k, student_logits.shape[-1])
    if direction == "pull":
        if top_k > targets.indices.shape[-1]:
            raise ValueError(f"pull top_k={top_k} exceeds the {targets.indices.shape[-1]} stored teacher indices.")
        led = TopKTargets(targets.indices[:, :top_k], targets.values[:, :top_k], targets.logsumexp)
    else:
        idx = student_logits.detach().topk(top_k, dim=-1).indices
        led = TopKTargets(idx, teacher_values_at(targets.to(idx.device), idx), targets.logsumexp)
    if distance in DISTANCES:
        return topk_distillation_loss(student_logits, led, distance, huber_delta, reduction)
    s = student_logits.float().gather(-1, led.indices)
    return _reduce(bild_divergence(s, led.values.to(s.device), bild_temperature), student_logits, reduction)
