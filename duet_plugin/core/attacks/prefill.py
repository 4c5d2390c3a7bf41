"""Prefill attack: the assistant turn is seeded with the first ``k`` tokens of the true answer.

A model that only learnt to refuse at the first response token continues a forbidden answer once it has started;
the metric scores the continuation against the rest of the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from duet_plugin.core.teacher import PromptRenderer


@dataclass
class PrefilledPrompt:
    """Prompt ids ending inside the assistant turn, and the answer tokens still to come."""

    input_ids: list[int]
    prefill_ids: list[int]
    target_ids: list[int]


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """The answer's tokens as they follow the generation prompt (no special tokens)."""
    return list(tokenizer(answer, add_special_tokens=False)["input_ids"])


def prefilled_prompt(
    renderer: PromptRenderer, question: str, answer: str, k: int, prefix: str | None = None
) -> PrefilledPrompt:
    """The question's prompt plus the answer's first ``k`` tokens (``k`` is capped so one target token remains)."""
    if k < 0:
        raise ValueError(f"prefill length must be >= 0, got {k}.")
    answer_tokens = answer_ids(renderer.tokenizer, answer)
    if not answer_tokens:
        raise ValueError(f"Empty answer for prefill attack on question {question!r}.")
    k = min(k, len(answer_tokens) - 1)
    prompt = renderer.prompt_ids(question, prefix)
    return PrefilledPrompt(prompt + answer_tokens[:k], answer_tokens[:k], answer_tokens[k:])


IGNORE_INDEX = -100


def prefill_tokenized(
    input_ids: Sequence[int] | torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    k: int,
    for_generation: bool = False,
    eos_token_id: int | None = None,
) -> dict[str, torch.Tensor]:
    """Turn a tokenized QA item (full conversation, answer tokens labelled) into its prefill-attack item.

    The first ``k`` answer tokens move from the target into the prompt (label ``-100``); at least one answer token
    other than a final ``eos_token_id`` stays a target. ``for_generation``: ``input_ids`` end after the prefill
    (OU's ``predict_with_generate`` layout, labels still span the whole sequence); else the full sequence.
    """
    if k < 0:
        raise ValueError(f"prefill length must be >= 0, got {k}.")
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    lab = torch.as_tensor(labels, dtype=torch.long).clone()
    if ids.shape != lab.shape or ids.ndim != 1:
        raise ValueError(f"input_ids {tuple(ids.shape)} and labels {tuple(lab.shape)} must be equal 1-D sequences.")
    answer = (lab != IGNORE_INDEX).nonzero().flatten()
    if answer.numel() == 0:
        raise ValueError("The item has no answer tokens (every label is -100); nothing to prefill.")
    start, n = int(answer[0]), answer.numel()
    if eos_token_id is not None and int(lab[answer[-1]]) == eos_token_id:
        n -= 1
    k = max(0, min(k, n - 1))
    lab[start : start + k] = IGNORE_INDEX
    if for_generation:
        ids = ids[: start + k]
    return {"input_ids": ids, "labels": lab, "attention_mask": torch.ones_like(ids), "prefill_tokens": k}
