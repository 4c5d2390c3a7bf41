"""UNDO's shrink-and-perturb: exact shrink, noise statistics, exclusions, seeding, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from duet_plugin.core.noise import shrink_and_perturb


def test_one_dimensional_parameters_are_shrunk_exactly(tiny_model) -> None:
    model = copy.deepcopy(tiny_model)
    before = dict(model.named_parameters())
    before = {n: p.clone() for n, p in before.items()}
    changed = shrink_and_perturb(model, alpha=0.25, beta=0.5, exclude=())
    after = dict(model.named_parameters())
    one_d = [n for n in changed if after[n].ndim == 1]
    assert one_d
    for n in one_d:
        assert torch.equal(after[n], before[n] * 0.75)


def test_two_dimensional_noise_has_the_xavier_statistics() -> None:
    layer = torch.nn.Linear(400, 300, bias=False)
    torch.nn.init.zeros_(layer.weight)
    shrink_and_perturb(layer, alpha=0.5, beta=0.4, exclude=())
    w = layer.weight
    bound = math.sqrt(6 / (400 + 300))
    expected_std = 0.5 * 0.4 * bound / math.sqrt(3)  # alpha * beta * U(-a, a)
    assert abs(w.mean().item()) < 0.05 * expected_std
    assert w.std().item() == pytest.approx(expected_std, rel=0.02)
    assert w.abs().max().item() <= 0.5 * 0.4 * bound + 1e-7


def test_shrink_keeps_the_mean_scaled() -> None:
    layer = torch.nn.Linear(200, 200, bias=False)
    torch.nn.init.constant_(layer.weight, 2.0)
    shrink_and_perturb(layer, alpha=0.3, beta=0.1, exclude=())
    assert layer.weight.mean().item() == pytest.approx(0.7 * 2.0, abs=1e-3)


def test_norms_are_excluded_by_default_and_seeds_reproduce(tiny_model) -> None:
    a, b, c = (copy.deepcopy(tiny_model) for _ in range(3))
    changed = shrink_and_perturb(a, alpha=0.6, beta=0.1, seed=1)
    shrink_and_perturb(b, alpha=0.6, beta=0.1, seed=1)
    shrink_and_perturb(c, alpha=0.6, beta=0.1, seed=2)
    norms = [n for n, _ in tiny_model.named_parameters() if "norm" in n]
    assert norms and not set(norms) & set(changed)
    original = dict(tiny_model.named_parameters())
    for n, p in a.named_parameters():
        if n in norms:
            assert torch.equal(p, original[n])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_alpha_zero_changes_nothing(tiny_model) -> None:
    model = copy.deepcopy(tiny_model)
    shrink_and_perturb(model, alpha=0.0, beta=1.0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), tiny_model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 1.5, "beta": 0.1}, "alpha"),
        ({"alpha": 0.5, "beta": -1.0}, "beta"),
        ({"alpha": 0.5, "beta": 0.1, "include": ["no_such_module"]}, "No parameter matches"),
    ],
)
def test_bad_input_is_rejected_before_any_change(tiny_model, kwargs, message) -> None:
    model = copy.deepcopy(tiny_model)
    with pytest.raises(ValueError, match=message):
        shrink_and_perturb(model, **kwargs)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), tiny_model.parameters(), strict=True))
