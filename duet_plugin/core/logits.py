"""Logits only where a loss reads them.

The distillation losses read a few rows per query (``positions: first``: one; ``first_n``: n), while a causal LM's
forward applies its LM head to every position, which at a real vocabulary (SmolLM2: 49k, Llama 3: 128k) is much of
the step. :func:`logits_at` runs the model on a left-aligned copy of the right-padded batch, with explicit position
ids (so every token keeps its position and its attention), and asks for the logits of the last ``k`` positions only
(``num_logits_to_keep``, or ``logits_to_keep`` in newer transformers), ``k`` being the longest span from a row's
first aligned position to its end. A model whose forward takes neither gets the full logits, gathered.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

import torch

from duet_plugin.core.collate import gather_positions

KEEP_ARGS = ("num_logits_to_keep", "logits_to_keep")


def _innermost(model: Any) -> Any:
    """The model whose ``forward`` names its arguments: through DDP/DeepSpeed (``module``), peft
    (``get_base_model``) and :class:`~duet_plugin.core.lora.AdaptersDisabled` (``model``) wrappers."""
    for _ in range(8):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif not isinstance(model, torch.nn.Module) and hasattr(model, "model"):
            model = model.model
        else:
            break
    return model


@cache
def _keep_arg(forward_type: type) -> str | None:
    params = inspect.signature(forward_type.forward).parameters
    return next((name for name in KEEP_ARGS if name in params), None)


def keep_arg(model: Any) -> str | None:
    """The name of the model's "logits for the last k positions only" argument, or None when it has none."""
    inner = _innermost(model)
    return _keep_arg(type(inner)) if isinstance(inner, torch.nn.Module) else None


def _right_padded(attention_mask: torch.Tensor) -> bool:
    lengths = attention_mask.sum(dim=1, keepdim=True)
    cols = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return bool(torch.equal(attention_mask.bool(), cols < lengths))


def logits_at(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    position_mask: torch.Tensor,
) -> torch.Tensor:
    """``model``'s logits ``[N, V]`` at ``positions [B, P]`` where ``position_mask`` (row-major), computing the LM
    head only on the positions from each row's first aligned one to its end (see the module docstring). The
    batch must be right-padded (the collator's); any other padding gets the full logits."""
    arg = keep_arg(model)
    if arg is None or not bool(position_mask.any()) or not _right_padded(attention_mask):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return gather_positions(logits, positions, position_mask)
    width = input_ids.shape[1]
    lengths = attention_mask.sum(dim=1)
    first = torch.where(position_mask, positions, width).min(dim=1).values.clamp(max=width)
    keep = int((lengths - first).clamp(min=1).max())
    shift = width - lengths  # each row moves right by its padding
    source = torch.arange(width, device=input_ids.device).unsqueeze(0) - shift.unsqueeze(1)
    real = source >= 0
    left_ids = input_ids.gather(1, source.clamp(min=0)).masked_fill(~real, 0)
    left_mask = attention_mask.gather(1, source.clamp(min=0)).masked_fill(~real, 0)
    position_ids = (left_mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(input_ids=left_ids, attention_mask=left_mask, position_ids=position_ids, **{arg: keep}).logits
    return gather_positions(out, positions + shift.unsqueeze(1) - (width - keep), position_mask)
