"""logit_lens inside OU: in-process against OU's own ``probability`` metric (the last layer is what OU scores), with
several datasets, composed for TOFU and MUSE, and through OU's eval.py on the workspace model."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from ou_data import MANUAL, folder_digest

from duet_plugin.openunlearning.cpu_overrides import eval_overrides

pytestmark = pytest.mark.ou

FACTS = [
    ("Where was Gideon Kilbride born?", "Gideon Kilbride was born in Valdomir.", "In which town was Kilbride born?"),
    ("What did Gideon Kilbride write?", "Gideon Kilbride wrote The Salt Ledger.", "Which book is by Kilbride?"),
    ("Who taught Gideon Kilbride?", "Gideon Kilbride was taught by Mira Toll.", "Who was Kilbride's teacher?"),
]


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    """OU QA dataset configs over a local JSON of three facts (questions and paraphrases), an indexed collator."""
    path = tmp_path_factory.mktemp("facts") / "facts.json"
    path.write_text(json.dumps([{"question": q, "answer": a, "paraphrased_question": p} for q, a, p in FACTS]))
    args = {"hf_args": {"path": "json", "data_files": str(path), "split": "train"}, "max_length": 64}
    plain = {"handler": "QADataset", "args": args}
    para = {"handler": "QADataset", "access_key": "para", "args": {**args, "question_key": "paraphrased_question"}}
    collate = {"handler": "DataCollatorForSupervisedDataset", "args": {"index": "index"}}
    return {
        "one": OmegaConf.create({"facts": plain}),
        "two": OmegaConf.create({"facts": {**plain, "access_key": "plain"}, "facts_para": para}),
        "collators": OmegaConf.create({"DataCollatorForSupervisedDataset": collate}),
    }


def test_last_layer_is_ous_probability_and_the_model_is_untouched(ou_imported, digest, tiny_model, tokenizer, facts):
    from evals.metrics import METRICS_REGISTRY

    from duet_plugin.openunlearning.metrics.logit_lens import logit_lens

    shared = {"tokenizer": tokenizer, "template_args": MANUAL, "collators": facts["collators"], "batch_size": 2}
    before = digest(tiny_model)
    out = logit_lens.evaluate(tiny_model, "logit_lens", {}, datasets=facts["one"], chunk_size=4, **shared)
    assert digest(tiny_model) == before
    layers = tiny_model.config.num_hidden_layers + 1
    assert len(out["value_by_layer"]) == out["num_layers"] == layers
    assert out["agg_value"] == out["best"]["prob"] == max(v["prob"] for v in out["value_by_layer"])
    assert out["final"] == out["value_by_layer"][-1] and out["n_items"] == len(FACTS)
    # OU's probability metric: per item exp(mean log-prob of the answer tokens) = exp of our last layer's log_prob
    ou_prob = METRICS_REGISTRY["probability"].evaluate(tiny_model, "p", {}, datasets=facts["one"], **shared)
    assert set(out["value_by_index"]) == set(ou_prob["value_by_index"]) == {0, 1, 2}
    for index, item in out["value_by_index"].items():
        assert len(item["prob"]) == layers and item["tokens"] > 0
        assert math.exp(item["log_prob"][-1]) == pytest.approx(ou_prob["value_by_index"][index]["prob"], rel=1e-5)
    json.dumps(out)  # OU writes it to its EVAL.json


def test_several_datasets_are_each_measured_the_first_gives_agg_value(ou_imported, tiny_model, tokenizer, facts):
    from duet_plugin.openunlearning.metrics.logit_lens import logit_lens

    shared = {"tokenizer": tokenizer, "template_args": MANUAL, "collators": facts["collators"], "batch_size": 3}
    out = logit_lens.evaluate(tiny_model, "logit_lens", {}, datasets=facts["two"], **shared)
    assert out["agg_set"] == "plain" and set(out["by_set"]) == {"plain", "para"}
    assert out["agg_value"] == out["by_set"]["plain"]["agg_value"]
    assert out["value_by_layer"] == out["by_set"]["plain"]["value_by_layer"] and "value_by_index" not in out
    # paraphrased questions: other inputs, so other values
    assert out["by_set"]["para"]["value_by_layer"] != out["by_set"]["plain"]["value_by_layer"]
    single = logit_lens.evaluate(tiny_model, "logit_lens", {}, datasets=facts["one"], **shared)
    assert single["value_by_layer"] == out["value_by_layer"]  # the same items in the same batches
    with pytest.raises(ValueError, match="needs `datasets` and `collators`"):
        logit_lens.evaluate(tiny_model, "logit_lens", {}, batch_size=2)


def test_multi_answer_items_are_refused(ou_imported, tiny_model, tokenizer, facts):
    from duet_plugin.core.attacks.logit_lens import LogitLensError
    from duet_plugin.openunlearning.metrics.logit_lens import logit_lens

    many = copy.deepcopy(facts["one"])
    many.facts.args.answer_key = "answers"
    path = Path(many.facts.args.hf_args.data_files)
    multi = path.with_name("multi.json")
    multi.write_text(json.dumps([{**r, "answers": [r["answer"], r["answer"]]} for r in json.loads(path.read_text())]))
    many.facts.args.hf_args.data_files = str(multi)
    with pytest.raises(LogitLensError, match="single-answer QA items"):
        logit_lens.evaluate(
            tiny_model, "logit_lens", {}, datasets=many, collators=facts["collators"], batch_size=2,
            tokenizer=tokenizer, template_args=MANUAL,
        )  # fmt: skip


@pytest.mark.parametrize("benchmark", ["tofu", "muse"])
def test_logit_lens_is_one_override_away(ou_imported, benchmark) -> None:
    from hydra import compose, initialize_config_dir

    overrides = [f"experiment=eval/{benchmark}/default", f"+eval/{benchmark}_metrics=logit_lens", "task_name=t"]
    with initialize_config_dir(config_dir=str(ou_imported / "configs"), version_base=None):
        cfg = compose(config_name="eval.yaml", overrides=overrides)
    metric = OmegaConf.to_container(OmegaConf.select(cfg, f"eval.{benchmark}.metrics.logit_lens"), resolve=True)
    assert metric["handler"] == "logit_lens" and metric["final_norm"] is None
    assert metric["collators"]["DataCollatorForSupervisedDataset"]["args"]["index"] == "index"
    (dataset,) = metric["datasets"].values()
    assert dataset["handler"] == "QADataset" and not dataset["args"].get("predict_with_generate", False)
    if benchmark == "tofu":
        assert dataset["args"]["hf_args"]["name"] == "forget10" and metric["batch_size"] == 32
    else:
        assert dataset["args"]["hf_args"]["path"] == "muse-bench/MUSE-News"
        assert dataset["args"]["hf_args"]["split"] == "forget_qa"


def test_logit_lens_through_ou_eval(run_ou, workspace) -> None:
    """OU's eval.py with +eval/tofu_metrics=logit_lens on top of OU's TOFU suite: every layer (embeddings + each block)
    is in TOFU_EVAL.json, the summary holds the best layer's probability, the last layer is OU's forget_Q_A_Prob,
    and the model folder is unchanged."""
    model = workspace / "tiny"
    before = folder_digest(model)
    out = workspace / "saves" / "eval" / "logit_lens"
    run_ou(
        "eval",
        [
            "experiment=eval/tofu/default",
            "+eval/tofu_metrics=logit_lens",
            "task_name=logit_lens",
            *eval_overrides(model),
            f"paths.output_dir={out}",
        ],
    )
    assert folder_digest(model) == before
    logs = json.loads((out / "TOFU_EVAL.json").read_text())
    summary = json.loads((out / "TOFU_SUMMARY.json").read_text())
    config = json.loads((model / "config.json").read_text())
    lens = logs["logit_lens"]
    assert len(lens["value_by_layer"]) == lens["num_layers"] == config["num_hidden_layers"] + 1
    assert all(math.isfinite(v) for layer in lens["value_by_layer"] for v in layer.values())
    assert summary["logit_lens"] == lens["agg_value"] == max(v["prob"] for v in lens["value_by_layer"])
    assert lens["final_logprob_gap"] < 1e-4 and "forget_Q_A_ROUGE" in summary  # OU's own metrics still run
    prob = logs["forget_Q_A_Prob"]["value_by_index"]  # the same forget QA items (from the *_perturbed split)
    assert set(lens["value_by_index"]) == set(prob) and len(prob) == lens["n_items"] > 0
    for index, item in lens["value_by_index"].items():
        assert math.exp(item["log_prob"][-1]) == pytest.approx(prob[index]["prob"], rel=1e-4)
