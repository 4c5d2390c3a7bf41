"""Does a LoRA student recover UNDO's noised copy? Full fine-tuning against LoRA on the demo-sized tiny Llama.

    OU_ROOT=/path/to/open-unlearning python scripts/bench_undo_lora.py --threads 1

(``--ou-root PATH`` instead of ``OU_ROOT``). Prints figures, asserts nothing. About 6 minutes on 2 CPU cores shared
with other jobs, with ``--threads 1``: on oversubscribed cores two torch threads were several times slower than one
(default ``--threads 2``, for an idle machine). The figures in UNDO.yaml and UNDO's LoRA warning come from this
command; the 600-step check of LoRA r=8 all-linear there from
``--variants r8-all,full --lora-lrs 1e-2 --full-lrs 3e-3 --steps 600 --report-at 0,100,200,300,400,600``.

1. The "unlearned teacher": the demo-sized tiny Llama (hidden 128, 4 layers, 4 heads, the demo's dataset of 40
   fictitious authors x 5 questions and a 1500-token tokenizer) trained with AdamW on the NLL of the retain90 QA
   (``--teacher-steps`` steps, batch 32, seeded), so that it knows what UNDO must recover; saved as a checkpoint.
2. For each variant (full fine-tuning; LoRA r=8 on q_proj, v_proj; LoRA r=8 and r=64 on every linear layer, LoRA
   alpha = 2r) and each learning rate of its grid, OU's ``UNDO`` trainer (``TRAINER_REGISTRY``, in-process) copies
   the teacher into the student, shrinks-and-perturbs it (``--alpha``, ``--beta``: UNDO.yaml's default), wraps it
   with peft for the LoRA variants, and distils the teacher back in on the retain90 QA for ``--steps`` steps (same
   schedule for all: AdamW, ``--warmup`` warm-up steps then linear decay, batch 32, seed 0, ``recovery: null``).
3. Reported per run: UNDO's retain gap ``(student - teacher) / teacher`` retain NLL, as its recovery callback
   measures it on its fixed batches (the first 4 batches of the distillation data), at fixed steps; the trainable
   parameters; the median optimiser step and the wall time of ``train()`` (with the gap measurements). The summary
   keeps the best learning rate (lowest final gap) per variant.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = {  # id: (label, trainer.method_args.lora)
    "full": ("full fine-tuning", None),
    "r8-qv": ("LoRA r=8 q,v", {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}),
    "r8-all": ("LoRA r=8 all-linear", {"r": 8, "alpha": 16, "target_modules": "all-linear"}),
    "r64-all": ("LoRA r=64 all-linear", {"r": 64, "alpha": 128, "target_modules": "all-linear"}),
}
TEMPLATE = {"apply_chat_template": True, "system_prompt": None}


def parse_args() -> argparse.Namespace:
    from duet_plugin.core.undo import UNDOConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ou-root", default=os.environ.get("OU_ROOT"), help="OpenUnlearning checkout (default $OU_ROOT)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--teacher-steps", type=int, default=300)
    p.add_argument("--teacher-lr", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=200, help="UNDO distillation steps per run")
    p.add_argument("--eval-every", type=int, default=25, help="recovery_eval_steps")
    p.add_argument("--report-at", default="0,25,50,100,150,200", help="steps whose gap the tables show")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--alpha", type=float, default=0.25)
    p.add_argument("--beta", type=float, default=UNDOConfig().beta)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"a subset of {','.join(VARIANTS)}")
    p.add_argument("--full-lrs", default="1e-3,3e-3")
    p.add_argument("--lora-lrs", default="1e-3,1e-2")
    return p.parse_args()


class QA(torch.utils.data.Dataset):
    """QA rows tokenized by OU's own preprocessing (labels on the answer only)."""

    def __init__(self, rows: list[dict], tokenizer) -> None:
        from data.utils import preprocess_chat_instance

        self.items = [
            {**preprocess_chat_instance(tokenizer, TEMPLATE, [r["question"]], [r["answer"]], 128), "index": i}
            for i, r in enumerate(rows)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def build(args: argparse.Namespace):
    from duet_plugin.demo.fictitious_authors import build_dataset
    from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer

    dataset = build_dataset(n_authors=40, qa_per_author=5, seed=0)
    texts = [f"{r['question']} {r['answer']}" for rows in dataset.configs.values() for r in rows]
    names = [a.name for a in (*dataset.authors, *dataset.holdout_authors)]
    tokenizer = build_tokenizer(texts, vocab_size=1500, whole_words=names)
    model = build_tiny_llama(tokenizer, hidden_size=128, num_layers=4, num_heads=4, max_positions=1024, seed=0)
    return dataset, tokenizer, model


def train_teacher(model, retain: QA, collate, args: argparse.Namespace, folder: Path) -> float:
    teacher = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(teacher.parameters(), lr=args.teacher_lr)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(args.teacher_steps):
        batch = collate([retain[int(i)] for i in torch.randint(0, len(retain), (args.batch,), generator=generator)])
        batch.pop("index")
        teacher(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    teacher.eval().save_pretrained(folder)
    return time.perf_counter() - start


def step_timer():
    """A TrainerCallback recording each optimiser step's duration (student forward/backward, teacher forward,
    optimiser; the gap measurements fall outside it)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, *args, **kwargs) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    return StepTimer()


def run_undo(model, tokenizer, data, collate, teacher: Path, lora, lr: float, args, out: Path) -> dict:
    from trainer import TRAINER_REGISTRY
    from transformers import PrinterCallback, TrainingArguments

    training = TrainingArguments(
        output_dir=str(out),
        report_to="none",
        per_device_train_batch_size=args.batch,
        learning_rate=lr,
        max_steps=args.steps,
        warmup_steps=args.warmup,
        logging_steps=args.steps,
        remove_unused_columns=False,
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = TRAINER_REGISTRY["UNDO"](
        model=copy.deepcopy(model),
        args=training,
        train_dataset=data,
        tokenizer=tokenizer,
        data_collator=collate,
        evaluators=None,
        template_args=TEMPLATE,
        teacher=str(teacher),
        alpha=args.alpha,
        beta=args.beta,
        recovery=None,
        recovery_eval_steps=args.eval_every,
        lora=lora,
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.remove_callback(PrinterCallback)  # HF's per-log prints; the tables say it all
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    callback = trainer.recovery_callback
    return {
        "gaps": dict(callback.gaps),
        "teacher_nll": callback.teacher_nll,
        "trainable": trainable,
        "wall": wall,
        "step_ms": 1000 * statistics.median(timer.seconds),
    }


def row(name: str, lr: float, r: dict, report_at: list[int]) -> str:
    gaps = " | ".join(f"{r['gaps'][s]:.3f}" if s in r["gaps"] else "" for s in report_at)
    return f"| {name} | {lr:g} | {r['trainable']:,} | {gaps} | {r['step_ms']:.0f} ms | {r['wall']:.0f} s |"


def main() -> None:
    args = parse_args()
    if not args.ou_root:
        raise SystemExit("Set OU_ROOT or pass --ou-root: the UNDO trainer runs inside OpenUnlearning.")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    from duet_plugin.openunlearning.launcher import import_framework

    import_framework(Path(args.ou_root))
    for name in ("duet_plugin", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from data.collators import DataCollatorForSupervisedDataset
    from data.unlearn import ForgetRetainDataset

    dataset, tokenizer, model = build(args)
    forget, retain = QA(dataset.configs["forget10"], tokenizer), QA(dataset.configs["retain90"], tokenizer)
    data = ForgetRetainDataset(forget, retain)  # UNDO distils on its retain stream
    collate = DataCollatorForSupervisedDataset(tokenizer, index="index")
    report_at = [int(s) for s in args.report_at.split(",")]
    chosen = {VARIANTS[v][0]: VARIANTS[v][1] for v in args.variants.split(",")}
    grids = {
        name: [float(x) for x in (args.full_lrs if lora is None else args.lora_lrs).split(",")]
        for name, lora in chosen.items()
    }
    print(
        f"demo-sized tiny Llama: {sum(p.numel() for p in model.parameters()):,} parameters; retain90: {len(retain)} "
        f"QA; {args.threads} threads; torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher"
        seconds = train_teacher(model, retain, collate, args, teacher)
        print(f"teacher: {args.teacher_steps} AdamW steps, lr {args.teacher_lr:g}, batch {args.batch}: {seconds:.0f} s")
        print(
            f"UNDO: alpha {args.alpha:g}, beta {args.beta:g}, {args.steps} steps, warm-up {args.warmup} then linear "
            f"decay, batch {args.batch}\n"
        )
        results = {}
        gap_columns = " | ".join(f"gap @{s}" for s in report_at)
        header = f"| variant | lr | trainable params | {gap_columns} | median step | wall |"
        header += "\n|" + "---|" * (header.count("|") - 1)
        print(header)
        for name, lora in chosen.items():
            for lr in grids[name]:
                r = run_undo(model, tokenizer, data, collate, teacher, lora, lr, args, Path(tmp) / "out")
                results[name, lr] = r
                print(row(name, lr, r, report_at), flush=True)
        teacher_nll = next(iter(results.values()))["teacher_nll"]
        print(f"\nteacher retain NLL (UNDO's callback, its {4 * args.batch} fixed retain examples): {teacher_nll:.4f}")
        print("\nbest learning rate per variant (lowest final gap):\n")
        print(header)
        for name in chosen:
            lr = min(grids[name], key=lambda x: results[name, x]["gaps"][max(results[name, x]["gaps"])])
            print(row(name, lr, results[name, lr], report_at))


if __name__ == "__main__":
    main()
