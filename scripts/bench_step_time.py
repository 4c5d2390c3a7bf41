"""Median training-step time of DUET (precomputed and online teacher) vs OU's GradDiff, same model and batch size.

Needs an OpenUnlearning checkout (``--ou-root`` or ``$OU_ROOT``). Builds the demo's fictitious-author TOFU data and a
random Llama of the demo's size (timing does not depend on the weights), then times ``Trainer.training_step`` on
identical forget+retain batches (one forget and one retain example per pair, the unit OU's unlearning trainers use).

    python scripts/bench_step_time.py --ou-root /path/to/open-unlearning [--batch-size 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ou-root", default=os.environ.get("OU_ROOT"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    workdir = Path(tempfile.mkdtemp(prefix="duet_bench_"))
    # A private datasets cache: local "locuslab/TOFU" folders of other runs share cache keys with this one.
    os.environ["HF_DATASETS_CACHE"] = str(workdir / ".hf_datasets_cache")

    from duet_plugin.demo.fictitious_authors import build_dataset, write_hub_layout
    from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer
    from duet_plugin.openunlearning.launcher import find_ou_root, import_framework

    import_framework(find_ou_root(args.ou_root))
    from data.collators import DataCollatorForSupervisedDataset
    from data.qa import QADataset
    from data.unlearn import ForgetRetainDataset
    from trainer import TRAINER_REGISTRY
    from transformers import TrainingArguments

    os.chdir(workdir)
    ds = build_dataset(n_authors=40, qa_per_author=5, seed=0)
    write_hub_layout(ds, workdir)
    texts = [f"{r['question']} {r['answer']}" for rows in ds.configs.values() for r in rows]
    tokenizer = build_tokenizer(texts, vocab_size=1500)
    template = {"apply_chat_template": True, "system_prompt": "You are a helpful assistant."}

    def qa(name: str) -> QADataset:
        return QADataset(
            hf_args={"path": "locuslab/TOFU", "name": name, "split": "train"},
            template_args=template,
            tokenizer=tokenizer,
        )

    def trainer(handler: str, **method_args):
        model = build_tiny_llama(tokenizer, hidden_size=args.hidden_size, num_layers=args.layers, seed=0)
        targs = TrainingArguments(
            output_dir=str(workdir / handler),
            report_to="none",
            use_cpu=True,
            per_device_train_batch_size=args.batch_size,
            remove_unused_columns=False,
        )
        return TRAINER_REGISTRY[handler](
            model=model,
            args=targs,
            train_dataset=ForgetRetainDataset(qa("forget10"), qa("retain90")),
            tokenizer=tokenizer,
            data_collator=DataCollatorForSupervisedDataset(tokenizer=tokenizer),
            template_args=template,
            evaluators=None,
            **method_args,
        )

    def time_steps(t) -> list[float]:
        loader = t.get_train_dataloader()
        batches, it = [], iter(loader)
        while len(batches) < args.steps + args.warmup:
            try:
                batches.append(next(it))
            except StopIteration:
                it = iter(loader)
        times = []
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            t.training_step(t.model, batch)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        return times

    results = {}
    for label, handler, kw in (
        ("GradDiff (NLL retain)", "GradDiff", {}),
        ("DUET precomputed", "DUET", {"prefix": {"name": "forget_authors"}}),
        ("DUET online", "DUET", {"prefix": {"name": "forget_authors"}, "teacher_mode": "online"}),
    ):
        torch.manual_seed(0)
        t = trainer(handler, **kw)
        if handler == "DUET" and kw.get("teacher_mode") != "online":
            start = time.perf_counter()
            t.targets = t.precompute_targets(every_query=True)  # the bench draws its own batches
            print(
                f"DUET precompute: {time.perf_counter() - start:.2f}s for {len(t.targets)} queries "
                f"({t.targets.nbytes() / 1024:.1f} KiB)"
            )
        results[label] = statistics.median(time_steps(t))
    base = results["GradDiff (NLL retain)"]
    print(
        f"\nmedian step time, batch {args.batch_size} forget+retain pairs, {args.steps} steps, "
        f"{torch.get_num_threads()} threads, hidden {args.hidden_size} x {args.layers} layers"
    )
    for label, value in results.items():
        print(f"  {label:24s} {value * 1000:8.1f} ms   {value / base:5.2f}x GradDiff")


if __name__ == "__main__":
    main()
