"""Relearning attack on a tiny model trained to state a fact and then unlearned by a method under our control."""

from __future__ import annotations

import copy

import pytest
import torch

from duet_plugin.core.attacks.relearn import RelearnConfig, recovery, relearn_attack, relearn_copy, worst_case

FACT = "Gideon Kilbride was born in Valdomir."


def _fact_prob(model: torch.nn.Module, batch) -> float:
    """Mean per-token probability of the fact under the model."""
    with torch.no_grad():
        return float(torch.exp(-model(**batch).loss.detach()))


def _steps(model, batch, n: int, lr: float, sign: float) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(n):
        (sign * model(**batch).loss).backward()
        opt.step()
        opt.zero_grad()


@pytest.fixture(scope="module")
def models(tiny_model, tokenizer):
    ids = torch.tensor([tokenizer(FACT)["input_ids"]])
    fact = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    original = copy.deepcopy(tiny_model).train()
    _steps(original, fact, 60, lr=1e-2, sign=1.0)  # learn the fact
    unlearned = copy.deepcopy(original)
    _steps(unlearned, fact, 3, lr=1e-2, sign=-1.0)  # gradient ascent until it is gone
    return fact, original.eval(), unlearned.eval()


def test_fixture_learns_then_forgets(models) -> None:
    fact, original, unlearned = models
    assert _fact_prob(original, fact) > 0.9 and _fact_prob(unlearned, fact) < 0.05


def test_relearning_brings_the_fact_back_and_leaves_the_model_untouched(digest, models) -> None:
    fact, original, unlearned = models
    before = digest(unlearned)
    cfg = RelearnConfig(steps=5, learning_rates=[1e-4, 1e-2])
    scores = relearn_attack(unlearned, [fact], lambda m: _fact_prob(m, fact), cfg)
    assert digest(unlearned) == before
    assert scores[1e-2] > 0.5 > scores[1e-4]  # the strong learning rate recovers it, the weak one does not
    worst = worst_case(scores)
    assert worst == scores[1e-2]
    r = recovery(worst, _fact_prob(unlearned, fact), _fact_prob(original, fact))
    assert 0.5 < r <= 1.1


def test_copy_is_deterministic_per_seed(digest, models) -> None:
    fact, _, unlearned = models
    cfg = RelearnConfig(steps=3, learning_rates=[1e-2])
    a, b = relearn_copy(unlearned, [fact], 1e-2, cfg), relearn_copy(unlearned, [fact], 1e-2, cfg)
    assert digest(a) == digest(b) != digest(unlearned)


def test_config_and_helpers_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="steps"):
        RelearnConfig(steps=0)
    with pytest.raises(ValueError, match="learning_rates"):
        RelearnConfig(learning_rates=[])
    with pytest.raises(ValueError, match="no data"):
        relearn_copy(torch.nn.Linear(2, 2), [], 1e-3, RelearnConfig())
    assert recovery(0.5, 0.2, None) is None and recovery(0.5, 0.2, 0.2) is None
    assert recovery(0.5, 0.0, 1.0) == 0.5
    assert worst_case({1: 0.2, 2: float("nan"), 3: 0.4}) == 0.4 and worst_case({1: 0.2, 3: 0.4}, False) == 0.2
