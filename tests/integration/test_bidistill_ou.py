"""BiDistill inside OU: the streams dataset in-process, and OU's train.py / eval.py on the local workspace."""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from duet_plugin.openunlearning.cpu_overrides import eval_overrides, train_overrides

pytestmark = pytest.mark.ou
SMALL = [
    "trainer.args.per_device_train_batch_size=4",
    "trainer.args.gradient_accumulation_steps=1",
    "trainer.args.logging_steps=1",
    "trainer.args.learning_rate=1e-3",
]
TERMS = ("forget_pull", "forget_push", "retain_pull", "boundary_pull", "adversarial_pull", "adversarial_push")


def _spec(workspace, config: str) -> dict:
    return {"source": "qa", "hf_args": {"path": str(workspace / "locuslab" / "TOFU"), "name": config, "split": "train"}}


def _streams(ou_imported, workspace, **streams):
    from data import DATASET_REGISTRY

    return DATASET_REGISTRY["UnifiedStreamsDataset"](**streams)


def test_streams_dataset_serves_every_stream(ou_imported, workspace, authors_dataset, caplog) -> None:
    with caplog.at_level(logging.INFO):
        ds = _streams(
            ou_imported,
            workspace,
            streams={
                "forget": _spec(workspace, "forget10"),
                "retain": _spec(workspace, "retain90"),
                "boundary": [_spec(workspace, "real_authors_perturbed"), _spec(workspace, "world_facts_perturbed")],
            },
            adversarial_from_forget={"prefill_words": [2]},
        )
    sizes = {name: len(s) for name, s in ds.streams.items()}
    configs = authors_dataset.configs  # the workspace's data (same generator and seed)
    assert sizes["forget"] == len(ds) == len(configs["forget10"]) and sizes["retain"] == len(configs["retain90"])
    assert sizes["boundary"] == len(configs["real_authors_perturbed"]) + len(configs["world_facts_perturbed"])
    assert sizes["adversarial"] == len(configs["forget10"])  # every forget answer has more than 2 words
    item = ds[3]
    assert set(item) == {"forget", "retain", "boundary", "adversarial"}
    assert item["forget"]["stream"] == "forget" and item["adversarial"]["prefill"]
    assert len(item["adversarial"]["prefill"].split()) == 2
    assert not [r for r in caplog.records if "no " in r.getMessage() and "stream" in r.getMessage()]

    with_anchors = _streams(
        ou_imported,
        workspace,
        streams={"forget": _spec(workspace, "forget10"), "retain": _spec(workspace, "retain90")},
        prefilled_retain={"prefill_words": [2]},
    )
    prefilled = [r for r in with_anchors.streams["retain"].records if r.prefill]
    assert len(prefilled) == len(configs["retain90"]) and all(r.stream == "retain" for r in prefilled)
    with pytest.raises(ValueError, match="prefilled_retain needs a retain stream"):
        _streams(ou_imported, workspace, streams={"forget": _spec(workspace, "forget10")},
                 prefilled_retain={"prefill_words": [2]})  # fmt: skip

    caplog.clear()
    with caplog.at_level(logging.INFO):
        only = _streams(ou_imported, workspace, streams={"forget": _spec(workspace, "forget10"), "boundary": None})
    assert set(only.streams) == {"forget"} and set(only[0]) == {"forget"}
    notes = [r.getMessage() for r in caplog.records if "UnifiedStreamsDataset: no" in r.getMessage()]
    assert len(notes) == 1 and "retain, boundary, adversarial" in notes[0]  # logged once, naming them


