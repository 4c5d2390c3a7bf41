"""Relearning attack: fine-tune a copy of the unlearned model on forget-related data and see how much of the
forgotten knowledge comes back, measured along the way (step checkpoints), per learning rate and seed.

Follows UNDO's attack (``run_relearn_wmdp.py``): AdamW, constant learning rate, weight decay 0, gradient clipping 1.0,
a grid of learning rates with the worst case reported. Relearning on the very items that are then scored measures how
fast a model memorises them as much as whether the knowledge was still there (a model that never saw the facts also
reaches a high score after a few steps); :func:`partition_indices` splits the forget set into a relearned part and a
disjoint held-out part, by item or by concept (Deeb & Roger, arXiv 2410.08827), and only the held-out part is scored.

Cost: ``len(learning_rates) x len(seeds) x max(checkpoints)`` optimiser steps of one batch each (one run per
(lr, seed), measured at every checkpoint on the way, not restarted per checkpoint), ``measure`` once per positive
checkpoint per run, and one model copy (with its AdamW state) alive at a time. Framework-free: torch only.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Batch = Mapping[str, torch.Tensor]
Scores = Mapping[str, float | None]


@dataclass
class RelearnConfig:
    """``steps`` optimiser steps at each of ``learning_rates`` (UNDO's WMDP grid is 2.15e-5, 1e-5, 4.62e-6 over
    500 steps; the defaults here fit a CPU demo).

    ``eval_at_steps`` (e.g. ``[0, 5, 10, 25]``) measures one run at each of these steps; its largest entry is then
    the run's length and ``steps`` is not used. ``seeds`` repeats every run per seed (data order and torch seed);
    without it the one ``seed`` is used."""

    steps: int = 10
    learning_rates: list[float] = field(default_factory=lambda: [1e-4, 1e-3])
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_at_steps: list[int] | None = None
    seeds: list[int] | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"relearn steps must be >= 1, got {self.steps}.")
        self.learning_rates = [float(lr) for lr in self.learning_rates]
        if not self.learning_rates or any(lr <= 0 for lr in self.learning_rates):
            raise ValueError(f"relearn learning_rates must be positive, got {self.learning_rates}.")
        if self.eval_at_steps is not None:
            steps = [int(s) for s in self.eval_at_steps]
            if any(s < 0 for s in steps) or not any(s > 0 for s in steps):
                raise ValueError(f"relearn eval_at_steps must be >= 0 with one > 0, got {self.eval_at_steps}.")
            self.eval_at_steps = sorted(set(steps))
        if self.seeds is not None:
            seeds = [int(s) for s in self.seeds]
            if not seeds or len(set(seeds)) != len(seeds):
                raise ValueError(f"relearn seeds must be a non-empty list without duplicates, got {self.seeds}.")
            self.seeds = seeds

    @property
    def checkpoints(self) -> list[int]:
        """The steps at which a run is measured, ascending (0: the copy before any step)."""
        return list(self.eval_at_steps) if self.eval_at_steps is not None else [self.steps]

    @property
    def total_steps(self) -> int:
        return self.checkpoints[-1]

    @property
    def run_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]


def _cycle(batches: Sequence[Batch]) -> Iterator[Batch]:
    while True:
        yield from batches


def relearn_checkpoints(
    model: torch.nn.Module, batches: Sequence[Batch], lr: float, cfg: RelearnConfig, seed: int | None = None
) -> Iterator[tuple[int, torch.nn.Module]]:
    """``(step, copy)`` at each of ``cfg.checkpoints``: one deep copy of ``model`` (``model`` is not modified)
    fine-tuned with the causal-LM loss, in eval mode at each yield and trained on after it. Measure the copy before
    asking for the next checkpoint; it is the same object throughout."""
    seed = cfg.seed if seed is None else seed
    if not batches:
        raise ValueError("The relearning attack has no data: give it at least one batch of the relearn split.")
    data = _cycle(batches)
    torch.manual_seed(seed)
    attacked = copy.deepcopy(model)
    attacked.requires_grad_(True)
    device = next(attacked.parameters()).device
    opt = torch.optim.AdamW(attacked.parameters(), lr=lr, weight_decay=0.0)
    done = 0
    for checkpoint in cfg.checkpoints:
        attacked.train()
        for _ in range(checkpoint - done):
            batch = next(data)
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels") if k in batch}
            loss = attacked(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(attacked.parameters(), cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        done = checkpoint
        attacked.eval()
        yield checkpoint, attacked


def relearn_copy(model: torch.nn.Module, batches: Sequence[Batch], lr: float, cfg: RelearnConfig) -> torch.nn.Module:
    """A fine-tuned deep copy of ``model`` (``model`` is not modified): ``cfg.total_steps`` steps (``cfg.steps``
    without ``eval_at_steps``) of the causal-LM loss, seeded with ``cfg.seed``."""
    only_last = RelearnConfig(cfg.total_steps, [lr], cfg.max_grad_norm, cfg.seed)
    (_, attacked), *_ = relearn_checkpoints(model, batches, lr, only_last)
    return attacked


def relearn_curves(
    model: torch.nn.Module,
    batches: Sequence[Batch] | Callable[[int], Sequence[Batch]],
    measure: Callable[[torch.nn.Module], Scores | float],
    cfg: RelearnConfig,
    unattacked: Scores | float | None = None,
) -> dict[float, dict[int, list[dict[str, float | None]]]]:
    """``curves[lr][seed][i]``: ``measure`` of the run's copy at ``cfg.checkpoints[i]``, one run per (lr, seed).

    ``batches`` is the relearn data, or a function of the seed giving it (seeded data order). ``measure`` returns
    a score or a mapping of scores (a float becomes ``{"value": x}``). At step 0 the untrained copy is measured,
    unless ``unattacked`` (the model's own scores) is given: then it stands for step 0 and is not recomputed."""
    curves: dict[float, dict[int, list[dict[str, float | None]]]] = {}
    for lr in cfg.learning_rates:
        curves[lr] = {}
        for seed in cfg.run_seeds:
            data = batches(seed) if callable(batches) else batches
            points = []
            for step, attacked in relearn_checkpoints(model, data, lr, cfg, seed):
                if step == 0 and unattacked is not None:
                    points.append(_scores(unattacked))
                else:
                    points.append(_scores(measure(attacked)))
            del attacked
            curves[lr][seed] = points
    return curves


def _scores(value: Scores | float) -> dict[str, float | None]:
    if isinstance(value, Mapping):
        return {k: None if v is None else float(v) for k, v in value.items()}
    return {"value": float(value)}


def relearn_attack(
    model: torch.nn.Module,
    batches: Sequence[Batch],
    measure: Callable[[torch.nn.Module], float],
    cfg: RelearnConfig,
) -> dict[float, float]:
    """``measure`` of a relearned copy per learning rate after ``cfg.total_steps`` steps (seed ``cfg.seed``);
    each copy is freed before the next is made."""
    final = RelearnConfig(cfg.total_steps, cfg.learning_rates, cfg.max_grad_norm, cfg.seed)
    curves = relearn_curves(model, batches, measure, final)
    return {lr: curves[lr][cfg.seed][-1]["value"] for lr in cfg.learning_rates}


def seed_stats(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (0 for one value), min and max over seeds; NaN and None are left out."""
    xs = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(xs), "max": max(xs), "n": len(xs)}


def curve_summary(
    curves: Mapping[float, Mapping[int, Sequence[Mapping[str, float | None]]]], checkpoints: Sequence[int], key: str
) -> dict[float, dict[str, Any]]:
    """Per learning rate, the curve of ``key`` over ``checkpoints``: ``mean``/``std``/``min``/``max`` over seeds
    at each step, and ``by_seed`` (each seed's own curve)."""
    out = {}
    for lr, runs in curves.items():
        stats = [seed_stats([run[i].get(key) for run in runs.values()]) for i in range(len(checkpoints))]
        out[lr] = {
            "steps": list(checkpoints),
            **{s: [point[s] for point in stats] for s in ("mean", "std", "min", "max")},
            "by_seed": {seed: [p.get(key) for p in run] for seed, run in runs.items()},
        }
    return out


def worst_point(
    summary: Mapping[float, Mapping[str, Any]], higher_is_worse: bool = True, include_step0: bool = False
) -> dict[str, Any] | None:
    """The attacker's best (lr, step) of a :func:`curve_summary` by the mean over seeds (step 0 is the unattacked
    model and is left out unless ``include_step0``); ``None`` when no point has a value."""
    points = [
        (lr, step, i)
        for lr, curve in summary.items()
        for i, step in enumerate(curve["steps"])
        if (include_step0 or step > 0) and curve["mean"][i] is not None
    ]
    if not points:
        return None
    pick = max if higher_is_worse else min
    lr, step, i = pick(points, key=lambda p: summary[p[0]]["mean"][p[2]])
    curve = summary[lr]
    return {"lr": lr, "step": step, **{s: curve[s][i] for s in ("mean", "std", "min", "max")}}


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


def partition_indices(
    n: int, heldout_fraction: float = 0.5, seed: int = 0, groups: Sequence[Hashable] | None = None
) -> tuple[list[int], list[int]]:
    """``(relearn, heldout)``: a seeded split of ``range(n)`` into two disjoint, non-empty, sorted index lists that
    together cover it. With ``groups`` (one concept label per index, e.g. the author) whole concepts go to one side
    (``heldout_fraction`` of the concepts, rounded, are held out); without, single items are split. The same
    ``n``, ``groups`` and ``seed`` give the same split."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be strictly between 0 and 1, got {heldout_fraction}.")
    labels: Sequence[Hashable] = list(range(n)) if groups is None else list(groups)
    if len(labels) != n:
        raise ValueError(f"partition: {len(labels)} concept labels for {n} items.")
    units = list(dict.fromkeys(labels))  # first-appearance order: independent of hashing
    if len(units) < 2:
        what = "concepts" if groups is not None else "items"
        raise ValueError(f"partition: held-out relearning needs at least 2 {what}, got {len(units)}.")
    order = list(range(len(units)))
    random.Random(seed).shuffle(order)
    n_held = min(max(round(len(units) * heldout_fraction), 1), len(units) - 1)
    held = {units[i] for i in order[:n_held]}
    relearn = [i for i, g in enumerate(labels) if g not in held]
    heldout = [i for i, g in enumerate(labels) if g in held]
    return relearn, heldout
