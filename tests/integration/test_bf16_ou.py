"""OU's default precision: every plugin trainer through OU's train.py with the model in bfloat16 and ``bf16: true``
(OU's model configs and trainer defaults), on a CPU: the stored float32 teacher targets meet bfloat16 logits, the
online teacher and LoRA adapters run in bfloat16, and the saved model is bfloat16 and has moved."""

from __future__ import annotations

import math
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from duet_plugin.openunlearning.cpu_overrides import train_overrides

pytestmark = [pytest.mark.ou, pytest.mark.slow]

BF16 = ["model.model_args.torch_dtype=bfloat16", "trainer.args.bf16=true", "trainer.args.bf16_full_eval=true"]
SMALL = [
    "trainer.args.per_device_train_batch_size=4",
    "trainer.args.gradient_accumulation_steps=1",
    "trainer.args.logging_steps=1",
    "trainer.args.learning_rate=1e-3",
    "++trainer.args.max_steps=3",
]
RUNS = {
    "duet_precomputed_lora": ["experiment=unlearn/tofu/duet", "trainer.method_args.lora={}"],
    "duet_online": ["experiment=unlearn/tofu/duet", "trainer.method_args.teacher_mode=online"],
    "bidistill": ["experiment=unlearn/tofu/bidistill"],
    "undo": ["experiment=unlearn/tofu/undo", "trainer.method_args.teacher=tiny", "trainer.method_args.recovery=null"],
}


@pytest.mark.parametrize("run", list(RUNS))
def test_each_trainer_trains_in_bfloat16(run_ou, workspace, run: str) -> None:
    task = f"bf16_{run}"
    args = [f"task_name={task}", *RUNS[run], *train_overrides(workspace / "tiny"), *BF16, *SMALL]
    proc = run_ou("train", ["--config-name=unlearn.yaml", *args])
    losses = [float(x) for x in re.findall(r"'loss': ([-\d.e+naif]+)", proc.stdout + proc.stderr)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    out = workspace / "saves" / "unlearn" / task
    trained = AutoModelForCausalLM.from_pretrained(out, torch_dtype="auto")
    assert trained.dtype == torch.bfloat16
    start = AutoModelForCausalLM.from_pretrained(workspace / "tiny", torch_dtype=torch.bfloat16).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in trained.state_dict().items())
