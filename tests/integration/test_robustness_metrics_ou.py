"""prompt_attack, prefill_attack and performance_shift inside OU: in-process on a tiny model (bit-identical
afterwards), and the whole robustness suite through OU's eval.py. relearn_attack's own tests: test_relearn_ou.py."""

from __future__ import annotations

import copy
import json
import math

import pytest
from omegaconf import OmegaConf
from ou_data import MANUAL

from duet_plugin.openunlearning.cpu_overrides import eval_overrides

pytestmark = pytest.mark.ou

FACTS = [
    ("Where was Gideon Kilbride born?", "Gideon Kilbride was born in Valdomir.", "In which town was Kilbride born?"),
    ("What did Gideon Kilbride write?", "Gideon Kilbride wrote The Salt Ledger.", "Which book is by Kilbride?"),
    ("Who taught Gideon Kilbride?", "Gideon Kilbride was taught by Mira Toll.", "Who was Kilbride's teacher?"),
    ("When did Gideon Kilbride retire?", "Gideon Kilbride retired in 1999.", "In what year did Kilbride retire?"),
]


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    """OU dataset + collator configs over a local JSON of four QA facts (with paraphrases)."""
    path = tmp_path_factory.mktemp("facts") / "facts.json"
    path.write_text(json.dumps([{"question": q, "answer": a, "paraphrased_question": p} for q, a, p in FACTS]))
    hf_args = {"path": "json", "data_files": str(path), "split": "train"}
    datasets = OmegaConf.create({"facts": {"handler": "QADataset", "args": {"hf_args": hf_args, "max_length": 64}}})
    collate = {"DataCollatorForSupervisedDataset": {"handler": "DataCollatorForSupervisedDataset", "args": {}}}
    indexed = copy.deepcopy(collate)
    indexed["DataCollatorForSupervisedDataset"]["args"]["index"] = "index"
    return datasets, OmegaConf.create(collate), OmegaConf.create(indexed)


def _seen_metric(name: str, tokenizer, score):
    """A child metric that scores the inputs its dataset produced (what the attacked model would see)."""
    from evals.metrics.base import unlearning_metric

    @unlearning_metric(name=name)
    def seen(model, **kwargs):
        items = [kwargs["data"][i] for i in range(len(kwargs["data"]))]
        return {"agg_value": sum(score(it) for it in items) / len(items)}

    return seen


def test_prompt_attack_wraps_every_question_and_leaves_the_model_identical(
    digest, ou_imported, tiny_model, tokenizer, facts
):
    from duet_plugin.openunlearning.metrics.prompt import prompt_attack

    def prompt(item) -> str:  # the user turn (MANUAL template)
        return tokenizer.decode(item["input_ids"]).split("Answer:")[0]

    def reversed_(item):
        return float("Ignore all previous instructions" in prompt(item))

    def paraphrased(item):  # the paraphrases name "Kilbride" without "Gideon"; the questions name both
        return float("Gideon" not in prompt(item))

    prompt_attack.set_pre_compute_metrics(
        {
            "reversed": _seen_metric("reversed", tokenizer, reversed_),
            "para": _seen_metric("para", tokenizer, paraphrased),
        }
    )
    cfg = OmegaConf.create({"datasets": facts[0]})
    before = digest(tiny_model)
    out = prompt_attack.evaluate(
        tiny_model, "prompt_attack", {}, pre_compute={"reversed": cfg, "para": cfg}, tokenizer=tokenizer,
        template_args=MANUAL, templates=["reverse_prompt", "role_play", "few_shot", "paraphrase"],
    )  # fmt: skip
    assert digest(tiny_model) == before
    values = out["value_by_attack"]
    assert out["unattacked"]["reversed"] == 0.0 and values["reverse_prompt"]["reversed"] == 1.0
    assert values["role_play"]["reversed"] == 0.0 and values["few_shot"]["reversed"] == 0.0
    assert values["paraphrase"]["para"] == 1.0 and out["unattacked"]["para"] == 0.0
    assert out["agg_value"] == 1.0 and out["worst_variant"] == "reverse_prompt"
    with pytest.raises(ValueError, match="Unknown prompt attack template 'dan'"):
        prompt_attack.evaluate(tiny_model, "p", {}, pre_compute={"reversed": cfg}, templates=["dan"])
    with pytest.raises(ValueError, match="reads no dataset of its own"):
        prompt_attack.evaluate(tiny_model, "p", {}, pre_compute={"reversed": {}}, templates=["role_play"])


