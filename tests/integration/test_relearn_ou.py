"""relearn_attack inside OU: on tiny models whose knowledge is under our control (in-process, bit-identical
afterwards), and through OU's eval.py with the held-out profile (relearn_heldout.yaml) on the workspace model.

The central check: in ``heldout_facts`` mode a model that learned the forget facts and then had them suppressed
gets the held-out facts back when relearning the others, and a model that never learned them does not, although
both look unlearned before the attack and both memorise the relearned facts themselves."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from omegaconf import OmegaConf
from ou_data import COLLATE, INDEXED, MANUAL

from duet_plugin.openunlearning.cpu_overrides import eval_overrides

pytestmark = pytest.mark.ou

FACTS = [
    ("Where was Gideon Kilbride born?", "Gideon Kilbride was born in Valdomir."),
    ("What did Gideon Kilbride write?", "Gideon Kilbride wrote The Salt Ledger."),
    ("Who taught Gideon Kilbride?", "Gideon Kilbride was taught by Mira Toll."),
    ("When did Gideon Kilbride retire?", "Gideon Kilbride retired in 1999."),
]
SHARED_ARGS = {"template_args": MANUAL}


def _qa_config(path, rows, name: str):
    """An OU QADataset config over a local JSON of ``rows``."""
    path.write_text(json.dumps(rows))
    hf_args = {"path": "json", "data_files": str(path), "split": "train"}
    return OmegaConf.create({name: {"handler": "QADataset", "args": {"hf_args": hf_args, "max_length": 64}}})


def _full_batch(dataset_cfg, tokenizer):
    from data import get_collators, get_datasets

    data = get_datasets(dataset_cfg, tokenizer=tokenizer, template_args=MANUAL)
    collator = get_collators(COLLATE, tokenizer=tokenizer)
    return collator([data[i] for i in range(len(data))])


def _train(model, batches, steps: int, lr: float, sign: float = 1.0):
    model = copy.deepcopy(model).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for i in range(steps):
        (sign * model(**batches[i % len(batches)]).loss).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _prob_child(dataset_cfg):
    from evals.metrics import METRICS_REGISTRY

    cfg = OmegaConf.create({"datasets": dataset_cfg, "collators": INDEXED, "batch_size": 32})
    return METRICS_REGISTRY["probability"], cfg


# -- the original attack (mode=same), moved from test_robustness_metrics_ou.py -------------------------------------


def test_relearn_attack_brings_the_forgotten_facts_back(digest, ou_imported, tiny_model, tokenizer, tmp_path):
    from duet_plugin.openunlearning.metrics.relearn import relearn_attack

    facts = _qa_config(tmp_path / "facts.json", [{"question": q, "answer": a} for q, a in FACTS], "facts")
    batch = _full_batch(facts, tokenizer)
    original = _train(tiny_model, [batch], 80, lr=1e-2)
    unlearned = _train(original, [batch], 4, lr=1e-2, sign=-1.0)
    prob, cfg = _prob_child(facts)
    relearn_attack.set_pre_compute_metrics({"fact_prob": prob})
    shared = {"tokenizer": tokenizer, **SHARED_ARGS}
    p_original = prob.evaluate(original, "fact_prob", cache={}, **shared, **cfg)["agg_value"]
    logs = tmp_path / "TOFU_EVAL.json"
    logs.write_text(json.dumps({"fact_prob": {"agg_value": float(p_original)}}))
    before = digest(unlearned)
    options = {"datasets": facts, "collators": COLLATE, "batch_size": 4, "steps": 6}
    out = relearn_attack.evaluate(
        unlearned, "relearn_attack", {}, pre_compute={"fact_prob": cfg}, learning_rates=[1e-5, 1e-2],
        original_logs_path=str(logs), **options, **shared,
    )  # fmt: skip
    assert digest(unlearned) == before
    assert p_original > 0.9 and out["unattacked"]["fact_prob"] < 0.05  # learnt, then forgotten
    after = out["value_by_attack"]
    assert after["lr0.01"]["fact_prob"] > 0.5 > after["lr1e-05"]["fact_prob"]  # a big enough step brings it back
    assert out["agg_value"] == after["lr0.01"]["fact_prob"] and out["worst_variant"] == "lr0.01"
    expected = (after["lr0.01"]["fact_prob"] - out["unattacked"]["fact_prob"]) / (
        p_original - out["unattacked"]["fact_prob"]
    )
    assert out["recovery"] == pytest.approx(expected) and out["recovery"] > 0.5
    assert out["attack_info"]["lr0.01"] == {"lr": 0.01, "steps": 6, "batch_size": 4, "examples": 4, "seeds": [0]}
    assert out["mode"] == "same" and out["curve"]["fact_prob"]["lr0.01"]["mean"] == [after["lr0.01"]["fact_prob"]]
    with pytest.raises(ValueError, match="no relearn split"):
        relearn_attack.evaluate(unlearned, "r", {}, pre_compute={"fact_prob": cfg}, **shared)
    with pytest.raises(ValueError, match=r"original_logs_path=.* is not a file"):
        relearn_attack.evaluate(
            unlearned, "r", {}, pre_compute={"fact_prob": cfg}, original_logs_path=str(tmp_path / "no.json"),
            **options, **shared,
        )  # fmt: skip
    with pytest.raises(ValueError, match="mode=related relearns on related_datasets"):
        relearn_attack.evaluate(unlearned, "r", {}, pre_compute={"fact_prob": cfg}, mode="related", **options, **shared)
    with pytest.raises(ValueError, match="partition_by='author'"):
        relearn_attack.evaluate(
            unlearned, "r", {}, pre_compute={"fact_prob": cfg}, mode="heldout_facts", partition_by="author",
            **options, **shared,
        )  # fmt: skip


# -- heldout_facts: suppressed knowledge comes back, knowledge never learned does not -------------------------------

N_FORGET_AUTHORS = 6
LEARNING_RATES = [1e-3, 1e-2]
EVAL_AT_STEPS = [0, 5, 10, 20]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def authors(ou_imported, authors_dataset, tiny_model, tokenizer, tmp_path_factory):
    """Six fictitious authors (24 QA) to forget, fourteen (56 QA) to retain, and three tiny models:
    ``original`` trained on all of them, ``suppressed`` = original after 6 steps of gradient ascent on the forget
    authors, ``never`` trained on the retain authors only (the retain-only model: it never saw the forget facts)."""
    rows = authors_dataset.configs["full"]
    names = list(dict.fromkeys(r["author"] for r in rows))
    forgotten = set(names[:N_FORGET_AUTHORS])
    folder = tmp_path_factory.mktemp("authors")

    def rows_of(wanted: bool) -> list[dict]:
        return [
            {k: r[k] for k in ("question", "answer", "author")} for r in rows if (r["author"] in forgotten) == wanted
        ]

    forget = _qa_config(folder / "forget.json", rows_of(True), "forget")
    retain = _qa_config(folder / "retain.json", rows_of(False), "retain")
    fb, rb = _full_batch(forget, tokenizer), _full_batch(retain, tokenizer)
    original = _train(tiny_model, [fb, rb], 150, lr=1e-2)
    never = _train(tiny_model, [rb], 150, lr=1e-2)
    suppressed = _train(original, [fb], 6, lr=3e-3, sign=-1.0)
    return forget, original, suppressed, never


def test_heldout_relearning_separates_suppressed_from_never_learned(digest, authors, tokenizer, tmp_path):
    from data import get_datasets

    from duet_plugin.openunlearning.metrics.relearn import relearn_attack

    forget, original, suppressed, never = authors
    prob, cfg = _prob_child(forget)
    relearn_attack.set_pre_compute_metrics({"forget_prob": prob})
    shared = {"tokenizer": tokenizer, **SHARED_ARGS}
    original_logs = tmp_path / "ORIGINAL_EVAL.json"
    original_result = prob.evaluate(original, "p", cache={}, **shared, **cfg)
    original_logs.write_text(json.dumps({"forget_prob": original_result}, default=float))
    options = {
        "datasets": forget, "collators": COLLATE, "batch_size": 4, "learning_rates": LEARNING_RATES,
        "eval_at_steps": EVAL_AT_STEPS, "seeds": SEEDS, "mode": "heldout_facts", "partition_by": "concept",
        "concept_key": "author", "heldout_fraction": 0.5, "partition_seed": 0,
        "original_logs_path": str(original_logs),
    }  # fmt: skip

    def attack(model, **extra):
        before = digest(model)
        out = relearn_attack.evaluate(
            model, "relearn_attack", {}, pre_compute={"forget_prob": cfg}, **{**options, **extra}, **shared
        )
        assert digest(model) == before  # the evaluated model is bit-identical afterwards
        return out

    never_out = attack(never)
    reference = tmp_path / "RETAIN_EVAL.json"
    reference.write_text(json.dumps({"relearn_attack": never_out}))
    supp = attack(suppressed, reference_logs_path=str(reference))

    # The partition: half the authors held out, whole, disjoint from the relearned ones, the same for both models.
    rows = get_datasets(forget, tokenizer=tokenizer, template_args=MANUAL).data["author"]
    part = supp["partition"]
    held, relearned = {rows[i] for i in part["heldout"]}, {rows[i] for i in part["relearn"]}
    assert len(held) == len(relearned) == N_FORGET_AUTHORS // 2 and held.isdisjoint(relearned)
    assert sorted(part["heldout"] + part["relearn"]) == list(range(len(rows))) and part == never_out["partition"]
    assert supp["attack_info"]["lr0.01"]["examples"] == len(part["relearn"]) == 12

    # Curves: one point per checkpoint, step 0 = the unattacked held-out score, mean/spread over both seeds.
    for out in (supp, never_out):
        for curve in out["curve"]["forget_prob"].values():
            assert curve["steps"] == EVAL_AT_STEPS and len(curve["mean"]) == len(EVAL_AT_STEPS)
            assert curve["mean"][0] == out["unattacked"]["forget_prob"] and curve["std"][0] == 0.0
            assert set(curve["by_seed"]) == set(SEEDS)
            assert all(lo <= m <= hi for lo, m, hi in zip(curve["min"], curve["mean"], curve["max"], strict=True))
        assert set(out["value_by_attack"]) == {
            f"lr{lr:g}{s}" for lr in LEARNING_RATES for s in ("_step5", "_step10", "")
        }
        worst = out["worst"]
        assert worst["mean"] == out["agg_value"] == max(v["forget_prob"] for v in out["value_by_attack"].values())

    # Both look unlearned on the held-out authors, and both memorise the relearned authors themselves (what mode=same
    # would score: it cannot tell them apart) ...
    assert original_logs.exists() and supp["original"]["forget_prob"] > 0.9
    assert supp["unattacked"]["forget_prob"] < 0.05 and never_out["unattacked"]["forget_prob"] < 0.05
    for out in (supp, never_out):
        assert max(max(c["mean"]) for c in out["curve_relearned"]["forget_prob"].values()) > 0.4
    # ... but only the suppressed model gets the held-out facts back: relearning does not invent knowledge.
    assert never_out["agg_value"] < 0.1
    assert supp["agg_value"] > 0.15 and supp["agg_value"] > 3 * never_out["agg_value"]
    assert supp["above_reference"] == pytest.approx(supp["agg_value"] - never_out["agg_value"])
    assert supp["reference"]["agg_value"] == never_out["agg_value"]
    assert supp["recovery"] > 0.15 > never_out["recovery"]  # against the original model, held-out authors only
    print(
        f"\nheld-out forget prob (worst lr/step, mean over {len(SEEDS)} seeds): suppressed "
        f"{supp['unattacked']['forget_prob']:.3f} -> {supp['agg_value']:.3f} ({supp['worst']}), never learned "
        f"{never_out['unattacked']['forget_prob']:.3f} -> {never_out['agg_value']:.3f} ({never_out['worst']}); "
        f"recovery {supp['recovery']:.3f} vs {never_out['recovery']:.3f}"
    )

    # The reference run here, from the retain-only model's folder, gives the same floor as its logs.
    never.save_pretrained(tmp_path / "never")
    supp_model_ref = attack(suppressed, reference_model_path=str(tmp_path / "never"))
    assert supp_model_ref["reference"]["agg_value"] == pytest.approx(never_out["agg_value"], abs=1e-6)
    for lr, excess in supp["above_reference_curve"]["forget_prob"].items():
        assert supp_model_ref["above_reference_curve"]["forget_prob"][lr] == pytest.approx(excess, abs=1e-6)

    with pytest.raises(ValueError, match=r"other settings \(\['seeds'\]\)"):
        attack(suppressed, reference_logs_path=str(reference), seeds=[0])
    other = _qa_config(tmp_path / "other.json", [{"question": "Q?", "answer": "A."}] * 3, "other")
    with pytest.raises(ValueError, match=r"scores 24 items .* the relearn dataset has 3 rows"):
        attack(suppressed, datasets=other, partition_by="question", original_logs_path=None)


def test_related_mode_relearns_on_other_data_and_scores_everything(digest, authors, tokenizer, tmp_path):
    from duet_plugin.openunlearning.metrics.relearn import relearn_attack

    forget, _, suppressed, _ = authors
    prob, cfg = _prob_child(forget)
    relearn_attack.set_pre_compute_metrics({"forget_prob": prob})
    related = _qa_config(tmp_path / "related.json", [{"question": q, "answer": a} for q, a in FACTS], "related")
    before = digest(suppressed)
    out = relearn_attack.evaluate(
        suppressed, "relearn_attack", {}, pre_compute={"forget_prob": cfg}, mode="related", related_datasets=related,
        collators=COLLATE, datasets=None, batch_size=4, learning_rates=[1e-2], eval_at_steps=[0, 3],
        tokenizer=tokenizer, **SHARED_ARGS,
    )  # fmt: skip
    assert digest(suppressed) == before
    assert out["scored_on"] == "all" and out["attack_info"]["lr0.01"]["examples"] == len(FACTS)
    full = prob.evaluate(suppressed, "p", cache={}, tokenizer=tokenizer, **SHARED_ARGS, **cfg)["agg_value"]
    assert out["unattacked"]["forget_prob"] == pytest.approx(full)  # the whole forget set, not a part
    assert out["value_by_attack"]["lr0.01"]["forget_prob"] != pytest.approx(full)  # the copy was trained


def test_heldout_profile_through_ou_eval(run_ou, workspace) -> None:
    """``+eval/tofu_metrics=relearn_heldout`` (forget10: two authors of four questions) with OU's eval.py: the curve
    is logged, step 0 is the held-out authors' part of OU's own forget_Q_A_ROUGE, the model file is untouched."""
    model = workspace / "tiny"
    weights = (model / "model.safetensors").read_bytes()
    out = workspace / "saves" / "eval" / "relearn_heldout"
    run_ou(
        "eval",
        [
            "experiment=eval/tofu/default",
            "+eval/tofu_metrics=relearn_heldout",
            "task_name=relearn_heldout",
            *eval_overrides(model),
            f"paths.output_dir={out}",
            "eval.tofu.metrics.relearn_heldout.eval_at_steps=[0,1,2]",
            "eval.tofu.metrics.relearn_heldout.learning_rates=[1e-3]",
            "eval.tofu.metrics.relearn_heldout.seeds=[0,1]",
            "eval.tofu.metrics.relearn_heldout.concept_size=4",
        ],
    )
    assert (model / "model.safetensors").read_bytes() == weights
    logs = json.loads((out / "TOFU_EVAL.json").read_text())
    summary = json.loads((out / "TOFU_SUMMARY.json").read_text())
    result = logs["relearn_heldout"]
    part = result["partition"]
    assert len(part["heldout"]) == 4 and len(part["relearn"]) == 4 and len(part["concepts_heldout"]) == 1
    assert {i // 4 for i in part["heldout"]}.isdisjoint({i // 4 for i in part["relearn"]})
    rouge = logs["forget_Q_A_ROUGE"]["value_by_index"]
    heldout_rouge = sum(rouge[str(i)]["rougeL_recall"] for i in part["heldout"]) / 4
    assert result["index_field"] == {"forget_Q_A_ROUGE": "rougeL_recall", "forget_Q_A_Prob": "prob"}
    assert result["unattacked"]["forget_Q_A_ROUGE"] == pytest.approx(heldout_rouge)
    for key in ("forget_Q_A_ROUGE", "forget_Q_A_Prob"):
        curve = result["curve"][key]["lr0.001"]
        assert curve["steps"] == [0, 1, 2] and curve["mean"][0] == pytest.approx(result["unattacked"][key])
        assert set(curve["by_seed"]) == {"0", "1"}
    assert set(result["value_by_attack"]) == {"lr0.001_step1", "lr0.001"}
    assert summary["relearn_heldout"] == result["agg_value"] == result["worst"]["mean"]

    from duet_plugin.report import CURVES_OUTPUT, load_run, relearn_curves, write_report

    run = load_run("tiny", out)
    ((label, name, key, by_lr, reference),) = relearn_curves([run])
    assert (label, name, key, reference) == ("tiny", "relearn_heldout", "forget_Q_A_ROUGE", None)
    assert by_lr == result["curve"]["forget_Q_A_ROUGE"]
    paths = write_report([run], out / "report")
    assert paths[-1].name == CURVES_OUTPUT and paths[-1].stat().st_size > 0


def test_muse_heldout_profile_through_ou_eval(run_ou, workspace) -> None:
    """``+eval/muse_metrics=relearn_heldout`` (the workspace's six knowmem forget questions): relearning on three
    questions, scoring the other three; step 0 is their part of OU's own forget_knowmem_ROUGE."""
    out = workspace / "saves" / "eval" / "muse_relearn_heldout"
    run_ou(
        "eval",
        [
            "experiment=eval/muse/default",
            "+eval/muse_metrics=relearn_heldout",
            "task_name=muse_relearn_heldout",
            *eval_overrides(workspace / "tiny"),
            f"paths.output_dir={out}",
            "eval.muse.metrics.relearn_heldout.eval_at_steps=[0,2]",
            "eval.muse.metrics.relearn_heldout.learning_rates=[1e-3]",
            "eval.muse.metrics.relearn_heldout.seeds=[0]",
        ],
    )
    logs = json.loads((out / "MUSE_EVAL.json").read_text())
    result = logs["relearn_heldout"]
    part = result["partition"]
    assert part["by"] == "question" and sorted(part["heldout"] + part["relearn"]) == list(range(6))
    assert len(part["heldout"]) == 3 and set(part["heldout"]).isdisjoint(part["relearn"])
    rouge = logs["forget_knowmem_ROUGE"]["value_by_index"]
    field = result["index_field"]["forget_knowmem_ROUGE"]
    heldout = sum(rouge[str(i)][field] for i in part["heldout"]) / 3
    assert result["unattacked"]["forget_knowmem_ROUGE"] == pytest.approx(heldout)
    curve = result["curve"]["forget_knowmem_ROUGE"]["lr0.001"]
    assert curve["steps"] == [0, 2] and curve["mean"][0] == pytest.approx(heldout)
