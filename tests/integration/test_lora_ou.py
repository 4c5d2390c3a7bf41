"""LoRA (``trainer.method_args.lora``) inside OU: the adapters-disabled teacher in both teacher modes, BiDistill,
UNDO, and OU's own train.py / eval.py (merged plain checkpoint, gradient checkpointing, bad targets, ZeRO-3)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from duet_plugin.core.unified import records_from_qa
from duet_plugin.openunlearning.cpu_overrides import eval_overrides, train_overrides
from duet_plugin.openunlearning.datasets import UnifiedRecordDataset

pytest.importorskip("peft")
pytestmark = pytest.mark.ou

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
LORA_OVERRIDE = "trainer.method_args.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}"
SMALL = [
    "trainer.args.per_device_train_batch_size=4",
    "trainer.args.gradient_accumulation_steps=1",
    "trainer.args.logging_steps=1",
    "trainer.args.learning_rate=1e-2",
]


def _assert_plain_model_and_adapter(out) -> None:
    """A merged plain checkpoint (no adapter keys) with the adapter alone in adapter/ (an adapter_config.json at the
    top would make transformers load the adapter instead of the plain model)."""
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora" in k or "base_layer" in k]
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "adapter_config.json").exists()


def _short_tofu_eval(run_ou, out, task: str) -> None:
    """OU's eval.py on ``out`` (loaded with AutoModelForCausalLM); two of its TOFU metrics keep it short."""
    slow = ("forget_truth_ratio", "forget_quality", "model_utility", "privleak", "extraction_strength")
    run_ou(
        "eval",
        [
            "experiment=eval/tofu/default",
            f"task_name={task}_eval",
            *eval_overrides(out),
            f"paths.output_dir={out}/evals",
            *(f"~eval.tofu.metrics.{m}" for m in slow),
        ],
    )
    summary = json.loads((out / "evals" / "TOFU_SUMMARY.json").read_text())
    assert set(summary) == {"forget_Q_A_Prob", "forget_Q_A_ROUGE"}
    assert all(math.isfinite(v) for v in summary.values())


def _args(tmp_path, **kw) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        per_device_train_batch_size=4,
        remove_unused_columns=False,
        save_strategy="no",
        use_cpu=True,
        **kw,
    )


def _duet(ou_imported, model, tokenizer, authors_dataset, tmp_path, chat_args, **method_args):
    from data.unlearn import ForgetRetainDataset
    from trainer import TRAINER_REGISTRY

    forget = UnifiedRecordDataset(records_from_qa(authors_dataset.configs["forget10"], stream="forget"))
    retain = UnifiedRecordDataset(records_from_qa(authors_dataset.configs["retain90"], stream="retain"))
    return TRAINER_REGISTRY["DUET"](
        model=model,
        args=_args(tmp_path),
        train_dataset=ForgetRetainDataset(forget, retain),
        tokenizer=tokenizer,
        data_collator=None,
        evaluators=None,
        template_args=chat_args,
        **method_args,
    )


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize(
    ("positions", "teachers"),
    [
        ("first", None),
        ("first_n", None),
        ("first", [{"path": None}, {"path": None, "prefix": "never_heard_of", "weight": 0.5}]),
        ("first", [{"path": None}, {"path": "CHECKPOINT", "weight": 2.0}]),
    ],
)
def test_lora_teacher_is_the_base_without_a_copy_and_both_modes_agree(
    ou_imported, tiny_model, tokenizer, authors_dataset, tmp_path, chat_args, positions, teachers
) -> None:
    from duet_plugin.core.ensemble import TeacherEnsemble
    from duet_plugin.core.lora import AdaptersDisabled
    from duet_plugin.core.noise import shrink_and_perturb

    if teachers and teachers[-1]["path"] == "CHECKPOINT":  # a saved checkpoint member loads as without LoRA
        other = copy.deepcopy(tiny_model)
        shrink_and_perturb(other, alpha=0.3, beta=1.0, seed=2)
        other.save_pretrained(tmp_path / "other")
        teachers = [teachers[0], {**teachers[-1], "path": str(tmp_path / "other")}]
    common = {"top_k": 6, "positions": positions, "num_positions": 3, "teachers": teachers, "lora": LORA}
    pre, online = (
        _duet(
            ou_imported,
            copy.deepcopy(tiny_model),
            tokenizer,
            authors_dataset,
            tmp_path,
            chat_args,
            **common,
            teacher_mode=t,
        )
        for t in ("precomputed", "online")
    )
    online.model.load_state_dict(pre.model.state_dict())  # the same adapter initialisation
    members = online.teacher_model.members if teachers else [(online.teacher_model, 0, 1.0)]
    assert isinstance(online.teacher_model, TeacherEnsemble) == bool(teachers)
    own = [m for (m, _, _), spec in zip(members, teachers or [{"path": None}], strict=True) if spec["path"] is None]
    assert own and all(isinstance(m, AdaptersDisabled) and m.model is online.model for m in own)  # no copy
    assert len(own) == len(members) or not isinstance(members[-1][0], AdaptersDisabled)

    torch.manual_seed(0)
    with torch.no_grad():  # the students move away from the base, identically, before the targets are computed
        for (name, a), b in zip(pre.model.named_parameters(), online.model.parameters(), strict=True):
            if "lora_B" in name:
                noise = 0.05 * torch.randn_like(a)
                a.add_(noise)
                b.add_(noise)
    pre.targets = pre.precompute_targets()  # from the base: adapters disabled
    plain = _duet(ou_imported, copy.deepcopy(tiny_model), tokenizer, authors_dataset, tmp_path, chat_args,
                  **{**common, "lora": None})  # fmt: skip
    plain.targets = plain.precompute_targets()  # full fine-tuning: from the starting model itself
    used = pre.used_queries()
    assert used == plain.used_queries()
    for stream in ("forget", "retain"):
        rows = used[stream]
        (ours, ours_conts), (theirs, theirs_conts) = (
            pre.targets.lookup(stream, rows),
            plain.targets.lookup(stream, rows),
        )
        assert ours_conts == theirs_conts and torch.equal(ours.indices, theirs.indices)
        # Equal to the last bit with full logits; through the left-aligned last-positions forward (core/logits.py)
        # peft's wrapped layers and the plain ones round 1 ulp apart (1.2e-7), whereas the adapters (lora_B moved
        # by 0.05) would move the logits by orders of magnitude more.
        torch.testing.assert_close(ours.values, theirs.values, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.logsumexp, theirs.logsumexp, rtol=0, atol=1e-6)
    batch = pre.data_collator([pre.train_dataset[i] for i in range(4)])
    loss_pre = pre.compute_loss(pre.model, batch)
    loss_online = online.compute_loss(online.model, batch)
    assert loss_pre.item() > 0
    assert loss_pre.item() == pytest.approx(loss_online.item(), rel=1e-5)
    loss_online.backward()
    grads = {n for n, p in online.model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)  # only the adapters learn


