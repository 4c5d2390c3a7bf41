"""directional_ablation inside OU: in-process with OU's datasets and ``probability`` metric on a taught tiny model
whose forget answers a planted direction suppresses (found on the fitting authors, ablated, the held-out authors'
answers come back; the model is bit-identical afterwards), composed for TOFU and MUSE, and through OU's eval.py on
the workspace model (the model folder is unchanged, the fields are in TOFU_EVAL.json).

The eval.py test needs the metric in the plugin's registry (``registration._components``)."""

from __future__ import annotations

import contextlib
import copy
import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from ou_data import COLLATE, INDEXED, MANUAL, folder_digest, qa_dataset

from duet_plugin.openunlearning.cpu_overrides import eval_overrides

pytestmark = pytest.mark.ou


@pytest.fixture(scope="module")
def authors(ou_imported, authors_dataset, tiny_model, tokenizer, tmp_path_factory):
    """Four forget authors (16 QA, 4 per author, in author order) and six retain authors as OU dataset configs, the
    forget prompts' own tokens (the plant's trigger) and the tiny model taught all of them."""
    from data import get_collators, get_datasets

    rows = authors_dataset.configs["full"]
    names = list(dict.fromkeys(r["author"] for r in rows))
    folder = tmp_path_factory.mktemp("da_authors")
    forget = qa_dataset(folder / "forget.json", [r for r in rows if r["author"] in names[:4]], "forget")
    retain = qa_dataset(folder / "retain.json", [r for r in rows if r["author"] in names[4:10]], "retain")
    collate = get_collators(COLLATE, tokenizer=tokenizer)
    batches = {}
    for name, cfg in (("forget", forget), ("retain", retain)):
        data = get_datasets(OmegaConf.create({name: cfg}), tokenizer=tokenizer, template_args=MANUAL)
        batches[name] = collate([data[i] for i in range(len(data))])

    def prompt_tokens(batch) -> set[int]:
        return set(batch["input_ids"][(batch["labels"] == -100) & batch["attention_mask"].bool()].tolist())

    trigger = torch.tensor(sorted(prompt_tokens(batches["forget"]) - prompt_tokens(batches["retain"])))
    model = copy.deepcopy(tiny_model).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(200):
        model(**batches[("forget", "retain")[step % 2]]).loss.backward()
        opt.step()
        opt.zero_grad()
    return forget, retain, trigger, model.eval()


@contextlib.contextmanager
def planted(model, trigger: torch.Tensor, scale: float = 30.0):
    """The 'unlearned' model: a prompt holding a forget author's name token gets ``scale`` times a fixed unit
    direction added after the first block, at every position (registered before the metric's own hooks)."""
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    direction = direction / direction.norm()
    hit: list[torch.Tensor] = []
    handles = [
        model.register_forward_pre_hook(
            lambda m, args, kwargs: hit.__setitem__(
                slice(None), [torch.isin(kwargs.get("input_ids", args[0] if args else None), trigger).any(1)]
            ),
            with_kwargs=True,
        ),
        model.model.layers[0].register_forward_hook(
            lambda m, args, out: (out[0] + scale * direction * hit[0][:, None, None].to(out[0].dtype), *out[1:])
        ),
    ]
    try:
        yield direction
    finally:
        for handle in handles:
            handle.remove()


