"""Relearning attack on a tiny model trained to state a fact and then unlearned by a method under our control."""

from __future__ import annotations

import copy

import pytest
import torch

from duet_plugin.core.attacks.relearn import (
    RelearnConfig,
    curve_summary,
    partition_indices,
    recovery,
    relearn_attack,
    relearn_copy,
    relearn_curves,
    seed_stats,
    worst_case,
    worst_point,
)

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


# -- step checkpoints, seeds, partitions ---------------------------------------------------------------------------


def test_checkpoints_measure_one_run_along_the_way(digest, models) -> None:
    """One run per (lr, seed) measured at each checkpoint: as many points as checkpoints, step 0 is the unattacked
    model, and the point at step k is the copy that relearn_copy makes in k steps."""
    fact, _, unlearned = models
    before = digest(unlearned)
    cfg = RelearnConfig(learning_rates=[1e-2], eval_at_steps=[5, 0, 2, 2])
    assert cfg.checkpoints == [0, 2, 5] and cfg.total_steps == 5
    curves = relearn_curves(unlearned, [fact], lambda m: _fact_prob(m, fact), cfg)
    assert digest(unlearned) == before
    curve = [p["value"] for p in curves[1e-2][0]]
    assert len(curve) == 3
    assert curve[0] == _fact_prob(unlearned, fact)  # step 0: the untouched copy, bit for bit the same score
    assert curve[2] > curve[0]  # relearning brings the fact back along the way
    for k, value in zip([2, 5], curve[1:], strict=True):
        alone = relearn_copy(unlearned, [fact], 1e-2, RelearnConfig(steps=k, learning_rates=[1e-2]))
        assert _fact_prob(alone, fact) == pytest.approx(value, abs=1e-6)
    given = relearn_curves(unlearned, [fact], lambda m: _fact_prob(m, fact), cfg, unattacked={"value": -1.0})
    assert given[1e-2][0][0] == {"value": -1.0} and given[1e-2][0][1:] == curves[1e-2][0][1:]


def test_seeds_give_one_run_each_and_are_aggregated(models) -> None:
    fact, _, unlearned = models
    other = {k: v.flip(1) for k, v in fact.items()}  # a second batch, so the seeded data order matters
    calls = []

    def data(seed: int):
        calls.append(seed)
        return [fact, other] if seed % 2 == 0 else [other, fact]

    cfg = RelearnConfig(learning_rates=[1e-3, 1e-2], eval_at_steps=[0, 1, 3], seeds=[0, 1, 2])
    curves = relearn_curves(unlearned, data, lambda m: {"p": _fact_prob(m, fact)}, cfg)
    assert calls == [0, 1, 2, 0, 1, 2] and set(curves) == {1e-3, 1e-2} and set(curves[1e-2]) == {0, 1, 2}
    summary = curve_summary(curves, cfg.checkpoints, "p")
    c = summary[1e-2]
    runs = [[p["p"] for p in curves[1e-2][s]] for s in (0, 1, 2)]
    assert c["steps"] == [0, 1, 3] and c["by_seed"] == {0: runs[0], 1: runs[1], 2: runs[2]}
    assert runs[0][0] == runs[1][0] == runs[2][0] and c["std"][0] == 0.0  # step 0 does not depend on the seed
    assert runs[0][2] != runs[1][2]  # the seed changes the run
    for i in range(3):
        column = [r[i] for r in runs]
        assert c["mean"][i] == pytest.approx(sum(column) / 3)
        assert c["min"][i] == min(column) and c["max"][i] == max(column)
        assert c["std"][i] == pytest.approx(float(torch.tensor(column, dtype=torch.float64).std()))
    worst = worst_point(summary)
    best_mean = max((m, lr, s) for lr, cc in summary.items() for m, s in zip(cc["mean"], cc["steps"], strict=True))
    assert (worst["mean"], worst["lr"], worst["step"]) == best_mean and worst["step"] > 0
    assert worst_point(summary, higher_is_worse=False)["step"] > 0  # step 0 (unattacked) is not an attack point


def test_seed_stats_ignore_missing_values() -> None:
    assert seed_stats([1.0, None, float("nan"), 3.0]) == {"mean": 2.0, "std": 2**0.5, "min": 1.0, "max": 3.0, "n": 2}
    assert seed_stats([0.5]) == {"mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5, "n": 1}
    assert seed_stats([None])["mean"] is None


def test_partition_by_question_is_disjoint_covering_and_seeded() -> None:
    relearn, heldout = partition_indices(10, 0.3, seed=4)
    assert not set(relearn) & set(heldout) and sorted(relearn + heldout) == list(range(10)) and len(heldout) == 3
    assert (relearn, heldout) == partition_indices(10, 0.3, seed=4)
    splits = {tuple(partition_indices(10, 0.3, seed=s)[1]) for s in range(20)}
    assert len(splits) > 5  # the seed picks the split


def test_partition_by_concept_keeps_each_author_whole() -> None:
    authors = [f"author{i // 4}" for i in range(20)]  # 5 authors x 4 questions
    for seed in range(10):
        relearn, heldout = partition_indices(20, 0.4, seed=seed, groups=authors)
        held = {authors[i] for i in heldout}
        assert held.isdisjoint(authors[i] for i in relearn) and len(held) == 2
        assert sorted(relearn + heldout) == list(range(20)) and len(heldout) == 8
        assert (relearn, heldout) == partition_indices(20, 0.4, seed=seed, groups=authors)
    interleaved = [f"a{i % 3}" for i in range(9)]  # the concept decides, not the position
    relearn, heldout = partition_indices(9, 0.5, seed=1, groups=interleaved)
    assert len({interleaved[i] for i in heldout}) == 1 or len({interleaved[i] for i in relearn}) == 1
    assert {interleaved[i] for i in heldout}.isdisjoint(interleaved[i] for i in relearn)


def test_partition_and_config_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 concepts"):
        partition_indices(4, 0.5, groups=["a"] * 4)
    with pytest.raises(ValueError, match="strictly between"):
        partition_indices(4, 1.0)
    with pytest.raises(ValueError, match="labels for"):
        partition_indices(4, 0.5, groups=["a", "b"])
    assert partition_indices(3, 0.01)[1] and partition_indices(3, 0.99)[0]  # each side keeps one item
    with pytest.raises(ValueError, match="eval_at_steps"):
        RelearnConfig(eval_at_steps=[0])
    with pytest.raises(ValueError, match="eval_at_steps"):
        RelearnConfig(eval_at_steps=[-1, 3])
    with pytest.raises(ValueError, match="seeds"):
        RelearnConfig(seeds=[1, 1])
    assert RelearnConfig(steps=7).checkpoints == [7] and RelearnConfig(seed=3).run_seeds == [3]
