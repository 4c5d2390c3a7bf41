"""Top-K logit distillation: against brute-force references, by gradient direction, and on bad input."""

from __future__ import annotations

import math

import pytest
import torch

from duet_plugin.core.losses import TopKTargets, select_topk, topk_distillation_loss


def _brute_force(student: torch.Tensor, teacher: torch.Tensor, k: int, distance: str, delta: float = 1.0) -> float:
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=False):
        top = sorted(range(len(t_row)), key=lambda i: -t_row[i])[:k]
        if distance in ("huber", "mse"):
            row = 0.0
            for i in top:
                d = abs(s_row[i] - t_row[i])
                if distance == "mse":
                    row += d * d
                else:
                    row += 0.5 * d * d if d <= delta else delta * (d - 0.5 * delta)
        else:
            zs, zt = sum(math.exp(x) for x in s_row), sum(math.exp(x) for x in t_row)
            p = [math.exp(t_row[i]) / zt for i in top]
            q = [math.exp(s_row[i]) / zs for i in top]
            p_tail, q_tail = 1 - sum(p), 1 - sum(q)
            row = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=False))
            if p_tail > 0:
                row += p_tail * math.log(p_tail / q_tail)
        total += row
    return total / len(student)


@pytest.mark.parametrize("distance", ["huber", "mse", "kl"])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_loss_matches_brute_force(distance: str, k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    student = torch.randn(5, 11, generator=gen, dtype=torch.float64) * 3
    teacher = torch.randn(5, 11, generator=gen, dtype=torch.float64) * 3
    got = topk_distillation_loss(student, select_topk(teacher, k), distance=distance, huber_delta=0.7)
    want = _brute_force(student, teacher, k, distance, delta=0.7)
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_kl_with_k_equal_to_vocab_is_full_kl() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 9, generator=gen), torch.randn(4, 9, generator=gen)
    got = topk_distillation_loss(student, select_topk(teacher, 9), distance="kl")
    full = torch.nn.functional.kl_div(
        student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean"
    )
    assert got.item() == pytest.approx(full.item(), rel=1e-5)


@pytest.mark.parametrize("distance", ["huber", "mse", "kl"])
def test_identical_logits_give_zero_loss(distance: str) -> None:
    logits = torch.randn(3, 20)
    assert topk_distillation_loss(logits.clone(), select_topk(logits, 5), distance=distance).item() == pytest.approx(
        0.0, abs=1e-6
    )


@pytest.mark.parametrize("distance", ["huber", "mse", "kl"])
def test_gradient_step_moves_student_towards_teacher(distance: str) -> None:
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(4, 30, generator=gen) * 2
    targets = select_topk(teacher, 5)
    student = torch.randn(4, 30, generator=gen, requires_grad=True)
    loss = topk_distillation_loss(student, targets, distance=distance)
    loss.backward()
    with torch.no_grad():
        stepped = student - 0.05 * student.grad
        before = (student.gather(-1, targets.indices) - targets.values).abs().mean()
        after = (stepped.gather(-1, targets.indices) - targets.values).abs().mean()
        assert topk_distillation_loss(stepped, targets, distance=distance) < loss
    if distance != "kl":  # raw-logit distances close the gap at the top-K indices themselves
        assert after < before
    # Only the teacher's top-K columns carry gradient for the raw-logit distances.
    outside = torch.ones_like(student, dtype=torch.bool).scatter(-1, targets.indices, False)
    if distance != "kl":
        assert torch.all(student.grad[outside] == 0)
    else:
        assert torch.any(student.grad[outside] != 0)  # the tail bucket pulls on the rest of the vocabulary


def test_huber_is_linear_beyond_delta() -> None:
    teacher = torch.tensor([[10.0, 0.0, 0.0]])
    targets = select_topk(teacher, 1)
    student = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    topk_distillation_loss(student, targets, distance="huber", huber_delta=1.0).backward()
    assert student.grad[0, 0].item() == pytest.approx(-1.0)  # slope capped at delta


def test_topk_selection_picks_largest_teacher_logits() -> None:
    teacher = torch.tensor([[0.1, 5.0, -2.0, 3.0], [9.0, 1.0, 2.0, 8.5]])
    targets = select_topk(teacher, 2)
    assert targets.indices.tolist() == [[1, 3], [0, 3]]
    assert targets.values.tolist() == [[5.0, 3.0], [9.0, 8.5]]
    assert targets.logsumexp[0].item() == pytest.approx(torch.logsumexp(teacher[0], 0).item())


@pytest.mark.parametrize("k", [0, -3, 5])
def test_bad_top_k_is_rejected_with_the_fix(k: int) -> None:
    with pytest.raises(ValueError, match="top_k"):
        select_topk(torch.randn(2, 4), k)


def test_unknown_distance_and_shape_mismatch() -> None:
    targets = select_topk(torch.randn(2, 6), 2)
    with pytest.raises(ValueError, match="distance"):
        topk_distillation_loss(torch.randn(2, 6), targets, distance="cosine")
    with pytest.raises(ValueError, match="positions"):
        topk_distillation_loss(torch.randn(3, 6), targets)


def test_empty_positions_give_a_differentiable_zero() -> None:
    student = torch.randn(0, 6, requires_grad=True)
    empty = TopKTargets(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2), torch.zeros(0))
    loss = topk_distillation_loss(student, empty)
    loss.backward()
    assert loss.item() == 0.0


def test_forward_kl_matches_brute_force_over_masked_positions() -> None:
    from duet_plugin.core.losses import forward_kl_loss

    gen = torch.Generator().manual_seed(3)
    student = torch.randn(2, 4, 7, generator=gen, dtype=torch.float64)
    teacher = torch.randn(2, 4, 7, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]])
    total, n = 0.0, 0
    for b in range(2):
        for i in range(4):
            if mask[b, i]:
                zs = sum(math.exp(x) for x in student[b, i].tolist())
                zt = sum(math.exp(x) for x in teacher[b, i].tolist())
                p = [math.exp(x) / zt for x in teacher[b, i].tolist()]
                q = [math.exp(x) / zs for x in student[b, i].tolist()]
                total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
                n += 1
    assert forward_kl_loss(student, teacher, mask).item() == pytest.approx(total / n, rel=1e-6)
    assert forward_kl_loss(teacher.clone(), teacher, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert forward_kl_loss(student, teacher, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError, match="temperature"):
        forward_kl_loss(student, teacher, mask, temperature=0)
