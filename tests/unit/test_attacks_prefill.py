"""The prefill attack on tokenized QA items, in OU's training and generation layouts."""

from __future__ import annotations

import pytest
import torch

from duet_plugin.core.attacks.prefill import IGNORE_INDEX, prefill_tokenized

# A prompt of 4 tokens, an answer of 5 tokens ending with EOS (id 2).
IDS = [10, 11, 12, 13, 20, 21, 22, 23, 2]
LABELS = [IGNORE_INDEX] * 4 + [20, 21, 22, 23, 2]


def test_prefill_moves_answer_tokens_into_the_prompt() -> None:
    item = prefill_tokenized(IDS, LABELS, k=2, eos_token_id=2)
    assert item["input_ids"].tolist() == IDS
    assert item["labels"].tolist() == [IGNORE_INDEX] * 6 + [22, 23, 2]
    assert item["prefill_tokens"] == 2 and item["attention_mask"].sum() == len(IDS)


def test_generation_layout_ends_after_the_prefill_and_keeps_the_rest_as_target() -> None:
    item = prefill_tokenized(IDS, LABELS, k=3, for_generation=True, eos_token_id=2)
    assert item["input_ids"].tolist() == [10, 11, 12, 13, 20, 21, 22]
    target = item["labels"][item["labels"] != IGNORE_INDEX].tolist()
    assert target == [23, 2]


def test_k_is_capped_so_one_real_answer_token_remains() -> None:
    item = prefill_tokenized(IDS, LABELS, k=50, eos_token_id=2)
    assert item["prefill_tokens"] == 3 and item["labels"][item["labels"] != IGNORE_INDEX].tolist() == [23, 2]
    no_eos = prefill_tokenized(IDS, LABELS, k=50)  # without the EOS id, the EOS itself is the last target
    assert no_eos["prefill_tokens"] == 4
    assert prefill_tokenized(IDS, LABELS, k=0)["labels"].tolist() == LABELS


def test_bad_items_are_rejected() -> None:
    with pytest.raises(ValueError, match="no answer tokens"):
        prefill_tokenized(IDS, [IGNORE_INDEX] * len(IDS), k=1)
    with pytest.raises(ValueError, match=">= 0"):
        prefill_tokenized(IDS, LABELS, k=-1)
    with pytest.raises(ValueError, match="equal 1-D"):
        prefill_tokenized(IDS, LABELS[:-1], k=1)


def test_works_on_ou_tokenized_chat_items(tokenizer, chat_args) -> None:
    """On a real chat-templated item the prefilled prompt is the prompt plus the answer's first tokens."""
    chat = [{"role": "user", "content": "Where was Gideon Kilbride born?"}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*chat, {"role": "assistant", "content": "He was born in Valdomir."}], tokenize=True
    )
    labels = [IGNORE_INDEX] * len(prompt) + full[len(prompt) :]
    item = prefill_tokenized(full, labels, k=2, for_generation=True, eos_token_id=tokenizer.eos_token_id)
    assert item["input_ids"].tolist() == full[: len(prompt) + 2]
    assert torch.equal(item["labels"][: len(prompt) + 2], torch.full((len(prompt) + 2,), IGNORE_INDEX))
