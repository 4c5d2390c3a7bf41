"""Logits only where a loss reads them.

The distillation losses read a few rows per query (``positions: first``: one; ``first_n``: n), while a causal LM's
forward applies its LM head to every position, which at a real vocabulary (SmolLM2: 49k, Llama 3: 128k) is much of
the step. :func:`logits_at` runs the model on a left-aligned copy of the right-padded batch, with explicit position
ids (so every token keeps its position and its attention), and asks for the logits of the last ``k`` positions only
(``num_logits_to_keep``, or ``logits_to_keep`` in newer transformers), ``k`` being the longest span from a row's
first aligned position to its end. A model whose forward takes neither gets the full logits, gathered.

A prompt-steered teacher reads the same instruction in front of every query. With a :class:`PrefixCache` the
tokens that every row of a batch shares with the cache's prefix are not recomputed: their keys and values, computed
once (one row), are repeated over the batch and the model runs on the rest of each row, from its position on.
Causal attention makes that exact (a position's keys and values depend only on the tokens up to it); the values
differ from the uncached forward only by float rounding.
"""

from __future__ import annotations

import copy
import inspect
import logging
from functools import cache
from typing import Any

import torch
from transformers import DynamicCache

from duet_plugin.core.collate import gather_positions

KEEP_ARGS = ("num_logits_to_keep", "logits_to_keep")
#: A shared prefix shorter than this is not worth a cache (and is probably the chat template's first tokens only).
MIN_PREFIX_TOKENS = 8

logger = logging.getLogger(__name__)


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


class PrefixCache:
    """The keys and values of a teacher's shared prompt prefix, for one frozen model.

    The prefix is fixed at the first batch that shares at least :data:`MIN_PREFIX_TOKENS` tokens (its longest
    common prefix, so one prefix forward per model, at the same call on every rank); later batches reuse as much of
    it as all their rows share. Keep one per model and drop it when the weights change. ``hits``/``tokens_saved``
    count the reuse; a batch that shares too little runs uncached and is logged once.
    """

    def __init__(self) -> None:
        self.tokens: torch.Tensor | None = None
        self.past: Any = None
        self.hits = 0
        self.tokens_saved = 0
        self._warned = False

    def usable(self, input_ids: torch.Tensor, limit: int) -> int:
        """How many leading tokens of every row the cache covers (0: run uncached), at most ``limit``."""
        shared = _common_prefix(input_ids, limit)
        if self.tokens is not None:
            n = min(shared, len(self.tokens))
            same = (input_ids[:, :n] == self.tokens[:n].to(input_ids.device)).all(dim=0)
            shared = int(same.long().cumprod(dim=0).sum())
        if shared < MIN_PREFIX_TOKENS:
            if not self._warned:
                logger.info(
                    "Teacher prefix cache: the rows of a batch share %d leading token(s) with the cached prefix "
                    "(< %d); such batches run without the cache",
                    shared,
                    MIN_PREFIX_TOKENS,
                )
                self._warned = True
            return 0
        return shared

    def past_for(self, model: Any, input_ids: torch.Tensor, length: int, arg: str) -> Any:
        """A fresh cache object holding the prefix's first ``length`` keys/values, repeated over the batch."""
        if self.tokens is None:
            self.tokens = input_ids[0, :length].clone()
            ones = torch.ones(1, length, dtype=torch.long, device=input_ids.device)
            self.past = model(
                input_ids=self.tokens[None],
                attention_mask=ones,
                past_key_values=DynamicCache(),
                use_cache=True,
                **{arg: 1},
            ).past_key_values
            logger.info("Teacher prefix cache: %d shared prompt tokens computed once", length)
        past = copy.deepcopy(self.past)
        if length < len(self.tokens):
            past.crop(length)
        past.batch_repeat_interleave(input_ids.shape[0])
        self.hits += 1
        self.tokens_saved += length * input_ids.shape[0]
        return past


def _common_prefix(input_ids: torch.Tensor, limit: int) -> int:
    """The number of leading tokens all rows share, at most ``limit``."""
    same = (input_ids[:, :limit] == input_ids[:1, :limit]).all(dim=0)
    return int(same.long().cumprod(dim=0).sum())


def logits_at(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    position_mask: torch.Tensor,
    prefix_cache: PrefixCache | None = None,
) -> torch.Tensor:
    """``model``'s logits ``[N, V]`` at ``positions [B, P]`` where ``position_mask`` (row-major), computing the LM
    head only on the positions from each row's first aligned one to its end, and with ``prefix_cache`` reusing the
    keys and values of the tokens every row shares (see the module docstring). The batch must be right-padded (the
    collator's); any other padding gets the full logits."""
    arg = keep_arg(model)
    if arg is None or not bool(position_mask.any()) or not _right_padded(attention_mask):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return gather_positions(logits, positions, position_mask)
    width = input_ids.shape[1]
    lengths = attention_mask.sum(dim=1)
    first = torch.where(position_mask, positions, width).min(dim=1).values.clamp(max=width)
    start, past = 0, None
    if prefix_cache is not None:  # every row keeps at least one token, and the first position read, to run on
        start = prefix_cache.usable(input_ids, int(torch.minimum(first, lengths - 1).min()))
        if start:
            past = prefix_cache.past_for(model, input_ids, start, arg)
            input_ids, attention_mask = input_ids[:, start:], attention_mask[:, start:]
            positions, first, lengths, width = positions - start, first - start, lengths - start, width - start
    keep = int((lengths - first).clamp(min=1).max())
    shift = width - lengths  # each row moves right by its padding
    source = torch.arange(width, device=input_ids.device).unsqueeze(0) - shift.unsqueeze(1)
    real = source >= 0
    left_ids = input_ids.gather(1, source.clamp(min=0)).masked_fill(~real, 0)
    left_mask = attention_mask.gather(1, source.clamp(min=0)).masked_fill(~real, 0)
    position_ids = start + (left_mask.cumsum(dim=1) - 1).clamp(min=0)
    extra: dict[str, Any] = {arg: keep}
    if past is not None:
        prefix_mask = torch.ones(left_mask.shape[0], start, dtype=left_mask.dtype, device=left_mask.device)
        left_mask = torch.cat([prefix_mask, left_mask], dim=1)
        extra.update(past_key_values=past, use_cache=True)
    out = model(input_ids=left_ids, attention_mask=left_mask, position_ids=position_ids, **extra).logits
    return gather_positions(out, positions + shift.unsqueeze(1) - (width - keep), position_mask)
