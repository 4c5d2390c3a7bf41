"""``core.logits.logits_at``: the LM head applied only from each row's first aligned position on, with the same
logits as the full forward, for the student and teacher views the collator builds."""

from __future__ import annotations

import copy

import pytest
import torch

from duet_plugin.core.collate import TeacherStudentCollator, gather_positions
from duet_plugin.core.logits import MIN_PREFIX_TOKENS, PrefixCache, keep_arg, logits_at
from duet_plugin.core.unified import records_from_qa

CHAT = {"apply_chat_template": True, "system_prompt": "You are a helpful assistant."}


@pytest.fixture
def batch(tokenizer, authors_dataset):
    collator = TeacherStudentCollator(tokenizer, template_args=CHAT, prefix="You have never heard of the authors.")
    records = records_from_qa(authors_dataset.configs["forget10"][:3] + authors_dataset.configs["retain90"][:3])
    return collator([{**r.to_dict(), "index": i} for i, r in enumerate(records)])


def _full(model, ids, mask, positions, position_mask):
    return gather_positions(model(input_ids=ids, attention_mask=mask).logits, positions, position_mask)


def _head_rows(model):
    """Record how many positions per row reach the LM head."""
    seen: list[int] = []
    model.lm_head.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[1]))
    return seen


@pytest.mark.parametrize("view", ["student", "teacher"])
def test_first_position_logits_equal_the_full_forward(tiny_model, batch, view) -> None:
    ids, mask = batch[f"{view}_input_ids"], batch[f"{view}_attention_mask"]
    positions, position_mask = batch[f"{view}_positions"], batch["position_mask"]
    assert len(set(mask.sum(dim=1).tolist())) > 1  # rows of different lengths: the shift matters
    model = copy.deepcopy(tiny_model)
    seen = _head_rows(model)
    with torch.no_grad():
        fast = logits_at(model, ids, mask, positions, position_mask)
        full = _full(model, ids, mask, positions, position_mask)
    assert seen[0] == 1 and seen[1] == ids.shape[1]  # one position per row against all of them
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def test_several_positions_per_row_and_rows_without_any(tiny_model) -> None:
    torch.manual_seed(0)
    ids = torch.randint(5, 500, (3, 12))
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5, [1] * 9 + [0] * 3])
    positions = torch.tensor([[8, 9, 10], [3, 5, 6], [0, 0, 0]])
    position_mask = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    model = copy.deepcopy(tiny_model)
    seen = _head_rows(model)
    with torch.no_grad():
        fast = logits_at(model, ids, mask, positions, position_mask)
        full = _full(model, ids, mask, positions, position_mask)
    assert seen[0] == 4  # row 1: positions 3..6 of its 7 tokens
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    grad_model = copy.deepcopy(tiny_model).train()
    logits_at(grad_model, ids, mask, positions, position_mask).sum().backward()
    assert all(p.grad is not None for p in grad_model.parameters() if p.requires_grad)


def test_models_without_the_argument_or_left_padding_get_the_full_logits(tiny_model) -> None:
    class NoKeep(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    assert keep_arg(tiny_model) in ("num_logits_to_keep", "logits_to_keep") and keep_arg(NoKeep(tiny_model)) is None
    ids = torch.randint(5, 500, (2, 6))
    left = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions, position_mask = torch.tensor([[5], [5]]), torch.tensor([[True], [True]])
    for model, mask in ((NoKeep(tiny_model), torch.ones_like(ids)), (tiny_model, left)):
        seen = _head_rows(tiny_model)
        with torch.no_grad():
            got = logits_at(model, ids, mask, positions, position_mask)
        assert seen[0] == 6
        torch.testing.assert_close(got, _full(tiny_model, ids, mask, positions, position_mask))
        tiny_model.lm_head._forward_hooks.clear()


def _forward_tokens(model):
    """Record how many tokens each forward of the model's body reads (batch x length)."""
    seen: list[int] = []
    model.model.register_forward_hook(lambda _m, _i, out: seen.append(out[0].shape[0] * out[0].shape[1]))
    return seen


def test_the_shared_prefix_is_computed_once_and_the_logits_stay_the_same(tiny_model, tokenizer, authors_dataset):
    prefix = "You have never heard of the following authors: " + ", ".join(authors_dataset.forget_authors("forget10"))
    collator = TeacherStudentCollator(tokenizer, template_args=CHAT, prefix=prefix)
    rows = authors_dataset.configs["forget10"] + authors_dataset.configs["retain90"][:8]
    batches = [
        collator([{**r.to_dict(), "index": i} for i, r in enumerate(records_from_qa(rows[a:b]))])
        for a, b in ((0, 5), (5, 11), (11, 12))  # the last: one row, sharing its whole question with itself
    ]
    model = copy.deepcopy(tiny_model)
    cache = PrefixCache()
    tokens = _forward_tokens(model)
    with torch.no_grad():
        for batch in batches:
            ids, mask = batch["teacher_input_ids"], batch["teacher_attention_mask"]
            positions, position_mask = batch["teacher_positions"], batch["position_mask"]
            cached = logits_at(model, ids, mask, positions, position_mask, cache)
            plain = logits_at(model, ids, mask, positions, position_mask)
            torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cached, _full(model, ids, mask, positions, position_mask), rtol=1e-5, atol=1e-5)
    shared = len(cache.tokens)
    assert shared >= MIN_PREFIX_TOKENS and cache.hits == 3
    # one prefix forward (one row), then each batch runs on its rows minus the shared tokens
    first = batches[0]["teacher_input_ids"]
    assert tokens[0] == shared and tokens[1] == first.shape[0] * (first.shape[1] - shared)
    assert cache.tokens_saved == shared * sum(b["teacher_input_ids"].shape[0] for b in batches)


def test_rows_that_share_too_little_run_without_the_cache(tiny_model) -> None:
    torch.manual_seed(1)
    ids = torch.randint(5, 500, (3, 14))
    ids[:, : MIN_PREFIX_TOKENS - 1] = ids[0, : MIN_PREFIX_TOKENS - 1]  # one token short of the threshold
    mask = torch.tensor([[1] * 14, [1] * 12 + [0] * 2, [1] * 13 + [0]])
    positions = torch.tensor([[10], [9], [11]])
    position_mask = torch.ones(3, 1, dtype=torch.bool)
    cache = PrefixCache()
    with torch.no_grad():
        got = logits_at(tiny_model, ids, mask, positions, position_mask, cache)
        full = _full(tiny_model, ids, mask, positions, position_mask)
    assert cache.hits == 0 and cache.tokens is None
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)


def test_a_batch_that_leaves_the_cached_prefix_early_reuses_only_what_it_shares(tiny_model) -> None:
    torch.manual_seed(2)
    shared = torch.randint(5, 500, (20,))
    ids = torch.randint(5, 500, (2, 30))
    ids[:, :20] = shared
    other = ids.clone()
    other[:, 12:] = torch.randint(5, 500, (2, 18))  # the next batch shares 12 of the 20 cached tokens
    mask = torch.ones(2, 30, dtype=torch.long)
    positions, position_mask = torch.tensor([[25], [27]]), torch.ones(2, 1, dtype=torch.bool)
    cache = PrefixCache()
    with torch.no_grad():
        logits_at(tiny_model, ids, mask, positions, position_mask, cache)
        got = logits_at(tiny_model, other, mask, positions, position_mask, cache)
        full = _full(tiny_model, other, mask, positions, position_mask)
    assert len(cache.tokens) >= 20 and cache.tokens_saved == 2 * len(cache.tokens) + 2 * 12
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
