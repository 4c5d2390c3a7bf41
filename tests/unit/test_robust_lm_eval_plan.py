"""RobustLMEvalEvaluator's framework-free side: the attacks block, the relearn batches, the summary key scheme."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from duet_plugin.core.attacks.lm_eval_plan import (
    AttackPlan,
    prefixed,
    relative_weight_change,
    relearn_batches,
    worst_over_variants,
)

DATA = {"WMDP_forget": {"handler": "PretrainingDataset", "args": {"hf_args": {"path": "text"}}}}
COLLATOR = {"DataCollatorForSupervisedDataset": {"handler": "DataCollatorForSupervisedDataset", "args": {}}}


def _relearn(**options):
    return {"relearn": {"datasets": DATA, "collators": COLLATOR, **options}}


@pytest.mark.parametrize("attacks", [None, {}, {"relearn": None, "quantization": None}])
def test_no_attacks_is_an_empty_plan(attacks) -> None:
    plan = AttackPlan.from_config(attacks)
    assert plan.variants == [] and plan.relearn is None and plan.quantization is None


def test_variants_and_what_determines_them() -> None:
    plan = AttackPlan.from_config(
        {**_relearn(steps=3, batch_size=2, learning_rates=[1e-5, "1e-4"]), "quantization": {"bits": [8, 4]}}
    )
    assert [v.name for v in plan.variants] == ["int8", "int4", "relearn_lr1e-05", "relearn_lr0.0001"]
    assert [v.attack for v in plan.variants] == ["quantization"] * 2 + ["relearn"] * 2
    assert plan.variants[1].settings == {"bits": 4, "group_size": None, "include": None, "exclude": None}
    relearn = plan.variants[3].settings
    assert relearn["lr"] == 1e-4 and relearn["steps"] == 3 and relearn["batch_size"] == 2 and relearn["seed"] == 0
    assert relearn["datasets"] == DATA  # other data means another attacked copy (the cache check compares settings)
    assert plan.relearn.config.learning_rates == [1e-5, 1e-4] and plan.relearn.batch_size == 2


def test_defaults_fill_in() -> None:
    plan = AttackPlan.from_config({**_relearn(), "quantization": {}})
    assert plan.quantization.bits == [8, 4] and plan.relearn.batch_size == 8
    assert plan.relearn.config.steps == 10 and plan.relearn.config.learning_rates == [1e-4, 1e-3]


@pytest.mark.parametrize(
    ("attacks", "message"),
    [
        ({"pruning": {}}, r"Unknown attack\(s\) \['pruning'\] under attacks; known: \['quantization', 'relearn'\]"),
        ({"quantization": {"bitz": [4]}}, r"attacks.quantization: unknown option\(s\) \['bitz'\]; it takes \['bits'"),
        ({"relearn": {"steps": 2}}, r"attacks.relearn has no data: set attacks.relearn.datasets"),
        ({"relearn": {"datasets": DATA}}, r"collators must hold exactly one OU collator config"),
        (_relearn(steps=0), r"attacks.relearn: relearn steps must be >= 1"),
        (_relearn(steps="many"), r"steps and seed are integers"),
        (_relearn(learning_rates=[1e-4, 0.0001]), r"learning_rates has duplicates"),
        (_relearn(batch_size=0), r"batch_size must be a positive integer, got 0"),
        ({"quantization": {"bits": [4, 1]}}, r"bits must be in 2\.\.16, got 1"),
        ({"quantization": {"bits": [4, "int3"]}}, r"Unknown quantization 'int3'"),
        ({"quantization": {"bits": []}}, r"bits must be a non-empty list"),
        ({"quantization": {"group_size": -8}}, r"group_size must be null or a positive integer"),
        ({"quantization": [8, 4]}, r"attacks.quantization must be a mapping of options"),
        ([{"quantization": {}}], r"attacks must be a mapping"),
    ],
)
def test_bad_config_is_refused_with_the_fix(attacks, message) -> None:
    with pytest.raises(ValueError, match=message):
        AttackPlan.from_config(attacks)


def _collate(rows):
    return {"input_ids": torch.tensor([[r] for r in rows])}


def test_relearn_batches_are_the_first_steps_of_a_seeded_shuffle() -> None:
    data = list(range(10))
    batches = relearn_batches(data, _collate, batch_size=3, steps=2, seed=0)
    assert len(batches) == 2 and all(b["input_ids"].shape == (3, 1) for b in batches)
    seen = torch.cat([b["input_ids"] for b in batches]).flatten().tolist()
    assert len(set(seen)) == 6 and seen != list(range(6))  # shuffled, without repeats
    again = relearn_batches(data, _collate, batch_size=3, steps=2, seed=0)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))
    other = relearn_batches(data, _collate, batch_size=3, steps=2, seed=1)
    assert any(not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, other, strict=True))


def test_relearn_batches_concatenate_datasets_and_stop_at_the_data() -> None:
    batches = relearn_batches({"forget": [0, 1, 2], "retain": [10, 11]}, _collate, batch_size=2, steps=50, seed=0)
    assert sorted(torch.cat([b["input_ids"] for b in batches]).flatten().tolist()) == [0, 1, 2, 10, 11]
    assert len(batches) == 3  # one pass; relearn_copy cycles through them
    with pytest.raises(ValueError, match="relearn data is empty"):
        relearn_batches({"forget": [], "retain": []}, _collate, batch_size=2, steps=1, seed=0)


def test_relative_weight_change() -> None:
    model = torch.nn.Linear(4, 3)
    same = copy.deepcopy(model)
    assert relative_weight_change(model, same) == 0.0
    with torch.no_grad():
        same.weight.mul_(1.1)
        same.bias.mul_(1.1)
    assert relative_weight_change(model, same) == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(ValueError, match="not copies of one model"):
        relative_weight_change(model, torch.nn.Sequential(torch.nn.Linear(4, 3)))


def test_prefixed() -> None:
    assert prefixed({"wmdp_cyber/acc": 0.3}, "int4") == {"int4/wmdp_cyber/acc": 0.3}


SUMMARY = {
    "wmdp_cyber/acc": 0.30,
    "wmdp_cyber/acc_stderr": 0.01,
    "mmlu/acc": 0.50,
    "mmlu/acc_stderr": 0.02,
    "lambada/perplexity": 20.0,
    "int4/wmdp_cyber/acc": 0.40,
    "int4/wmdp_cyber/acc_stderr": 0.04,
    "int4/mmlu/acc": 0.45,
    "int4/mmlu/acc_stderr": 0.05,
    "int4/lambada/perplexity": 25.0,
    "relearn_lr0.001/wmdp_cyber/acc": 0.55,
    "relearn_lr0.001/wmdp_cyber/acc_stderr": 0.06,
    "relearn_lr0.001/mmlu/acc": 0.48,
    "relearn_lr0.001/mmlu/acc_stderr": 0.07,
    "relearn_lr0.001/lambada/perplexity": 22.0,
}
BASE = ["wmdp_cyber/acc", "wmdp_cyber/acc_stderr", "mmlu/acc", "mmlu/acc_stderr", "lambada/perplexity"]
VARIANTS = ["int4", "relearn_lr0.001"]


def test_worst_case_is_the_defenders_worst_per_key() -> None:
    worst, chosen = worst_over_variants(SUMMARY, BASE, VARIANTS, higher_is_better={"lambada/perplexity": False})
    assert worst["worst/wmdp_cyber/acc"] == 0.55 and chosen["wmdp_cyber/acc"] == "relearn_lr0.001"  # forget: max
    assert worst["worst/mmlu/acc"] == 0.45 and chosen["mmlu/acc"] == "int4"  # utility: min
    assert worst["worst/lambada/perplexity"] == 25.0  # lower is better, not a forget task: the highest
    assert worst["worst/wmdp_cyber/acc_stderr"] == 0.06 and worst["worst/mmlu/acc_stderr"] == 0.05  # follow the pick
    assert set(worst) == {f"worst/{k}" for k in BASE}


def test_forget_tasks_are_configurable() -> None:
    worst, _ = worst_over_variants(SUMMARY, BASE, VARIANTS, forget_tasks=["mmlu"])
    assert worst["worst/mmlu/acc"] == 0.48 and worst["worst/wmdp_cyber/acc"] == 0.40


def test_missing_or_non_numeric_values_are_left_out() -> None:
    summary = {
        "wmdp_cyber/acc": 0.3,
        "wmdp_cyber/acc_stderr": "N/A",
        "int4/wmdp_cyber/acc": math.nan,
        "int4/wmdp_cyber/acc_stderr": "N/A",
        "relearn_lr0.001/wmdp_cyber/acc": 0.2,
        "relearn_lr0.001/wmdp_cyber/acc_stderr": "N/A",
        "mmlu/acc": 0.5,
    }
    worst, chosen = worst_over_variants(summary, ["wmdp_cyber/acc", "wmdp_cyber/acc_stderr", "mmlu/acc"], VARIANTS)
    assert worst == {"worst/wmdp_cyber/acc": 0.2, "worst/wmdp_cyber/acc_stderr": "N/A"}
    assert chosen == {"wmdp_cyber/acc": "relearn_lr0.001", "wmdp_cyber/acc_stderr": "relearn_lr0.001"}
    nan_only = {"wmdp_cyber/acc": 0.3, "int4/wmdp_cyber/acc": math.nan}
    assert worst_over_variants(nan_only, ["wmdp_cyber/acc"], ["int4"]) == ({}, {})