def test_bidistill_with_lora_trains_and_saves_a_plain_model(ou_imported, workspace, tmp_path, chat_args) -> None:
    from data import DATASET_REGISTRY
    from trainer import TRAINER_REGISTRY

    def spec(config: str) -> dict:
        return {"source": "qa", "hf_args": {"path": str(workspace / "locuslab" / "TOFU"), "name": config,
                                            "split": "train"}}  # fmt: skip

    streams = DATASET_REGISTRY["UnifiedStreamsDataset"](
        streams={"forget": spec("forget10"), "retain": spec("retain90")},
        adversarial_from_forget={"prefill_words": [2]},
    )
    model = AutoModelForCausalLM.from_pretrained(workspace / "tiny")
    start = copy.deepcopy(model.state_dict())
    trainer = TRAINER_REGISTRY["BiDistill"](
        model=model,
        args=_args(tmp_path, max_steps=3, learning_rate=1e-2, logging_steps=1),
        train_dataset=streams,
        tokenizer=AutoTokenizer.from_pretrained(workspace / "tiny"),
        data_collator=None,
        evaluators=None,
        template_args=chat_args,
        teacher_mode="online",
        lora=LORA,
        top_k=5,
    )
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"bidistill/forget_pull", "bidistill/forget_push", "bidistill/adversarial_push"} <= logged
    base = {k.replace("base_layer.", ""): v for k, v in trainer.model.get_base_model().state_dict().items()}
    assert not _changed(start, base)  # the base weights are frozen
    trainer.save_model(str(tmp_path / "out"))
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert {k.rsplit(".", 2)[-2] for k in _changed(start, saved)} == {"q_proj", "v_proj"}


def test_duet_lora_online_train_then_eval(run_ou, workspace) -> None:
    """OU's train.py with LoRA and the online teacher; the output_dir holds a plain model that OU's eval.py loads."""

    task = "duet_lora_online"
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/duet",
            f"task_name={task}",
            *train_overrides(workspace / "tiny"),
            *SMALL,
            "++trainer.args.max_steps=4",
            "trainer.method_args.teacher_mode=online",
            LORA_OVERRIDE,
        ],
    )
    log = proc.stdout + proc.stderr
    assert "LoRA r=4 alpha=8 dropout=0 on 4 modules (q_proj, v_proj)" in log and "duet/forget_loss" in log
    assert "precomputed teacher targets" not in log
    out = workspace / "saves" / "unlearn" / task
    _assert_plain_model_and_adapter(out)
    assert (out / "trainer_state.json").is_file()
    before = AutoModelForCausalLM.from_pretrained(workspace / "tiny").state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert _changed(before, after) == {
        f"model.layers.{i}.self_attn.{m}.weight" for i in (0, 1) for m in ("q_proj", "v_proj")
    }

    _short_tofu_eval(run_ou, out, task)