def test_a_planted_direction_is_found_on_fitting_authors_and_its_ablation_recovers_the_others(
    digest, authors, tokenizer
) -> None:
    from evals.metrics import METRICS_REGISTRY

    from duet_plugin.openunlearning.metrics.directional_ablation import directional_ablation_metric as metric

    forget, retain, trigger, model = authors
    prob = METRICS_REGISTRY["probability"]
    child = {"collators": INDEXED, "batch_size": 16}
    children = {
        "forget_prob": OmegaConf.create({**child, "datasets": {"f": forget}}),
        "retain_prob": OmegaConf.create({**child, "datasets": {"r": retain}}),
    }
    metric.set_pre_compute_metrics({"forget_prob": prob, "retain_prob": prob})
    shared = {"tokenizer": tokenizer, "template_args": MANUAL}
    options = {
        "datasets": OmegaConf.create({"f": forget, "r": retain}), "collators": COLLATE, "batch_size": 8,
        "partition_by": "concept", "concept_size": 4, "whole_set": ["retain_prob"],
    }  # fmt: skip
    taught = prob.evaluate(model, "p", cache={}, **shared, **children["forget_prob"])["agg_value"]
    before, hooks = digest(model), sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with planted(model, trigger) as plant:
        cache: dict = {}
        out = metric.evaluate(model, "directional_ablation", cache, pre_compute=children, **options, **shared)
    assert digest(model) == before and cache["directional_ablation"] is out
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    part = out["partition"]
    assert part["by"] == "concept" and len(part["fit"]) == len(part["heldout"]) == 8
    assert {i // 4 for i in part["fit"]}.isdisjoint({i // 4 for i in part["heldout"]})  # whole authors
    assert out["layer_chosen"] and out["layer"] in (1, 2) and len(out["value_by_layer"]) == 3
    chosen = out["value_by_layer"][out["layer"]]
    assert chosen["fit_prob_ablated"] == max(r["fit_prob_ablated"] for r in out["value_by_layer"][1:])
    assert out["direction"]["norm"] == pytest.approx(30.0, rel=0.1) and out["direction"]["separation"] > 10
    assert out["direction"]["heldout_separation"] > 10  # the direction separates the scored authors too
    assert out["scored_on"] == {"forget_prob": "heldout", "retain_prob": "all"}
    before_ab, after_ab = out["unattacked"], out["value_by_attack"]["ablated"]
    assert taught > 0.9 and before_ab["forget_prob"] < 0.05  # learned, then suppressed
    assert out["agg_value"] == after_ab["forget_prob"] > 0.6  # back, on authors the direction was not fitted on
    assert out["fit_part"]["ablated"]["forget_prob"] == pytest.approx(chosen["fit_prob_ablated"], rel=1e-4)
    assert after_ab["retain_prob"] > 0.85 and before_ab["retain_prob"] > 0.9
    assert out["attack_info"]["ablated"]["layer"] == out["layer"] and out["n_forget"] == 16
    json.dumps(out)  # OU writes it to its EVAL.json
    del plant
    # a configured layer: no choice made, the same direction
    with planted(model, trigger):
        fixed = metric.evaluate(model, "d", {}, pre_compute=children, **{**options, "layer": out["layer"]}, **shared)
    assert not fixed["layer_chosen"] and fixed["fit_prob_unablated"] is None
    assert fixed["agg_value"] == pytest.approx(out["agg_value"], rel=1e-6)
    for bad, match in (
        ({"whole_set": []}, "scores 24 items and the forget dataset has 16 rows"),
        ({"datasets": OmegaConf.create({"f": forget})}, "access_key forget and retain"),
        ({"position": "first"}, "position='first'"),
        ({"colour": 1}, r"unknown option\(s\) \['colour'\]"),
    ):
        with pytest.raises(ValueError, match=match):
            metric.evaluate(model, "d", {}, pre_compute=children, **{**options, **bad}, **shared)


@pytest.mark.parametrize("benchmark", ["tofu", "muse"])
def test_directional_ablation_is_one_override_away(ou_imported, benchmark) -> None:
    from hydra import compose, initialize_config_dir

    overrides = [
        f"experiment=eval/{benchmark}/default",
        f"+eval/{benchmark}_metrics=directional_ablation",
        "task_name=t",
    ]
    with initialize_config_dir(config_dir=str(ou_imported / "configs"), version_base=None):
        cfg = compose(config_name="eval.yaml", overrides=overrides)
    metric = OmegaConf.to_container(
        OmegaConf.select(cfg, f"eval.{benchmark}.metrics.directional_ablation"), resolve=True
    )
    assert metric["handler"] == "directional_ablation" and metric["layer"] is None
    assert {d["access_key"] for d in metric["datasets"].values()} == {"forget", "retain"}
    assert all(
        d["handler"] == "QADataset" and not d["args"].get("predict_with_generate") for d in metric["datasets"].values()
    )
    first, *_, last = metric["pre_compute"]
    assert metric["whole_set"] == [last] and first.startswith("forget_")
    forget = next(d for d in metric["datasets"].values() if d["access_key"] == "forget")["args"]["hf_args"]
    if benchmark == "tofu":
        assert forget["name"] == "forget10" and metric["partition_by"] == "concept"
        assert metric["pre_compute"]["forget_Q_A_Prob"]["datasets"]["TOFU_QA_forget"]["args"]["hf_args"]["name"] == (
            "forget10_perturbed"
        )  # the same rows, in the same order
    else:
        assert forget["split"] == "forget_qa" and forget["path"] == "muse-bench/MUSE-News"


def test_directional_ablation_through_ou_eval(run_ou, workspace) -> None:
    """OU's eval.py with +eval/tofu_metrics=directional_ablation on top of OU's TOFU suite (forget10 = two authors of
    four questions here: one fits, one is scored): the fields are in TOFU_EVAL.json, the unablated values are the
    suite's own, and the model folder is unchanged."""
    model = workspace / "tiny"
    before = folder_digest(model)
    out = workspace / "saves" / "eval" / "directional_ablation"
    run_ou(
        "eval",
        [
            "experiment=eval/tofu/default",
            "+eval/tofu_metrics=directional_ablation",
            "eval.tofu.metrics.directional_ablation.concept_size=4",
            "task_name=directional_ablation",
            *eval_overrides(model),
            f"paths.output_dir={out}",
        ],
    )
    assert folder_digest(model) == before
    logs = json.loads((out / "TOFU_EVAL.json").read_text())
    summary = json.loads((out / "TOFU_SUMMARY.json").read_text())
    layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    da = logs["directional_ablation"]
    assert summary["directional_ablation"] == da["agg_value"] == da["value_by_attack"]["ablated"]["forget_Q_A_Prob"]
    assert da["layer_chosen"] and 1 <= da["layer"] <= layers and len(da["value_by_layer"]) == layers + 1
    assert set(da["direction"]) == {"layer", "norm", "relative_norm", "separation", "heldout_separation"}
    assert da["direction"]["norm"] > 0 and da["n_forget"] == len(logs["forget_Q_A_Prob"]["value_by_index"]) == 8
    keys = {"forget_Q_A_Prob", "forget_Q_A_ROUGE", "retain_Q_A_Prob"}
    assert set(da["unattacked"]) == set(da["value_by_attack"]["ablated"]) == keys
    assert da["scored_on"] == {"forget_Q_A_Prob": "heldout", "forget_Q_A_ROUGE": "heldout", "retain_Q_A_Prob": "all"}
    # unablated: the suite's own forget_Q_A_Prob on the held-out rows, its retain_Q_A_Prob on all
    held = da["partition"]["heldout"]
    assert len(held) == 4 and sorted(held + da["partition"]["fit"]) == list(range(8))
    by_index = logs["forget_Q_A_Prob"]["value_by_index"]
    expected = sum(by_index[str(i)]["prob"] for i in held) / len(held)
    assert da["unattacked"]["forget_Q_A_Prob"] == pytest.approx(expected, rel=1e-6)
    assert da["unattacked"]["retain_Q_A_Prob"] == pytest.approx(logs["retain_Q_A_Prob"]["agg_value"], rel=1e-6)
    assert all(v is not None and math.isfinite(v) for v in da["value_by_attack"]["ablated"].values())