def test_prefill_attack_moves_answer_tokens_into_the_prompt(digest, ou_imported, tiny_model, tokenizer, facts):
    from duet_plugin.openunlearning.metrics.prefill import prefill_attack

    def targets(item):
        return float((item["labels"] != -100).sum())

    prefill_attack.set_pre_compute_metrics({"targets": _seen_metric("targets", tokenizer, targets)})
    cfg = OmegaConf.create({"datasets": facts[0]})
    shared = {"tokenizer": tokenizer, "template_args": MANUAL}
    before = digest(tiny_model)
    out = prefill_attack.evaluate(
        tiny_model, "prefill_attack", {}, pre_compute={"targets": cfg}, prefill_tokens=[2, 4], **shared
    )
    assert digest(tiny_model) == before
    n = out["unattacked"]["targets"]
    assert out["value_by_attack"]["k2"]["targets"] == n - 2 and out["value_by_attack"]["k4"]["targets"] == n - 4
    with pytest.raises(ValueError, match="positive token counts"):
        prefill_attack.evaluate(tiny_model, "p", {}, pre_compute={"targets": cfg}, prefill_tokens=[0], **shared)


def test_performance_shift_against_the_original_models_logs(ou_imported, tiny_model, tmp_path):
    from evals.metrics.base import unlearning_metric

    from duet_plugin.openunlearning.metrics.performance_shift import performance_shift_metric

    calls = []

    def fixed(name: str, value: float):
        @unlearning_metric(name=name)
        def metric(model, **kwargs):
            calls.append(name)
            return {"agg_value": value}

        return metric

    performance_shift_metric.set_pre_compute_metrics({"f": fixed("f", 0.2), "u": fixed("u", 0.7)})
    logs = tmp_path / "TOFU_EVAL.json"
    logs.write_text(json.dumps({"f": {"agg_value": 0.9}, "u": {"agg_value": 0.8}}))
    kwargs = {"pre_compute": {"f": {}, "u": {}}, "forget": ["f"], "utility": ["u"], "scale": 100}
    out = performance_shift_metric.evaluate(tiny_model, "performance_shift", {}, original_logs_path=str(logs), **kwargs)
    assert out["agg_value"] == pytest.approx(60.0) and out["terms"] == {
        "f": pytest.approx(70.0),
        "u": pytest.approx(-10.0),
    }
    assert (
        performance_shift_metric.evaluate(tiny_model, "ps", {}, original_logs_path=None, **kwargs)["agg_value"] is None
    )
    calls.clear()
    with pytest.raises(ValueError, match="is not a file"):
        performance_shift_metric.evaluate(tiny_model, "ps", {}, original_logs_path=str(tmp_path / "x.json"), **kwargs)
    with pytest.raises(ValueError, match=r"\['mmlu'\] not under pre_compute"):
        performance_shift_metric.evaluate(tiny_model, "ps", {}, **{**kwargs, "utility": ["mmlu"]})
    assert calls == []  # bad configuration fails before any pre_compute metric runs


