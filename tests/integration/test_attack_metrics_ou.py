"""Attack metrics inside OU: in-process on a tiny model (bit-identical afterwards), and through OU's eval.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

from duet_plugin.openunlearning.cpu_overrides import eval_overrides

pytestmark = pytest.mark.ou


def test_quantization_attack_measures_copies_and_leaves_the_model_identical(digest, ou_imported, tiny_model, tokenizer):
    from evals.metrics.base import unlearning_metric

    from duet_plugin.openunlearning.metrics.quantization import quantization_attack

    ids = torch.tensor([tokenizer("Gideon Kilbride was born in Valdomir.")["input_ids"]])
    reference = tiny_model(input_ids=ids).logits.detach()

    @unlearning_metric(name="logit_drift")
    def logit_drift(model, **kwargs):  # how far the (attacked) model's logits are from the original's
        with torch.no_grad():
            return {"agg_value": float((model(input_ids=ids).logits - reference).abs().max())}

    quantization_attack.set_pre_compute_metrics({"logit_drift": logit_drift})
    before = digest(tiny_model)
    cache: dict = {}
    out = quantization_attack.evaluate(
        tiny_model, "quantization_attack", cache, pre_compute={"logit_drift": {}}, bits=[8, 4], handler="x"
    )
    assert digest(tiny_model) == before
    drift = out["value_by_attack"]
    assert set(drift) == {"int8", "int4"} and 0 < drift["int8"]["logit_drift"] < drift["int4"]["logit_drift"]
    assert out["agg_value"] == drift["int4"]["logit_drift"] and cache["quantization_attack"] is out
    assert out["attack_info"]["int4"]["relative_weight_error"] > out["attack_info"]["int8"]["relative_weight_error"]
    with pytest.raises(ValueError, match="no metric to re-measure"):
        quantization_attack.evaluate(tiny_model, "quantization_attack", {}, bits=[4])
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bitz'\]"):
        quantization_attack.evaluate(tiny_model, "q", {}, pre_compute={"logit_drift": {}}, bitz=[4])


def _ou_eval_with(run_ou, workspace, metric: str) -> tuple[dict, dict]:
    """OU's eval.py (TOFU default suite + ``metric``) on the workspace model: its EVAL and SUMMARY logs."""
    out = workspace / "saves" / "eval" / metric
    run_ou(
        "eval",
        [
            "experiment=eval/tofu/default",
            f"+eval/tofu_metrics={metric}",
            f"task_name={metric}",
            *eval_overrides(workspace / "tiny"),
            f"paths.output_dir={out}",
        ],
    )
    return json.loads((out / "TOFU_EVAL.json").read_text()), json.loads((out / "TOFU_SUMMARY.json").read_text())


def test_quantization_attack_through_ou_eval(run_ou, workspace) -> None:
    logs, summary = _ou_eval_with(run_ou, workspace, "quantization_attack")
    attack = logs["quantization_attack"]
    assert set(attack["value_by_attack"]) == {"int8", "int4"}
    for variant in ("int8", "int4"):
        values = attack["value_by_attack"][variant]
        assert set(values) == {"forget_Q_A_ROUGE", "forget_Q_A_Prob"} and all(math.isfinite(v) for v in values.values())
    assert attack["agg_value"] == max(v["forget_Q_A_ROUGE"] for v in attack["value_by_attack"].values())
    assert "quantization_attack" in summary and "forget_Q_A_ROUGE" in summary  # OU's own metrics still run


def test_over_refusal_through_ou_eval(run_ou, workspace) -> None:
    from duet_plugin.core.attacks.refusal import refusal_rate

    logs = _ou_eval_with(run_ou, workspace, "over_refusal")[0]
    result = logs["over_refusal"]
    assert set(result["by_source"]) == {"real_authors", "world_facts"}
    # The rates are those of OU's own cached real-author / world-fact generations (logged by model_utility).
    for source, metric in (("real_authors", "ra_Q_A_ROUGE"), ("world_facts", "wf_Q_A_ROUGE")):
        gens = [v["generation"] for v in logs[metric]["value_by_index"].values()]
        assert result["by_source"][source]["n"] == len(gens) > 0
        assert result["by_source"][source]["refusal_rate"] == refusal_rate(gens)
