"""embedding_attack inside OU: in-process with OU's QADataset and collator (whole authors fit or are scored, the
fields and per-seed values are there, the model is bit-identical afterwards and matches OU's ``probability`` before
the attack), composed for TOFU (forget and holdout splits), and through OU's eval.py on the workspace model (the
model folder is unchanged, the fields are in TOFU_EVAL.json)."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf
from ou_data import COLLATE, INDEXED, MANUAL, folder_digest, qa_dataset

from duet_plugin.openunlearning.cpu_overrides import eval_overrides

pytestmark = pytest.mark.ou


def test_embedding_attack_in_process_leaves_the_model_and_reports_both_sets(
    ou_imported, authors_dataset, tiny_model, tokenizer, digest, tmp_path
) -> None:
    from evals.metrics import METRICS_REGISTRY

    from duet_plugin.openunlearning.metrics.embedding_attack import embedding_attack as metric

    rows = authors_dataset.configs["full"]
    names = list(dict.fromkeys(r["author"] for r in rows))
    forget = qa_dataset(tmp_path / "forget.json", [r for r in rows if r["author"] in names[:4]], "forget")
    control = qa_dataset(tmp_path / "control.json", authors_dataset.configs["holdout10"], "control")
    shared = {"tokenizer": tokenizer, "template_args": MANUAL}
    options = {
        "datasets": OmegaConf.create({"f": forget, "c": control}), "collators": COLLATE, "batch_size": 8,
        "k": 3, "steps": 4, "lr": 0.05, "partition_by": "concept", "concept_size": 4, "seeds": [0, 1],
    }  # fmt: skip
    model = tiny_model.train()
    flags, before = [p.requires_grad for p in model.parameters()], digest(model)
    cache: dict = {}
    try:
        out = metric.evaluate(model, "embedding_attack", cache, **options, **shared)
        assert model.training
    finally:
        model.eval()
    assert digest(model) == before and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and cache["embedding_attack"] is out
    assert out["n_forget"] == 16 and out["n_control"] == 8 and (out["k"], out["steps"], out["lr"]) == (3, 4, 0.05)
    for name, n_authors in (("forget", 4), ("control", 2)):
        part = out["partition"][name]
        assert len(part["fit"]) == len(part["heldout"]) == 2 * n_authors
        assert {i // 4 for i in part["fit"]}.isdisjoint({i // 4 for i in part["heldout"]})  # whole authors
        r = out[name]
        assert r["gain"] == pytest.approx(r["after"] - r["before"]) and r["fit_loss_last"] < r["fit_loss_first"]
    assert set(out["by_seed"]) == {"0", "1"} and out["seeds"] == [0, 1]
    assert out["agg_value"] == out["margin"] == pytest.approx(out["forget"]["gain"] - out["control"]["gain"])
    assert out["margin"] == pytest.approx(sum(s["margin"] for s in out["by_seed"].values()) / 2)
    # the unattacked value is OU's own probability metric on the held-out rows
    held = out["partition"]["forget"]["heldout"]
    prob = METRICS_REGISTRY["probability"].evaluate(
        model, "p", cache={}, datasets=OmegaConf.create({"f": forget}), collators=INDEXED, batch_size=4, **shared
    )
    expected = sum(prob["value_by_index"][i]["prob"] for i in held) / len(held)
    assert out["forget"]["before"] == pytest.approx(expected, rel=1e-5)
    json.dumps(out)  # OU writes it to its EVAL.json
    for bad, match in (
        ({"datasets": OmegaConf.create({"f": forget})}, "access_key forget and control"),
        ({"init": "phrase"}, "init_phrase"),
        ({"colour": 1}, r"unknown option\(s\) \['colour'\]"),
    ):
        with pytest.raises(ValueError, match=match):
            metric.evaluate(model, "e", {}, **{**options, **bad}, **shared)


def test_embedding_attack_is_one_override_away(ou_imported) -> None:
    from hydra import compose, initialize_config_dir

    overrides = ["experiment=eval/tofu/default", "+eval/tofu_metrics=embedding_attack", "task_name=t"]
    with initialize_config_dir(config_dir=str(ou_imported / "configs"), version_base=None):
        cfg = compose(config_name="eval.yaml", overrides=overrides)
    metric = OmegaConf.to_container(OmegaConf.select(cfg, "eval.tofu.metrics.embedding_attack"), resolve=True)
    assert metric["handler"] == "embedding_attack" and metric["partition_by"] == "concept"
    sets = {d["access_key"]: d for d in metric["datasets"].values()}
    assert set(sets) == {"forget", "control"} and all(d["handler"] == "QADataset" for d in sets.values())
    assert sets["forget"]["args"]["hf_args"]["name"] == "forget10"
    assert sets["control"]["args"]["hf_args"] == {"name": "holdout10", "split": "train", "path": "locuslab/TOFU"}
    assert (metric["k"], metric["steps"], metric["concept_size"]) == (20, 100, 20)


def _registered() -> bool:
    """True when the plugin registers the metric (``import_framework`` has run ``register()``)."""
    from evals.metrics import METRICS_REGISTRY

    return "embedding_attack" in METRICS_REGISTRY


def test_embedding_attack_through_ou_eval(ou_imported, run_ou, workspace) -> None:
    """OU's eval.py with +eval/tofu_metrics=embedding_attack (forget10 and holdout10 = two authors of four questions
    here: one fits, one is scored, per set): the fields are in TOFU_EVAL.json and the model folder is unchanged."""
    assert _registered()  # registration._components() puts it into OU's METRICS_REGISTRY
    model = workspace / "tiny"
    before = folder_digest(model)
    out = workspace / "saves" / "eval" / "embedding_attack"
    run_ou(
        "eval",
        [
            "experiment=eval/tofu/default",
            "eval.tofu.metrics={}",
            "+eval/tofu_metrics=embedding_attack",
            "eval.tofu.metrics.embedding_attack.concept_size=4",
            "eval.tofu.metrics.embedding_attack.steps=3",
            "eval.tofu.metrics.embedding_attack.k=2",
            "task_name=embedding_attack",
            *eval_overrides(model),
            f"paths.output_dir={out}",
        ],
    )
    assert folder_digest(model) == before
    logs = json.loads((out / "TOFU_EVAL.json").read_text())
    summary = json.loads((out / "TOFU_SUMMARY.json").read_text())
    ea = logs["embedding_attack"]
    assert summary["embedding_attack"] == ea["agg_value"] == ea["margin"]
    assert (ea["n_forget"], ea["n_control"], ea["k"], ea["steps"]) == (8, 8, 2, 3)
    for name in ("forget", "control"):
        assert all(math.isfinite(ea[name][k]) for k in ("before", "after", "gain"))
        assert len(ea["partition"][name]["heldout"]) == 4
    assert ea["margin"] == pytest.approx(ea["forget"]["gain"] - ea["control"]["gain"])