def test_gradient_checkpointing_with_lora_through_train_py(run_ou, workspace) -> None:
    """HF's reentrant checkpointing with frozen embeddings (OU #178): the adapters still train; precomputed teacher."""
    task = "duet_lora_gc"
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/duet",
            f"task_name={task}",
            *train_overrides(workspace / "tiny"),
            *SMALL,
            "++trainer.args.max_steps=2",
            "trainer.args.gradient_checkpointing=true",
            "trainer.method_args.lora={}",
        ],
    )
    log = proc.stdout + proc.stderr
    assert "incompatible with gradient checkpointing" in log  # checkpointing was on in the student's forward
    # 2 steps of 4 + one of margin: 12 positions read the 8 forget queries and 12 of the 72 retain ones
    assert "precomputed teacher targets for the 20 queries training reads (forget 8 of 8, retain 12 of 72" in log
    before = AutoModelForCausalLM.from_pretrained(workspace / "tiny").state_dict()
    after = AutoModelForCausalLM.from_pretrained(workspace / "saves" / "unlearn" / task).state_dict()
    assert {k.rsplit(".", 2)[-2] for k in _changed(before, after)} == {"q_proj", "v_proj"}  # the defaults' targets


@pytest.mark.parametrize(
    ("method", "extra", "not_reached"),
    [
        ("duet", [], ["precomputed teacher targets"]),
        # UNDO: before its teacher is loaded or the student noised
        ("undo", ["trainer.method_args.teacher=TINY"], ["Teacher 0:", "shrink-and-perturb"]),
    ],
)
def test_bad_target_modules_fail_before_training(run_ou, workspace, method, extra, not_reached) -> None:
    task = f"{method}_lora_bad_targets"
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            f"experiment=unlearn/tofu/{method}",
            f"task_name={task}",
            *train_overrides(workspace / "tiny"),
            *SMALL,
            *(e.replace("TINY", str(workspace / "tiny")) for e in extra),
            "++trainer.args.max_steps=1",
            "trainer.method_args.lora={target_modules: [q_proj, qkv_proj]}",
        ],
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "trainer.method_args.lora.target_modules entries ['qkv_proj'] match no module of the model" in log
    assert "linear layers are ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'" in log
    assert not [marker for marker in not_reached if marker in log]
    assert not (workspace / "saves" / "unlearn" / task / "model.safetensors").exists()


UNDO_LORA = [
    "trainer.method_args.alpha=0.5",
    "trainer.method_args.beta=0.1",
    "trainer.method_args.recovery=null",
    "trainer.method_args.recovery_eval_steps=2",
    "trainer.args.warmup_steps=0",
]


def test_undo_lora_with_gradient_checkpointing_train_then_eval(run_ou, workspace) -> None:
    """OU's train.py: UNDO noises a copy of the teacher, wraps it with adapters (reentrant checkpointing on) and
    distils; the output_dir holds the merged plain model, which OU's eval.py loads, and adapter/."""

    task, teacher = "undo_lora_gc", workspace / "tiny"
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/undo",
            f"task_name={task}",
            *train_overrides(teacher),
            *SMALL,
            *UNDO_LORA,
            f"trainer.method_args.teacher={teacher}",
            "trainer.args.max_steps=4",
            "trainer.args.gradient_checkpointing=true",
            "trainer.method_args.lora={r: 4, alpha: 8, target_modules: all-linear}",
        ],
    )
    log = proc.stdout + proc.stderr
    assert "Teacher 0:" in log and "shrink-and-perturb alpha=0.5 beta=0.1" in log
    assert "LoRA r=4 alpha=8 dropout=0 on 14 modules" in log
    assert "UNDO with trainer.method_args.lora: only the adapters train" in log  # the measured warning
    assert "incompatible with gradient checkpointing" in log  # checkpointing was on in the student's forward
    assert "undo/retain_gap" in log and "undo/kl" in log
    out = workspace / "saves" / "unlearn" / task
    _assert_plain_model_and_adapter(out)
    before = AutoModelForCausalLM.from_pretrained(teacher).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert _changed(before, after) == {k for k in before if "norm" not in k}  # noised (all but norms), then adapted

    _short_tofu_eval(run_ou, out, task)


@pytest.mark.slow
def test_undo_lora_under_zero3_is_refused_before_the_teacher_is_loaded(ou_root, workspace, tmp_path) -> None:
    """accelerate launch with DeepSpeed ZeRO-3 (2 CPU processes): refused from the training arguments, before the
    teacher is loaded (under ZeRO-3 it would be partitioned at load) or anything is noised."""
    pytest.importorskip("deepspeed")
    from test_distributed_ou import _train

    extra = [
        f"trainer.method_args.teacher={workspace / 'tiny'}",
        "trainer.method_args.lora={r: 4, target_modules: [q_proj, v_proj]}",
    ]
    out = _train(ou_root, workspace, tmp_path, "zero3", "undo_lora_zero3", extra, experiment="undo", check=False)
    assert (out / "returncode").read_text() != "0"
    log = (out / "train.log").read_text()
    assert "trainer.method_args.lora with DeepSpeed ZeRO-3 is not supported" in log
    assert "Teacher 0:" not in log and "shrink-and-perturb" not in log
    assert "'loss'" not in log and not (out / "model.safetensors").exists()
