"""UNDO's core: config validation, distillation positions, the KL loss, retain NLL and the recovery gap."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from duet_plugin.core.undo import (
    UNDOConfig,
    distill_mask,
    from_first_distilled,
    label_nll,
    recovered,
    recovery_gap,
    undo_logits,
    undo_loss,
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"beta": -0.1}, "beta"),
        ({"student_init": "scratch"}, "student_init"),
        ({"top_k": 0}, "top_k"),
        ({"temperature": 0}, "temperature"),
        ({"tokens": "first"}, "tokens must be one of"),
        ({"streams": ["boundary"]}, "streams"),
        ({"streams": []}, "streams"),
        ({"recovery": 1.5}, "recovery"),
        ({"recovery_eval_steps": 0}, "recovery_eval_steps"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UNDOConfig(**kwargs)


def test_config_accepts_single_strings() -> None:
    cfg = UNDOConfig(streams="retain", noise_include="mlp", recovery=None)
    assert cfg.streams == ["retain"] and cfg.noise_include == ["mlp"]


def test_distill_mask_labels_and_all() -> None:
    ids = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 7, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 6, 7, -100, -100]])
    assert distill_mask(labels, attn, ids, "labels").tolist() == [
        [False, True, True, False],
        [True, True, False, False],
    ]
    assert distill_mask(labels, attn, ids, "all").tolist() == [[True, True, True, False], [True, True, False, False]]
    with pytest.raises(ValueError, match="tokens=all"):
        distill_mask(None, attn, ids, "labels")


def _brute_kl(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    terms = []
    for b in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if mask[b, j]:
                p = F.softmax(t[b, j], -1)
                terms.append((p * (p.log() - F.log_softmax(s[b, j], -1))).sum())
    return torch.stack(terms).mean()


def test_undo_loss_is_next_token_forward_kl() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    mask = torch.tensor([[True, False, True, True], [False, True, True, False]])
    torch.testing.assert_close(undo_loss(s, t, mask, UNDOConfig()), _brute_kl(s[:, :-1], t[:, :-1], mask))
    # top_k = V keeps every token: the same loss; a small K differs but stays a KL (>= 0).
    torch.testing.assert_close(undo_loss(s, t, mask, UNDOConfig(top_k=11)), _brute_kl(s[:, :-1], t[:, :-1], mask))
    k3 = undo_loss(s, t, mask, UNDOConfig(top_k=3))
    assert k3.item() >= 0 and not torch.isclose(k3, _brute_kl(s[:, :-1], t[:, :-1], mask))
    assert undo_loss(t, t, mask, UNDOConfig()).item() == pytest.approx(0.0, abs=1e-6)


def test_undo_loss_gradient_moves_student_towards_teacher() -> None:
    torch.manual_seed(1)
    s = torch.randn(1, 4, 9, requires_grad=True)
    t = torch.randn(1, 4, 9)
    mask = torch.ones(1, 3, dtype=torch.bool)
    before = undo_loss(s, t, mask, UNDOConfig())
    before.backward()
    with torch.no_grad():
        after = undo_loss(s - 0.5 * s.grad, t, mask, UNDOConfig())
    assert after < before
    assert torch.all(s.grad[:, -1] == 0)  # the last position predicts nothing


def test_label_nll_matches_cross_entropy() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[-100, 3, 4, -100], [-100, -100, 1, 2]])
    total, count = label_nll(logits, labels)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert count == 4
    assert total / count == pytest.approx(expected.item(), rel=1e-5)
    assert label_nll(logits, torch.full_like(labels, -100)) == (0.0, 0)


def test_recovery_gap_and_criterion() -> None:
    assert recovery_gap(2.1, 2.0) == pytest.approx(0.05)
    assert recovered(recovery_gap(2.1, 2.0), 0.95)
    assert not recovered(recovery_gap(2.2, 2.0), 0.95)
    assert recovered(recovery_gap(1.5, 2.0), 1.0)  # better than the teacher counts as recovered
    assert recovery_gap(0.0, 0.0) == 0.0


def test_the_lm_head_skips_the_prompt_positions_no_row_distils(tiny_model) -> None:
    """tokens=labels: the loss on the logits from the first distilled position on equals the full-logits loss."""
    torch.manual_seed(0)
    ids = torch.randint(5, 500, (3, 12))
    mask = torch.tensor([[1] * 12, [1] * 9 + [0] * 3, [1] * 10 + [0] * 2])
    labels = torch.full_like(ids, -100)
    labels[0, 7:12], labels[1, 5:9], labels[2, 8:10] = ids[0, 7:12], ids[1, 5:9], ids[2, 8:10]
    positions = distill_mask(labels, mask, ids, "labels")
    keep = from_first_distilled(positions)
    assert keep == 12 - 4  # next-token position 4 predicts row 1's first label (column 5)
    teacher = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = UNDOConfig(teacher="t")
    seen: list[int] = []
    tiny_model.lm_head.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[1]))
    with torch.no_grad():
        full = undo_loss(tiny_model(ids, attention_mask=mask).logits, teacher(ids, attention_mask=mask).logits,
                         positions, cfg)  # fmt: skip
        s, t = undo_logits(tiny_model, ids, mask, keep).logits, undo_logits(teacher, ids, mask, keep).logits
        kept = undo_loss(s, t, positions[:, -(keep - 1) :], cfg)
    assert seen == [12, keep] and s.shape[1] == keep
    assert float(kept) == pytest.approx(float(full), rel=1e-5) and float(full) > 0
    assert from_first_distilled(torch.zeros(2, 5, dtype=torch.bool)) == 6