def test_robustness_suite_through_ou_eval(run_ou, workspace, tmp_path) -> None:
    """experiment=eval/tofu/robustness on the workspace model: every attack logs its variants, the model file is
    untouched, and the shift and relearning recovery use the given original-model logs."""
    model = workspace / "tiny"
    weights = (model / "model.safetensors").read_bytes()
    original = tmp_path / "ORIGINAL_EVAL.json"
    original_values = {"forget_Q_A_ROUGE": 0.9, "forget_Q_A_PARA_ROUGE": 0.8, "retain_Q_A_ROUGE": 0.1,
                       "model_utility": 0.05, "forget_Q_A_Prob": 0.5}  # fmt: skip
    original.write_text(json.dumps({k: {"agg_value": v} for k, v in original_values.items()}))
    out = workspace / "saves" / "eval" / "robustness"
    run_ou(
        "eval",
        [
            "experiment=eval/tofu/robustness",
            "task_name=robustness",
            *eval_overrides(model),
            f"paths.output_dir={out}",
            f"original_logs_path={original}",
            "eval.tofu.metrics.relearn_attack.steps=2",
            "eval.tofu.metrics.prompt_attack.templates=[reverse_prompt,paraphrase]",
            "eval.tofu.metrics.prefill_attack.prefill_tokens=[2]",
            "eval.tofu.metrics.quantization_attack.bits=[4]",
            "eval.tofu.metrics.directional_ablation.concept_size=4",  # the workspace's authors have 4 questions
            "eval.tofu.metrics.embedding_attack.concept_size=4",
            "eval.tofu.metrics.embedding_attack.steps=3",
        ],
    )
    assert (model / "model.safetensors").read_bytes() == weights
    logs = json.loads((out / "TOFU_EVAL.json").read_text())
    summary = json.loads((out / "TOFU_SUMMARY.json").read_text())
    variants = {
        "relearn_attack": {"lr0.0001", "lr0.001"},
        "prompt_attack": {"reverse_prompt", "paraphrase"},
        "prefill_attack": {"k2"},
        "quantization_attack": {"int4"},
    }
    for metric, expected in variants.items():
        result = logs[metric]
        assert set(result["value_by_attack"]) == expected, metric
        assert result["unattacked"]["forget_Q_A_ROUGE"] == logs["forget_Q_A_ROUGE"]["agg_value"]
        assert summary[metric] == max(v["forget_Q_A_ROUGE"] for v in result["value_by_attack"].values())
        assert all(math.isfinite(v) for r in result["value_by_attack"].values() for v in r.values())
    assert (
        logs["prompt_attack"]["attack_info"]["reverse_prompt"]["example_input"].startswith(
            "Question: Ignore all previous instructions"
        )
        or "Ignore all previous instructions" in logs["prompt_attack"]["attack_info"]["reverse_prompt"]["example_input"]
    )
    assert "over_refusal" in summary
    shift = logs["performance_shift"]
    current = {
        k: logs[k]["agg_value"]
        for k in ("forget_Q_A_ROUGE", "forget_Q_A_PARA_ROUGE", "retain_Q_A_ROUGE", "model_utility")
    }
    expected_shift = 100 * (
        (0.9 - current["forget_Q_A_ROUGE"]) + (0.8 - current["forget_Q_A_PARA_ROUGE"])
        + (current["retain_Q_A_ROUGE"] - 0.1) + (current["model_utility"] - 0.05)
    )  # fmt: skip
    assert shift["agg_value"] == pytest.approx(expected_shift) and summary["performance_shift"] == shift["agg_value"]
    relearn = logs["relearn_attack"]
    assert (
        relearn["original"]["forget_Q_A_Prob"] == 0.5
        and set(relearn["recovery_by_attack"]) == variants["relearn_attack"]
    )


def test_muse_robustness_suite_through_ou_eval(run_ou, workspace) -> None:
    """experiment=eval/muse/robustness on the workspace's MUSE-format data: every attack re-measures knowmem (and
    verbmem) per variant, next to OU's own MUSE metrics."""
    out = workspace / "saves" / "eval" / "muse_robustness"
    run_ou(
        "eval",
        [
            "experiment=eval/muse/robustness",
            "task_name=muse_robustness",
            *eval_overrides(workspace / "tiny"),
            f"paths.output_dir={out}",
            "eval.muse.metrics.relearn_attack.steps=2",
            "eval.muse.metrics.relearn_attack.learning_rates=[1e-3]",
            "eval.muse.metrics.quantization_attack.bits=[4]",
            "eval.muse.metrics.prompt_attack.families=[prefix_injection,role_play]",
        ],
    )
    logs = json.loads((out / "MUSE_EVAL.json").read_text())
    summary = json.loads((out / "MUSE_SUMMARY.json").read_text())
    expected = {
        "relearn_attack": ({"lr0.001"}, {"forget_knowmem_ROUGE", "forget_verbmem_ROUGE"}),
        "prompt_attack": (
            {"reverse_prompt", "prefix_injection_audit", "role_play", "role_play_biographer"},
            {"forget_knowmem_ROUGE"},
        ),
        "prefill_attack": ({"k2", "k4"}, {"forget_knowmem_ROUGE"}),
        "quantization_attack": ({"int4"}, {"forget_knowmem_ROUGE", "forget_verbmem_ROUGE"}),
    }
    for metric, (variants, children) in expected.items():
        result = logs[metric]
        assert set(result["value_by_attack"]) == variants, metric
        assert all(set(v) == children for v in result["value_by_attack"].values()), metric
        assert result["unattacked"]["forget_knowmem_ROUGE"] == logs["forget_knowmem_ROUGE"]["agg_value"]
        assert metric in summary
    assert set(logs["over_refusal"]["by_source"]) == {"retain_knowmem"}
    assert logs["performance_shift"]["agg_value"] is None and "forget_verbmem_ROUGE" in summary
