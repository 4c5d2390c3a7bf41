"""Relearning attack: fine-tune a copy of the unlearned model for a few steps on forget-related data, per learning
rate, and see how much of the forgotten knowledge comes back.

Follows UNDO's attack (``run_relearn_wmdp.py``): AdamW, constant learning rate, weight decay 0, gradient clipping 1.0,
a grid of learning rates with the worst case reported. Cost: ``len(learning_rates) x steps`` optimiser steps of one
batch each, and one model copy alive at a time.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Batch = Mapping[str, torch.Tensor]


@dataclass
class RelearnConfig:
    """``steps`` optimiser steps at each of ``learning_rates`` (UNDO's WMDP grid is 2.15e-5, 1e-5, 4.62e-6 over
    500 steps; the defaults here fit a CPU demo)."""

    steps: int = 10
    learning_rates: list[float] = field(default_factory=lambda: [1e-4, 1e-3])
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"relearn steps must be >= 1, got {self.steps}.")
        self.learning_rates = [float(lr) for lr in self.learning_rates]
        if not self.learning_rates or any(lr <= 0 for lr in self.learning_rates):
            raise ValueError(f"relearn learning_rates must be positive, got {self.learning_rates}.")


def _cycle(batches: Sequence[Batch]) -> Iterator[Batch]:
    if not batches:
        raise ValueError("The relearning attack has no data: give it at least one batch of the relearn split.")
    while True:
        yield from batches


def relearn_copy(model: torch.nn.Module, batches: Sequence[Batch], lr: float, cfg: RelearnConfig) -> torch.nn.Module:
    """A fine-tuned deep copy of ``model`` (``model`` is not modified): ``cfg.steps`` steps of the causal-LM loss."""
    torch.manual_seed(cfg.seed)
    attacked = copy.deepcopy(model)
    attacked.requires_grad_(True)
    attacked.train()
    device = next(attacked.parameters()).device
    opt = torch.optim.AdamW(attacked.parameters(), lr=lr, weight_decay=0.0)
    data = _cycle(batches)
    for _ in range(cfg.steps):
        batch = next(data)
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels") if k in batch}
        loss = attacked(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(attacked.parameters(), cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    attacked.eval()
    return attacked


def relearn_attack(
    model: torch.nn.Module,
    batches: Sequence[Batch],
    measure: Callable[[torch.nn.Module], float],
    cfg: RelearnConfig,
) -> dict[float, float]:
    """``measure`` of a relearned copy per learning rate; each copy is freed before the next is made."""
    scores = {}
    for lr in cfg.learning_rates:
        attacked = relearn_copy(model, batches, lr, cfg)
        scores[lr] = float(measure(attacked))
        del attacked
    return scores


def worst_case(scores: Mapping[Any, float], higher_is_worse: bool = True) -> float:
    """The attacker's best result (e.g. the highest forget ROUGE after relearning)."""
    values = [v for v in scores.values() if not math.isnan(v)]
    if not values:
        return float("nan")
    return max(values) if higher_is_worse else min(values)


def recovery(after: float, unlearned: float, original: float | None) -> float | None:
    """``(after - unlearned) / (original - unlearned)``: 0 = nothing came back, 1 = all of it; ``None`` without the
    original model's value or when unlearning changed nothing."""
    if original is None or math.isclose(original, unlearned):
        return None
    return (after - unlearned) / (original - unlearned)
