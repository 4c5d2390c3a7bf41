"""Bidirectional top-K distillation: the push term, stored-target lookups and the BiLD distance, each checked
against a brute-force reference or by the direction of its gradient."""

from __future__ import annotations

import itertools

import pytest
import torch

from duet_plugin.core.losses import (
    bild_divergence,
    directed_loss,
    pairwise_differences,
    select_topk,
    teacher_values_at,
    topk_distillation_loss,
)

V = 20


def _logits(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_teacher_values_are_exact_where_stored_and_an_upper_bound_elsewhere() -> None:
    teacher = _logits(0)
    stored = select_topk(teacher, 5)
    idx = torch.arange(V).expand(4, V)
    got = teacher_values_at(stored, idx)
    in_store = torch.zeros(4, V, dtype=torch.bool).scatter(-1, stored.indices, True)
    assert torch.equal(got[in_store], teacher[in_store])
    fifth = stored.values[:, -1:].expand(4, V)
    assert torch.equal(got[~in_store], fifth[~in_store]) and (got[~in_store] >= teacher[~in_store]).all()
    assert torch.equal(teacher_values_at(select_topk(teacher, V), idx), teacher)  # K' = V: exact everywhere


def test_pairwise_differences_against_loops() -> None:
    v = torch.tensor([[3.0, 1.0, -2.0, 0.5]])
    expected = [v[0, i] - v[0, j] for i, j in itertools.combinations(range(4), 2)]
    assert torch.allclose(pairwise_differences(v)[0], torch.stack(expected))


def _bild_reference(s: torch.Tensor, t: torch.Tensor, temp: float) -> torch.Tensor:
    out = []
    for srow, trow in zip(s, t, strict=True):
        ds = torch.stack([(srow[i] - srow[j]) / temp for i, j in itertools.combinations(range(len(srow)), 2)])
        dt = torch.stack([(trow[i] - trow[j]) / temp for i, j in itertools.combinations(range(len(trow)), 2)])
        p, q = torch.softmax(dt, 0), torch.softmax(ds, 0)
        out.append(sum(p[m] * (torch.log(p[m]) - torch.log(q[m])) for m in range(len(p))))
    return torch.stack(out)


def test_bild_divergence_against_a_brute_force_reference() -> None:
    s, t = _logits(1)[:, :8], _logits(2)[:, :8]
    assert torch.allclose(bild_divergence(s, t, 3.0), _bild_reference(s, t, 3.0), atol=1e-5)
    assert torch.allclose(bild_divergence(t, t), torch.zeros(4), atol=1e-6)
    assert torch.allclose(bild_divergence(s + 5.0, t), bild_divergence(s, t), atol=1e-5)  # differences only
    with pytest.raises(ValueError, match="at least 2"):
        bild_divergence(s[:, :1], t[:, :1])


@pytest.mark.parametrize("distance", ["huber", "mse", "kl"])
def test_pull_is_duets_loss(distance) -> None:
    s, t = _logits(3), _logits(4)
    stored = select_topk(t, 12)
    pull = directed_loss(s, stored, "pull", top_k=5, distance=distance)
    assert torch.allclose(pull, topk_distillation_loss(s, select_topk(t, 5), distance))


def test_pull_with_bild_uses_the_teachers_top_k() -> None:
    s, t = _logits(5), _logits(6)
    idx = t.topk(6, dim=-1).indices
    expected = _bild_reference(s.gather(-1, idx), t.gather(-1, idx), 3.0).mean()
    assert torch.allclose(directed_loss(s, select_topk(t, V), "pull", 6, "bild"), expected, atol=1e-5)


def test_push_gradient_lowers_the_student_logits_the_teacher_does_not_rank() -> None:
    """The student is sure of tokens 3 and 4 (the forgotten answer); the steered teacher ranks 7 first and puts 3
    and 4 low. One gradient step on the push term lowers exactly the student's logits at 3 and 4."""
    student = torch.zeros(1, V)
    student[0, [3, 4]] = torch.tensor([9.0, 8.0])
    teacher = torch.zeros(1, V)
    teacher[0, 7], teacher[0, [3, 4]] = 6.0, torch.tensor([-4.0, -5.0])
    s = student.clone().requires_grad_(True)
    loss = directed_loss(s, select_topk(teacher, V), "push", top_k=2, distance="huber")
    loss.backward()
    assert s.grad[0, 3] > 0 and s.grad[0, 4] > 0  # descent lowers them
    assert torch.count_nonzero(s.grad) == 2  # and touches nothing else
    pull = s.detach().clone().requires_grad_(True)
    directed_loss(pull, select_topk(teacher, V), "pull", top_k=2).backward()
    assert pull.grad[0, 7] < 0 and pull.grad[0, 3] == 0  # pull raises the teacher's top token, ignores 3 and 4


def test_push_with_few_stored_indices_pushes_less_than_with_the_full_teacher() -> None:
    s, t = _logits(7), _logits(8)
    exact = directed_loss(s, select_topk(t, V), "push", top_k=5, distance="mse", reduction="none")
    approx = directed_loss(s, select_topk(t, 5), "push", top_k=5, distance="mse", reduction="none")
    low = teacher_values_at(select_topk(t, 5), s.topk(5).indices) - t.gather(-1, s.topk(5).indices)
    assert (low >= 0).all() and not torch.allclose(exact, approx)  # the stand-in is an upper bound


def test_push_kl_matches_the_tail_bucket_kl_at_the_students_indices() -> None:
    s, t = _logits(9), _logits(10)
    idx = s.topk(4, dim=-1).indices
    from duet_plugin.core.losses import TopKTargets

    led = TopKTargets(idx, t.gather(-1, idx), t.logsumexp(-1))
    expected = topk_distillation_loss(s, led, "kl")
    assert torch.allclose(directed_loss(s, select_topk(t, V), "push", 4, "kl"), expected)


def test_bad_directions_and_sizes_are_rejected() -> None:
    s, stored = _logits(11), select_topk(_logits(12), 4)
    with pytest.raises(ValueError, match="direction must be"):
        directed_loss(s, stored, "sideways", 2)
    with pytest.raises(ValueError, match="exceeds the 4 stored"):
        directed_loss(s, stored, "pull", 5)
    with pytest.raises(ValueError, match=r"distance must be one of .*, got 'cosine'"):
        directed_loss(s, stored, "pull", 2, distance="cosine")
    with pytest.raises(ValueError, match="larger than the model's vocabulary"):
        directed_loss(s, stored, "push", V + 1)