def test_bad_streams_are_refused_with_the_fix(ou_imported, workspace, tmp_path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "Where?", "stream": "boundary"}\n')
    with pytest.raises(ValueError, match="needs a forget stream"):
        _streams(ou_imported, workspace, streams={"retain": _spec(workspace, "retain90")})
    with pytest.raises(ValueError, match="unknown stream 'neighbours'"):
        _streams(ou_imported, workspace, streams={"forget": _spec(workspace, "forget10"), "neighbours": {}})
    with pytest.raises(ValueError, match="positive word counts"):
        _streams(
            ou_imported, workspace, streams={"forget": _spec(workspace, "forget10")},
            adversarial_from_forget={"prefill_words": [0]},
        )  # fmt: skip
    source = {"source": "unified", "hf_args": {"path": "json", "data_files": str(empty), "split": "train"},
              "max_records": 0}  # fmt: skip
    with pytest.raises(ValueError, match=r"Stream 'boundary' is empty: its source\(s\) .*empty.jsonl"):
        _streams(ou_imported, workspace, streams={"forget": _spec(workspace, "forget10"), "boundary": source})


def _trainer(ou_imported, model, tokenizer, streams_ds, tmp_path, chat_args, **method_args):
    from data.unlearn import ForgetRetainDataset
    from trainer import TRAINER_REGISTRY

    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, remove_unused_columns=False,
        use_cpu=True,
    )  # fmt: skip
    return TRAINER_REGISTRY["BiDistill"](
        model=model,
        args=args,
        train_dataset=ForgetRetainDataset(streams_ds, {}),  # what OU builds from data.forget + an empty data.retain
        tokenizer=tokenizer,
        data_collator=None,
        evaluators=None,
        template_args=chat_args,
        **method_args,
    )


def test_precomputed_full_store_and_online_trainers_agree(ou_imported, workspace, tokenizer, tmp_path, chat_args):
    """The workspace model reads the workspace data; precomputed (full vocabulary stored) and online agree."""
    model = AutoModelForCausalLM.from_pretrained(workspace / "tiny")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(workspace / "tiny")
    ds = _streams(
        ou_imported, workspace,
        streams={"forget": _spec(workspace, "forget10"), "retain": _spec(workspace, "retain90"),
                 "boundary": _spec(workspace, "world_facts_perturbed")},
        adversarial_from_forget={"prefill_words": [3]},
    )  # fmt: skip
    pre, online = (
        _trainer(
            ou_imported,
            copy.deepcopy(model),
            tok,
            ds,
            tmp_path,
            chat_args,
            teacher_mode=t,
            store_top_k=None,
            top_k=5,
            balance="none",  # the raw terms: a balanced first step is the sum of the weights whatever the targets
        )
        for t in ("precomputed", "online")
    )
    assert pre.data_collator.teacher_prefill is False  # prefill_target=restart: the teacher sees the bare question
    cont = _trainer(ou_imported, copy.deepcopy(model), tok, ds, tmp_path, chat_args, prefill_target="continue")
    assert cont.data_collator.teacher_prefill is True
    pre.targets = pre.precompute_targets()
    assert pre.targets.streams() == ["adversarial", "boundary", "forget", "retain"]
    torch.manual_seed(0)
    batch = pre.data_collator([pre.train_dataset[i] for i in range(4)])
    assert set(batch) == {"forget", "retain", "boundary", "adversarial"}
    with torch.no_grad():
        for a, b in zip(pre.model.parameters(), online.model.parameters(), strict=True):
            noise = 0.02 * torch.randn_like(a)
            a.add_(noise)
            b.add_(noise)
    assert pre.compute_loss(pre.model, batch).item() == pytest.approx(online.compute_loss(online.model, batch).item())
    logs: dict = {}
    pre.log(logs)
    assert set(logs) == {f"bidistill/{t}" for t in TERMS}
    with pytest.raises(ValueError, match=r"push_top_k=.* is larger than the model's vocabulary"):
        _trainer(ou_imported, model, tok, ds, tmp_path, chat_args, push_top_k=10**6, store_top_k=None)
    with pytest.raises(ValueError, match=r"Unknown BiDistill option\(s\) \['gamma'\]"):
        _trainer(ou_imported, model, tok, ds, tmp_path, chat_args, gamma=1.0)
    from accelerate.utils import DeepSpeedPlugin
    from trainer import TRAINER_REGISTRY

    zero3 = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    zero3.deepspeed_plugin = DeepSpeedPlugin(hf_ds_config={"zero_optimization": {"stage": 3}})
    with pytest.raises(ValueError, match=r"trainer\.method_args\.balance=grad measures each term's gradient .*ZeRO-3"):
        TRAINER_REGISTRY["BiDistill"](
            model=model, args=zero3, train_dataset=None, tokenizer=tok, data_collator=None, evaluators=None,
            template_args=chat_args, balance="grad",
        )  # fmt: skip


