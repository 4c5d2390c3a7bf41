"""Embedding-space (soft-prompt) attack with its control: optimise ``k`` free vectors placed in front of the
question's token embeddings so that the model puts high teacher-forced probability on the answers of a *fitting*
part of the forget set, then score a disjoint *held-out* part with and without those vectors (Schwinn et al., 2024).

A soft prompt is a strong attacker: it can raise the probability of facts the model never saw (Chen et al., arXiv
2502.15836), because ``k`` free vectors can encode a general "answer in this style" bias. A gain on the held-out forget
facts therefore counts only against the same attack run on never-trained facts (the control, e.g. TOFU's holdout
split): :func:`soft_prompt_attack` fits a prompt on part of a set and scores the rest, and the caller runs it on both
sets and reports the *margin*, forget gain minus control gain.

Placement: the ``k`` vectors are inserted into the input embeddings at position ``insert_at`` of every row (0: before
everything, i.e. prepended; 1: after the first token, e.g. Llama's BOS), with attention-mask ones and ignored labels
(-100) at their positions; the rest of the row (chat template, question, answer, right padding) is unchanged.
Rows must be right-padded (OU's default collator) when ``insert_at`` > 0.

The model is never modified: its parameters are frozen (``requires_grad`` False) for the optimisation and their
flags and train/eval mode restored afterwards; only the prompt tensor receives gradients (Adam).

Cost per fitted prompt: ``steps`` forward+backward passes of one batch each (through the whole model, ``k`` extra
positions; activations kept for the backward, no parameter gradients and no optimiser state for the model) and two
teacher-forced forwards over the scored part (with and without the prompt). Framework-free: torch only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

IGNORE_INDEX = -100
INITS = ("random", "phrase")

Batch = Mapping[str, torch.Tensor]


class EmbeddingAttackError(ValueError):
    """Bad configuration or data for the soft-prompt attack."""


@dataclass
class SoftPromptConfig:
    """``k`` vectors, ``steps`` Adam steps at ``lr`` (gradient norm clipped to ``max_grad_norm`` when set), one
    batch of the fitting part per step (cycled). ``init``: ``random`` (Gaussian at the embedding matrix's per-
    dimension mean and standard deviation) or ``phrase`` (the embeddings of ``init_ids``, repeated or cut to ``k``).
    ``seed`` seeds the random init."""

    k: int = 8
    steps: int = 50
    lr: float = 1e-2
    init: str = "random"
    seed: int = 0
    insert_at: int = 0
    max_grad_norm: float | None = 1.0
    init_ids: list[int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.k < 1 or self.steps < 1:
            raise EmbeddingAttackError(f"soft prompt: k and steps must be >= 1, got k={self.k}, steps={self.steps}.")
        if not self.lr > 0:
            raise EmbeddingAttackError(f"soft prompt: lr must be positive, got {self.lr}.")
        if self.init not in INITS:
            raise EmbeddingAttackError(f"soft prompt: init={self.init!r}; choose one of {INITS}.")
        if self.init == "phrase" and not self.init_ids:
            raise EmbeddingAttackError("soft prompt: init=phrase needs the phrase's token ids (init_ids).")
        if self.insert_at < 0:
            raise EmbeddingAttackError(f"soft prompt: insert_at must be >= 0, got {self.insert_at}.")


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode with every parameter's ``requires_grad`` False; both restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _embedding(model: nn.Module) -> nn.Embedding:
    emb = model.get_input_embeddings()
    if emb is None or not hasattr(emb, "weight"):
        raise EmbeddingAttackError(f"soft prompt: {type(model).__name__} has no input embedding matrix.")
    return emb


def init_prompt(model: nn.Module, cfg: SoftPromptConfig) -> torch.Tensor:
    """The initial ``(k, hidden)`` prompt, float32, on the model's device (a fresh leaf tensor)."""
    weight = _embedding(model).weight.detach()
    if cfg.init == "phrase":
        ids = torch.tensor(list(cfg.init_ids or []), device=weight.device)
        ids = ids.repeat(math.ceil(cfg.k / len(ids)))[: cfg.k]
        prompt = weight[ids].float().clone()
    else:
        w = weight.float()
        g = torch.Generator(device="cpu").manual_seed(cfg.seed)
        noise = torch.randn(cfg.k, w.shape[1], generator=g).to(w.device)
        prompt = w.mean(0) + noise * w.std(0)
    return prompt.detach().requires_grad_(True)


