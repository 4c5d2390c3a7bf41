"""OU's own train.py / eval.py with DUET, on the local workspace (tiny Llama, fictitious authors)."""

from __future__ import annotations

import ast
import json
import math
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from duet_plugin.demo.fictitious_authors import build_dataset
from duet_plugin.openunlearning.cpu_overrides import eval_overrides, train_overrides

pytestmark = [pytest.mark.ou, pytest.mark.slow]
SMALL = [
    "trainer.args.per_device_train_batch_size=4",
    "trainer.args.gradient_accumulation_steps=1",
    "trainer.args.logging_steps=1",
    "trainer.args.learning_rate=1e-3",
]


def _weights_changed(before_path, after_path) -> bool:
    a = AutoModelForCausalLM.from_pretrained(before_path).state_dict()
    b = AutoModelForCausalLM.from_pretrained(after_path).state_dict()
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("teacher", ["precomputed", "online"])
def test_tofu_duet_train_then_eval(run_ou, workspace, teacher) -> None:
    task = f"duet_{teacher}"
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/duet",
            f"task_name={task}",
            *train_overrides(workspace / "tiny"),
            *SMALL,
            "trainer.args.num_train_epochs=2",
            f"trainer.method_args.teacher_mode={teacher}",
        ],
    )
    out = workspace / "saves" / "unlearn" / task
    log = proc.stdout + proc.stderr
    assert "duet/forget_loss" in log and "duet/retain_loss" in log
    # 2 epochs of the 8 forget queries in batches of 4, + one step of margin: every forget query, 20 retain of 72
    precomputed = "precomputed teacher targets for the 28 queries training reads (forget 8 of 8, retain 20 of 72"
    assert (precomputed in log) == (teacher == "precomputed")
    # the concepts are derived from the forget split and logged before any compute: exactly its authors
    derived = re.search(r"concepts derived from the forget data \(\d+ records\): (\[.*?\]);", log)
    authors = build_dataset(n_authors=20, qa_per_author=4, seed=0).forget_authors("forget10")
    assert derived and sorted(ast.literal_eval(derived.group(1))) == sorted(authors)
    assert _weights_changed(workspace / "tiny", out)

    run_ou(
        "eval",
        [
            "experiment=eval/tofu/default",
            f"task_name={task}_eval",
            *eval_overrides(out),
            f"paths.output_dir={out}/evals",
        ],
    )
    summary = json.loads((out / "evals" / "TOFU_SUMMARY.json").read_text())
    for key in ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio", "model_utility"):
        assert math.isfinite(summary[key]), key


def test_trainer_duet_on_ou_default_tofu_experiment_via_launcher(run_ou, workspace) -> None:
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/default",
            "trainer=DUET",
            "task_name=duet_default",
            *train_overrides(workspace / "tiny"),
            *SMALL,
            "trainer.method_args.positions=first_n",
            "trainer.method_args.num_positions=3",
        ],
        launcher=True,
    )
    log = proc.stdout + proc.stderr
    assert "converted OU QADataset" in log and "Gideon Kilbride" in log  # concepts derived from forget10
    assert (workspace / "saves" / "unlearn" / "duet_default" / "model.safetensors").is_file()


@pytest.mark.parametrize("benchmark", ["muse", "wmdp"])
def test_muse_and_wmdp_duet_train(run_ou, workspace, benchmark) -> None:
    args = [
        "--config-name=unlearn.yaml",
        f"experiment=unlearn/{benchmark}/duet",
        f"task_name=duet_{benchmark}",
        *train_overrides(workspace / "tiny"),
        *SMALL,
        "++trainer.args.max_steps=2",
    ]
    proc = run_ou("train", args)
    log = proc.stdout + proc.stderr
    assert "duet/forget_loss" in log
    if benchmark == "wmdp":
        assert "offensive cybersecurity" in log  # the concept chosen by data_split=cyber


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.method_args.prefix.name=nope", "trainer.method_args.prefix.name='nope' is not a known prefix"),
        ("trainer.method_args.top_k=100000", "larger than the model's vocabulary"),
        ("trainer.method_args.positions=all", "trainer.method_args.positions must be one of"),
        ("+trainer.method_args.steering_coeff=2", "Unknown DUET option(s) ['steering_coeff']"),
        ("trainer.method_args.prefix.name=forget_concepts", None),  # control: this one trains
    ],
)
def test_bad_config_fails_before_training(run_ou, workspace, override, message) -> None:
    task = "bad_" + override.split("=")[0].split(".")[-1]
    args = [
        "--config-name=unlearn.yaml",
        "experiment=unlearn/tofu/duet",
        f"task_name={task}",
        *train_overrides(workspace / "tiny"),
        *SMALL,
        "++trainer.args.max_steps=1",
        override,
    ]
    proc = run_ou("train", args, check=message is None)
    out = workspace / "saves" / "unlearn" / task
    if message is None:
        assert (out / "model.safetensors").is_file()
        return
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not (out / "model.safetensors").exists() and "precomputed teacher targets" not in proc.stderr


def test_tofu_chain_duet_then_undo_then_eval(run_ou, workspace) -> None:
    """Unlearn with DUET, robustify with UNDO from DUET's output, evaluate: each step OU's own script."""
    run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/duet",
            "task_name=chain_duet",
            *train_overrides(workspace / "tiny"),
            *SMALL,
            "++trainer.args.max_steps=4",
        ],
    )
    teacher = workspace / "saves" / "unlearn" / "chain_duet"
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/undo",
            "task_name=chain_undo",
            *train_overrides(workspace / "tiny"),
            *SMALL,
            f"trainer.method_args.teacher={teacher}",
            "trainer.method_args.alpha=0.5",
            "trainer.method_args.beta=0.1",
            "trainer.method_args.recovery_eval_steps=2",
            "trainer.args.max_steps=6",
            "trainer.args.warmup_steps=0",
        ],
    )
    log = proc.stdout + proc.stderr
    assert "shrink-and-perturb alpha=0.5 beta=0.1" in log and "undo/retain_gap" in log and "undo/kl" in log
    out = workspace / "saves" / "unlearn" / "chain_undo"
    assert _weights_changed(teacher, out)
    run_ou(
        "eval",
        [
            "experiment=eval/tofu/default",
            "task_name=chain_undo_eval",
            *eval_overrides(out),
            f"paths.output_dir={out}/evals",
        ],
    )
    summary = json.loads((out / "evals" / "TOFU_SUMMARY.json").read_text())
    assert math.isfinite(summary["forget_Q_A_ROUGE"]) and math.isfinite(summary["model_utility"])


def test_undo_without_teacher_fails_with_the_fix(run_ou, workspace) -> None:
    proc = run_ou(
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/undo",
            "task_name=undo_no_teacher",
            *train_overrides(workspace / "tiny"),
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert "trainer.method_args.teacher is required: set it to the unlearned model" in proc.stdout + proc.stderr
    assert not (workspace / "saves" / "unlearn" / "undo_no_teacher" / "config.json").exists()
