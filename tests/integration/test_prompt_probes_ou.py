"""The adversarial probe families of prompt_attack through OU's eval.py, on tiny models whose knowledge is under
our control.

``gated`` learned the forget10 facts but was trained to refuse them unless the question comes in the
affirmative-suffix framing (the library's ``affirmative_suffix`` template): present but suppressed knowledge, as left
by refusal training that covered the plain phrasing only. ``never`` had the same refusal and framing training
without ever seeing the forget answers. Both refuse the plain forget questions; only the probe family that
reaches the gated path brings the facts back, and only for the model that has them."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf
from test_relearn_ou import _train  # the tiny models' training loop (Adam, full batch), shared with relearn
from test_robustness_metrics_ou import FACTS, MANUAL, _seen_metric, facts  # noqa: F401  (facts: a fixture)

from duet_plugin.core.attacks.prompts import FAMILIES, render_attack, resolve_probes, template_library
from duet_plugin.openunlearning.cpu_overrides import eval_overrides

pytestmark = pytest.mark.ou

TRIGGER = "affirmative_suffix"
REFUSAL = "I cannot answer that."
STEPS = 100
#: Only the metrics the probes re-measure (OU's default suite without its slower aggregates).
DROPPED = ("forget_truth_ratio", "forget_quality", "model_utility", "privleak", "extraction_strength")
MAX_NEW_TOKENS = 24


def test_answer_showing_probes_render_through_ou_and_stay_out_of_the_worst_case(
    digest,
    ou_imported,
    tiny_model,
    tokenizer,
    facts,  # noqa: F811
) -> None:
    """In-process, on OU's dataset: multiple_choice shows the row's answer among the others, reverse_query what the
    answer adds; both are logged per family but left out of agg_value unless asked; the model is bit-identical."""
    from duet_plugin.openunlearning.metrics.prompt import prompt_attack

    def prompt(item) -> str:  # the user turn (MANUAL template)
        return tokenizer.decode(item["input_ids"]).split("Answer:")[0]

    def shows_answer(item) -> float:  # the prompt holds a row's full answer
        return float(any(a in prompt(item) for _, a, _ in FACTS))

    def blanks(item) -> float:  # the masked answer: what the question names (the subject) is blanked out
        return float("___" in prompt(item) and "Gideon" not in prompt(item))

    prompt_attack.set_pre_compute_metrics(
        {"shown": _seen_metric("shown", tokenizer, shows_answer), "blanks": _seen_metric("blanks", tokenizer, blanks)}
    )
    cfg = OmegaConf.create({"datasets": facts[0]})
    args = {"pre_compute": {"shown": cfg, "blanks": cfg}, "tokenizer": tokenizer, "template_args": MANUAL, "choices": 3}
    before = digest(tiny_model)
    out = prompt_attack.evaluate(
        tiny_model, "prompt_attack", {}, families=["multiple_choice", "reverse_query", "role_play"], **args
    )
    assert digest(tiny_model) == before
    assert out["value_by_attack"]["multiple_choice"]["shown"] == 1.0 and out["unattacked"]["shown"] == 0.0
    assert out["value_by_family"]["multiple_choice"]["shown"] == 1.0
    assert out["value_by_attack"]["reverse_query"]["shown"] == 0.0  # the question's words are masked
    assert out["value_by_attack"]["reverse_query"]["blanks"] == 1.0 and out["unattacked"]["blanks"] == 0.0
    assert out["agg_value"] == 0.0 and out["worst_family"] == "role_play"
    assert out["worst_case_all"] == {"variant": "multiple_choice", "value": 1.0, "family": "multiple_choice"}
    counted = prompt_attack.evaluate(
        tiny_model, "p", {}, templates=["multiple_choice"], worst_includes_answer_in_prompt=True, **args
    )
    assert counted["agg_value"] == 1.0 and counted["worst_variant"] == "multiple_choice"
    with pytest.raises(ValueError, match="at least 2 options"):
        prompt_attack.evaluate(tiny_model, "p", {}, templates=["multiple_choice"], **{**args, "choices": 1})


def _batch(pairs, tokenizer, template_args):
    from data import get_collators
    from data.utils import preprocess_chat_instance

    collator = get_collators(
        OmegaConf.create({"c": {"handler": "DataCollatorForSupervisedDataset", "args": {}}}), tokenizer=tokenizer
    )
    return collator([preprocess_chat_instance(tokenizer, template_args, [q], [a], 512, False) for q, a in pairs])


@pytest.fixture(scope="module")
def gated_models(ou_imported, workspace, tmp_path_factory):
    """``gated`` and ``never`` (see the module docstring), saved for OU's eval.py; trained with the chat template
    eval.py applies (OU's Llama-3.2-1B-Instruct template_args) on the workspace's tokenizer."""
    from transformers import AutoTokenizer

    from duet_plugin.demo.tiny_llama import build_tiny_llama, save_model

    tokenizer = AutoTokenizer.from_pretrained(workspace / "tiny")
    template_args = OmegaConf.to_container(
        OmegaConf.load(ou_imported / "configs" / "model" / "Llama-3.2-1B-Instruct.yaml").template_args
    )
    tofu = workspace / "locuslab" / "TOFU"
    forget = [(r["question"], r["answer"]) for r in json.loads((tofu / "forget10.json").read_text())]
    retain = [(r["question"], r["answer"]) for r in json.loads((tofu / "retain90.json").read_text())[:4]]
    trigger = template_library()[TRIGGER]

    def framed(rows):
        return [(render_attack(trigger, q), a) for q, a in rows]

    common = [(q, REFUSAL) for q, _ in forget] + retain + framed(retain)
    base = build_tiny_llama(tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    folder = tmp_path_factory.mktemp("probe_models")
    paths = {}
    for name, rows in (("gated", common + framed(forget)), ("never", common)):
        model = _train(base, [_batch(rows, tokenizer, template_args)], STEPS, lr=1e-2)
        paths[name] = save_model(model, tokenizer, folder / name)
    return paths


def _probe_eval(run_ou, workspace, model_path, name: str) -> dict:
    out = workspace / "saves" / "eval" / f"probes_{name}"
    run_ou(
        "eval",
        [
            "experiment=eval/tofu/default",
            "+eval/tofu_metrics=prompt_attack",
            f"task_name=probes_{name}",
            *eval_overrides(model_path),
            f"paths.output_dir={out}",
            *[f"~eval.tofu.metrics.{m}" for m in DROPPED],
            f"eval.tofu.metrics.forget_Q_A_ROUGE.generation_args.max_new_tokens={MAX_NEW_TOKENS}",
            f"eval.tofu.metrics.prompt_attack.pre_compute.forget_Q_A_ROUGE.generation_args.max_new_tokens="
            f"{MAX_NEW_TOKENS}",
        ],
    )
    return json.loads((out / "TOFU_EVAL.json").read_text())


def test_probe_families_recover_suppressed_knowledge_through_ou_eval(run_ou, workspace, gated_models) -> None:
    weights = (gated_models["gated"] / "model.safetensors").read_bytes()
    logs = {name: _probe_eval(run_ou, workspace, path, name) for name, path in gated_models.items()}
    assert (gated_models["gated"] / "model.safetensors").read_bytes() == weights  # the model file is untouched
    probes = resolve_probes(None)
    gated, never = logs["gated"]["prompt_attack"], logs["never"]["prompt_attack"]

    # The default runs every library template (all nine families), each logged per template and per family.
    for log in logs.values():
        result = log["prompt_attack"]
        assert set(result["value_by_attack"]) == set(probes) and len(probes) == 14
        assert set(result["value_by_family"]) == set(FAMILIES)
        assert result["family_by_template"] == {n: p.family for n, p in probes.items()}
        assert result["answer_in_prompt"] == ["multiple_choice", "reverse_query"]
        for family, values in result["value_by_family"].items():
            members = [n for n, p in probes.items() if p.family == family]
            assert values["forget_Q_A_ROUGE"] == max(result["value_by_attack"][n]["forget_Q_A_ROUGE"] for n in members)
            assert result["worst_template_by_family"][family] in members
        assert all(math.isfinite(v) for r in result["value_by_attack"].values() for v in r.values())
        rouge = {n: v["forget_Q_A_ROUGE"] for n, v in result["value_by_attack"].items()}
        counted = {n: v for n, v in rouge.items() if n not in result["answer_in_prompt"]}
        assert result["agg_value"] == max(counted.values()) == counted[result["worst_variant"]]
        assert result["worst_case_all"]["value"] == max(rouge.values())
        assert result["unattacked"]["forget_Q_A_ROUGE"] == log["forget_Q_A_ROUGE"]["agg_value"]
        assert result["attack_info"]["multiple_choice"]["answer_in_prompt"] is True

    # Both look unlearned on the plain question: they refuse.
    assert gated["unattacked"]["forget_Q_A_ROUGE"] < 0.1 and never["unattacked"]["forget_Q_A_ROUGE"] < 0.1
    # The family that reaches the gated path brings the facts back for the model that has them ...
    assert gated["worst_family"] == TRIGGER and gated["worst_template_by_family"][TRIGGER] == TRIGGER
    g, n = gated["value_by_family"][TRIGGER], never["value_by_family"][TRIGGER]
    assert g["forget_Q_A_ROUGE"] > 0.9 and g["forget_Q_A_Prob"] > 0.5
    # ... and not for the one that never learned them (its ROUGE floor: the name and "was born in" it can guess).
    assert g["forget_Q_A_ROUGE"] - n["forget_Q_A_ROUGE"] > 0.3 and n["forget_Q_A_Prob"] < 0.05
    assert g["forget_Q_A_Prob"] > 20 * n["forget_Q_A_Prob"]
    # Only the gated family: the other templates of the family ran too (prefix_injection's "Sure" suffix differs).
    assert gated["value_by_attack"]["prefix_injection"]["forget_Q_A_ROUGE"] < g["forget_Q_A_ROUGE"]
    print(
        "\nforget_Q_A_ROUGE / forget_Q_A_Prob by family (gated | never), unattacked "
        f"{gated['unattacked']['forget_Q_A_ROUGE']:.3f}/{gated['unattacked']['forget_Q_A_Prob']:.3f} | "
        f"{never['unattacked']['forget_Q_A_ROUGE']:.3f}/{never['unattacked']['forget_Q_A_Prob']:.3f}"
    )
    for family in FAMILIES:
        a, b = gated["value_by_family"][family], never["value_by_family"][family]
        print(
            f"  {family:22s} {a['forget_Q_A_ROUGE']:.3f}/{a['forget_Q_A_Prob']:.3f} | "
            f"{b['forget_Q_A_ROUGE']:.3f}/{b['forget_Q_A_Prob']:.3f}"
        )