def test_tofu_bidistill_train_then_eval(run_ou, workspace) -> None:
    task = "bidistill_tofu"
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/bidistill",
            f"task_name={task}",
            *train_overrides(workspace / "tiny"),
            *SMALL,
            "trainer.args.num_train_epochs=2",
        ],
    )
    log = proc.stdout + proc.stderr
    assert all(f"bidistill/{t}" in log for t in TERMS)
    assert "BiDistill: precomputed teacher targets for" in log
    out = workspace / "saves" / "unlearn" / task
    a = AutoModelForCausalLM.from_pretrained(workspace / "tiny").state_dict()
    b = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    run_ou("eval", ["experiment=eval/tofu/default", f"task_name={task}_eval", *eval_overrides(out),
                    f"paths.output_dir={out}/evals"])  # fmt: skip
    summary = json.loads((out / "evals" / "TOFU_SUMMARY.json").read_text())
    assert all(math.isfinite(summary[k]) for k in ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "model_utility"))


@pytest.mark.parametrize("benchmark", ["muse", "wmdp"])
def test_muse_and_wmdp_bidistill_train(run_ou, workspace, benchmark) -> None:
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            f"experiment=unlearn/{benchmark}/bidistill",
            f"task_name=bidistill_{benchmark}",
            *train_overrides(workspace / "tiny"),
            *SMALL,
            "++trainer.args.max_steps=2",
            # the workspace's sentences are short: 8 words shown, 1 prefilled, at least 1 left to predict
            f"data.forget.BiDistill_{benchmark.upper()}.args.adversarial_from_forget.prefill_words=[1]",
            f"data.forget.BiDistill_{benchmark.upper()}.args.prefilled_retain.prefill_words=[1]",
        ],
    )
    log = proc.stdout + proc.stderr
    assert "bidistill/forget_push" in log and "bidistill/adversarial_push" in log and "bidistill/retain_pull" in log


def test_ablation_switches_turn_terms_off(run_ou, workspace) -> None:
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/bidistill",
            "task_name=bidistill_ablation",
            *train_overrides(workspace / "tiny"),
            *SMALL,
            "++trainer.args.max_steps=1",
            "trainer.method_args.w_push=0",
            "data.forget.BiDistill_TOFU.args.streams.boundary=null",
        ],
    )
    log = proc.stdout + proc.stderr
    assert "bidistill/forget_pull" in log and "bidistill/adversarial_pull" in log
    assert "_push" not in log.split("bidistill/forget_pull")[1] and "bidistill/boundary" not in log
    assert "no boundary stream(s)" in log


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.method_args.store_top_k=4", "trainer.method_args.store_top_k=4 must be >= top_k and push_top_k"),
        (
            "+trainer.method_args.stream_weights.neighbours.pull=1",
            "trainer.method_args.stream_weights.neighbours is not a stream",
        ),
        ("trainer.method_args.distance=cosine", "trainer.method_args.distance must be one of"),
        ("data.forget.BiDistill_TOFU.args.streams.forget.hf_args.name=forget99", "forget99"),
    ],
)
def test_bad_config_fails_before_training(run_ou, workspace, override, message) -> None:
    task = "bad_bidistill_" + override.split("=")[0].split(".")[-1]
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/bidistill",
            f"task_name={task}",
            *train_overrides(workspace / "tiny"),
            *SMALL,
            "++trainer.args.max_steps=1",
            override,
        ],
        check=False,
    )
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert not (workspace / "saves" / "unlearn" / task / "model.safetensors").exists()
    assert "precomputed teacher targets" not in proc.stdout + proc.stderr
