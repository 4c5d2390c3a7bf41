"""``core.logits.logits_at``: the LM head applied only from each row's first aligned position on, with the same
logits as the full forward, for the student and teacher views the collator builds."""

from __future__ import annotations

import copy

import pytest
import torch

from duet_plugin.core.collate import TeacherStudentCollator, gather_positions
from duet_plugin.core.logits import keep_arg, logits_at
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