def insert_prompt(
    model: nn.Module, batch: Batch, prompt: torch.Tensor | None, insert_at: int = 0
) -> tuple[dict[str, Any], torch.Tensor]:
    """Model inputs (``inputs_embeds``, ``attention_mask``) with ``prompt`` inserted at ``insert_at`` of each row,
    and the labels aligned to them; with ``prompt`` None, the plain ``input_ids`` inputs and labels."""
    emb = _embedding(model)
    device = emb.weight.device
    ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask.to(device)
    if prompt is None:
        return {"input_ids": ids, "attention_mask": mask, "use_cache": False}, labels
    if insert_at > ids.shape[1]:
        raise EmbeddingAttackError(f"soft prompt: insert_at={insert_at} is past the rows' length {ids.shape[1]}.")
    n, k = ids.shape[0], prompt.shape[0]
    with torch.no_grad():
        tokens = emb(ids)
    soft = prompt.to(tokens.dtype)[None].expand(n, -1, -1)
    a = insert_at
    embeds = torch.cat([tokens[:, :a], soft, tokens[:, a:]], 1)
    mask = torch.cat([mask[:, :a], torch.ones(n, k, dtype=mask.dtype, device=device), mask[:, a:]], 1)
    ignore = torch.full((n, k), IGNORE_INDEX, dtype=labels.dtype, device=device)
    labels = torch.cat([labels[:, :a], ignore, labels[:, a:]], 1)
    return {"inputs_embeds": embeds, "attention_mask": mask, "use_cache": False}, labels


def answer_log_probs(model: nn.Module, inputs: Mapping[str, Any], labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per item, the sum of the answer tokens' log-probabilities and their count (teacher-forced)."""
    logits = model(**inputs).logits[:, :-1].float()
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    lp = torch.log_softmax(logits, -1).gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
    return (lp * keep).sum(1), keep.sum(1)


def answer_probability(
    model: nn.Module, batches: Sequence[Batch], prompt: torch.Tensor | None = None, insert_at: int = 0
) -> torch.Tensor:
    """Per item (in batch order), exp of the mean answer-token log-probability, teacher-forced (OU's
    ``probability``), with ``prompt`` inserted or, when None, on the plain input; NaN for an item without answer
    tokens. The model is not modified."""
    values = []
    with frozen(model), torch.no_grad():
        for batch in batches:
            inputs, labels = insert_prompt(model, batch, None if prompt is None else prompt.detach(), insert_at)
            total, count = answer_log_probs(model, inputs, labels)
            values.append((total / count).exp().double().cpu())  # NaN where count == 0
    return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)


def mean_probability(values: torch.Tensor) -> float | None:
    """The mean over items with answer tokens (None when none has)."""
    keep = ~values.isnan()
    return float(values[keep].mean()) if bool(keep.any()) else None


@dataclass
class FittedPrompt:
    prompt: torch.Tensor
    losses: list[float]


def fit_soft_prompt(model: nn.Module, batches: Sequence[Batch], cfg: SoftPromptConfig) -> FittedPrompt:
    """``cfg.steps`` Adam steps on a ``(k, hidden)`` prompt minimising the mean answer-token NLL of ``batches``
    (cycled, one per step) with the model frozen; the model's parameters, their ``requires_grad`` flags and its
    mode are left as they were. ``losses``: the loss of each step (before its update)."""
    if not batches:
        raise EmbeddingAttackError("soft prompt: no data to fit the prompt on (the fitting part is empty).")
    prompt = init_prompt(model, cfg)
    opt = torch.optim.Adam([prompt], lr=cfg.lr)
    losses: list[float] = []
    with frozen(model):
        for step in range(cfg.steps):
            inputs, labels = insert_prompt(model, batches[step % len(batches)], prompt, cfg.insert_at)
            total, count = answer_log_probs(model, inputs, labels)
            if int(count.sum()) == 0:
                raise EmbeddingAttackError("soft prompt: a fitting batch has no answer tokens (all labels -100).")
            loss = -total.sum() / count.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([prompt], cfg.max_grad_norm)
            opt.step()
            losses.append(float(loss.detach()))
    return FittedPrompt(prompt.detach(), losses)


def soft_prompt_attack(
    model: nn.Module,
    fit_batches: Sequence[Batch],
    scored_batches: Sequence[Batch],
    cfg: SoftPromptConfig,
    before: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Fit a prompt on ``fit_batches``, score ``scored_batches`` with and without it. ``before`` (per-item
    probabilities without the prompt) skips that forward when already computed. Returns ``before``, ``after``,
    ``gain`` (after - before, means over items), ``per_item_before``/``per_item_after`` tensors and the fit's
    ``fit_loss_first``/``fit_loss_last``."""
    if before is None:
        before = answer_probability(model, scored_batches)
    fitted = fit_soft_prompt(model, fit_batches, cfg)
    after = answer_probability(model, scored_batches, fitted.prompt, cfg.insert_at)
    b, a = mean_probability(before), mean_probability(after)
    return {
        "before": b,
        "after": a,
        "gain": None if a is None or b is None else a - b,
        "per_item_before": before,
        "per_item_after": after,
        "fit_loss_first": fitted.losses[0],
        "fit_loss_last": fitted.losses[-1],
        "prompt_norm": float(fitted.prompt.norm(dim=-1).mean()),
    }


def margin(forget_gain: float | None, control_gain: float | None) -> float | None:
    """Forget gain minus control gain (None when either is missing)."""
    return None if forget_gain is None or control_gain is None else forget_gain - control_gain
