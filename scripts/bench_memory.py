"""Memory of DUET training: full fine-tuning vs LoRA, online teacher vs precomputed targets (prints, asserts nothing).

Each configuration runs in its own process (peak RSS only grows), on a random Llama of the demo's size and the
demo's fictitious-author TOFU queries: the DUET trainer is built inside OU (``--ou-root`` or ``$OU_ROOT``) and trains
``--steps`` steps. Reported per configuration: the peak RSS above the process's RSS once the model is loaded (Linux
``VmHWM``, reset first where the kernel allows; the median over ``--repeats`` runs, since at the demo's size the
allocator's noise is of the order of the differences), and the tensors it holds: the student's parameters, a
teacher copy (online full fine-tuning deep-copies the model; LoRA's teacher is the same model with its adapters
disabled), trainable parameters, their gradients and AdamW state, and the precomputed target store.

    python scripts/bench_memory.py --ou-root /path/to/open-unlearning [--hidden-size 128] [--layers 4] [--steps 10] \
        [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

CONFIGS = {
    "full, online": {"teacher_mode": "online"},
    "full, precomputed": {"teacher_mode": "precomputed"},
    "LoRA r=8 q,v, online": {"teacher_mode": "online", "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}},
    "LoRA r=8 q,v, precomputed": {
        "teacher_mode": "precomputed",
        "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]},
    },
}
MiB = 1024 * 1024


def _status(key: str) -> int:
    """A ``/proc/self/status`` value in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


def _bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run_one(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Build, train and measure one configuration in this process."""
    import torch

    torch.set_num_threads(args.threads)
    from duet_plugin.core.lora import AdaptersDisabled
    from duet_plugin.core.unified import records_from_qa
    from duet_plugin.demo.fictitious_authors import build_dataset
    from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer
    from duet_plugin.openunlearning.datasets import UnifiedRecordDataset
    from duet_plugin.openunlearning.launcher import find_ou_root, import_framework

    import_framework(find_ou_root(args.ou_root))
    from data.unlearn import ForgetRetainDataset
    from trainer import TRAINER_REGISTRY
    from transformers import TrainingArguments

    ds = build_dataset(n_authors=40, qa_per_author=5, seed=0)
    texts = [f"{r['question']} {r['answer']}" for rows in ds.configs.values() for r in rows]
    tokenizer = build_tokenizer(texts, vocab_size=args.vocab_size)
    torch.manual_seed(0)
    model = build_tiny_llama(tokenizer, hidden_size=args.hidden_size, num_layers=args.layers, seed=0)
    data = ForgetRetainDataset(
        UnifiedRecordDataset(records_from_qa(ds.configs["forget10"], stream="forget")),
        UnifiedRecordDataset(records_from_qa(ds.configs["retain90"], stream="retain")),
    )
    start_rss = _status("VmRSS")
    reset = _reset_peak()
    trainer = TRAINER_REGISTRY["DUET"](
        model=model,
        args=TrainingArguments(
            output_dir=str(Path(args.workdir) / "out"),
            report_to="none",
            use_cpu=True,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            remove_unused_columns=False,
            save_strategy="no",
            optim="adamw_torch",
        ),
        train_dataset=data,
        tokenizer=tokenizer,
        data_collator=None,
        evaluators=None,
        template_args={"apply_chat_template": True, "system_prompt": "You are a helpful assistant."},
        prefix={"name": "forget_authors"},
        **CONFIGS[name],
    )
    trainer.train()
    peak = _status("VmHWM")
    student = trainer.model
    teacher = trainer.teacher_model
    teacher_copy = 0 if teacher is None or isinstance(teacher, AdaptersDisabled) else _bytes(teacher.parameters())
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer_state = _bytes(
        t for state in trainer.optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.dim()
    )
    return {
        "name": name,
        "peak_above_start_mib": (peak - start_rss) / MiB,
        "peak_reset": reset,
        "start_rss_mib": start_rss / MiB,
        "student_params_mib": _bytes(student.parameters()) / MiB,
        "teacher_copy_mib": teacher_copy / MiB,
        "trainable_params": sum(p.numel() for p in trainable),
        "grads_mib": _bytes(trainable) / MiB,
        "adam_state_mib": optimizer_state / MiB,
        "target_store_kib": (trainer.targets.nbytes() / 1024) if trainer.targets is not None else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ou-root", default=os.environ.get("OU_ROOT"))
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/duet_bench_memory")
    parser.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)  # child process: one configuration
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args, args.one)))
        return

    rows = []
    for name in CONFIGS:
        runs = []
        for _ in range(args.repeats):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--one", name]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        peaks = [r["peak_above_start_mib"] for r in runs]
        rows.append({**runs[0], "peak_above_start_mib": statistics.median(peaks), "peaks": peaks})
    print(
        f"DUET, random Llama hidden {args.hidden_size} x {args.layers} layers, vocabulary {args.vocab_size}, "
        f"batch {args.batch_size} forget+retain pairs, {args.steps} steps, {args.threads} thread(s); "
        f"process RSS with the model loaded: {rows[0]['start_rss_mib']:.0f} MiB"
    )
    header = ["configuration", "peak RSS above start (runs)", "student params", "teacher copy", "trainable", "grads",
              "AdamW state", "target store"]  # fmt: skip
    print(" | ".join(header))
    for r in rows:
        print(
            f"{r['name']} | {r['peak_above_start_mib']:.1f} MiB ({', '.join(f'{p:.0f}' for p in r['peaks'])})"
            f"{'' if r['peak_reset'] else ' (peak not reset)'} | "
            f"{r['student_params_mib']:.2f} MiB | {r['teacher_copy_mib']:.2f} MiB | {r['trainable_params']:,} | "
            f"{r['grads_mib']:.2f} MiB | {r['adam_state_mib']:.2f} MiB | {r['target_store_kib']:.1f} KiB"
        )


if __name__ == "__main__":
    main()
