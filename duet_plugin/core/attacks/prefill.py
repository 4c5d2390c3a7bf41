"""Prefill attack: the assistant turn is seeded with the first ``k`` tokens of the true answer.

A model that only learnt to refuse at the first response token continues a forbidden answer once it has started;
the metric scores the continuation against the rest of the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
