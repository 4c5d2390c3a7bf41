"""Precomputed teacher targets only for the queries training reads (core/pairing.py), inside OU: the store holds
exactly the run's draws, every step finds its targets, a resumed run continues with the same draws and weights, and
OU's train.py on a split 100x larger than the run reads computes no more than it did on the small one."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from transformers import TrainingArguments

from duet_plugin.core.unified import records_from_qa
from duet_plugin.demo.fictitious_authors import build_dataset, write_hub_layout
from duet_plugin.openunlearning.cpu_overrides import train_overrides
from duet_plugin.openunlearning.datasets import UnifiedRecordDataset

pytestmark = pytest.mark.ou


def _trainer(model, tokenizer, authors_dataset, chat_args, out, handler="DUET", **args):
    from data.unlearn import ForgetRetainDataset
    from trainer import TRAINER_REGISTRY

    def records(split: str, stream: str):
        return UnifiedRecordDataset(records_from_qa(authors_dataset.configs[split], stream=stream))

    targs = {"per_device_train_batch_size": 2, "learning_rate": 1e-3, "save_strategy": "no", **args}
    return TRAINER_REGISTRY[handler](
        model=model,
        args=TrainingArguments(
            output_dir=str(out), report_to="none", remove_unused_columns=False, use_cpu=True, **targs
        ),
        train_dataset=ForgetRetainDataset(records("forget10", "forget"), records("retain90", "retain")),
        tokenizer=tokenizer,
        data_collator=None,
        evaluators=None,
        template_args=chat_args,
        top_k=5,
    )


class _Reads:
    """Records every (stream, index) the trainer's store is asked for."""

    def __init__(self, trainer) -> None:
        self.seen: dict[str, set[int]] = {}
        self.trainer = trainer
        original = trainer.precompute_targets

        def precompute(model=None):
            store = original(model)
            lookup = store.lookup

            def recorded(stream, indices):
                self.seen.setdefault(stream, set()).update(int(i) for i in indices)
                return lookup(stream, indices)

            store.lookup = recorded
            return store

        trainer.precompute_targets = precompute


def test_the_store_holds_exactly_what_training_reads(
    ou_imported, tiny_model, tokenizer, authors_dataset, chat_args, tmp_path
):
    # 8 forget queries, batch 2: 4 steps per epoch; 6 steps read epoch 0 and half of epoch 1
    trainer = _trainer(copy.deepcopy(tiny_model), tokenizer, authors_dataset, chat_args, tmp_path, max_steps=6)
    reads = _Reads(trainer)
    trainer.train()
    stored = {s: sorted(rows) for s, rows in trainer.targets._rows.items()}
    assert stored == trainer.used_queries() == trainer.train_dataset.draws.used(6 * 2 + 2)
    assert {s: sorted(v) for s, v in reads.seen.items()} == trainer.train_dataset.draws.used(6 * 2)
    assert len(stored["retain"]) == 14 < len(authors_dataset.configs["retain90"])  # 72 in the split
    assert len(stored["forget"]) == 8


def test_a_resumed_run_reads_the_same_queries_and_ends_with_the_same_weights(
    ou_imported, tiny_model, tokenizer, authors_dataset, chat_args, tmp_path, monkeypatch
):
    # transformers 4.45 reads its RNG checkpoint with torch.load's default, which torch >= 2.6 made weights_only
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    common = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3, "seed": 5}
    straight = _trainer(copy.deepcopy(tiny_model), tokenizer, authors_dataset, chat_args, tmp_path / "a", **common)
    straight_reads = _Reads(straight)
    straight.train()
    resumed = _trainer(copy.deepcopy(tiny_model), tokenizer, authors_dataset, chat_args, tmp_path / "b", **common)
    resumed_reads = _Reads(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))  # mid-epoch 0 (4 steps per epoch)
    assert resumed_reads.seen["retain"] <= straight_reads.seen["retain"]
    assert resumed.targets._rows.keys() == straight.targets._rows.keys()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    moved = max(
        (a - b).abs().max().item() for a, b in zip(straight.model.parameters(), tiny_model.parameters(), strict=True)
    )
    assert moved > 1e-3


def test_ou_train_precomputes_for_the_draws_not_the_split(ou_root, run_ou, workspace, tmp_path):
    """forget01 / retain99 of 100 authors (4 and 396 queries): 2 steps of batch 2 read 6 positions."""
    big = tmp_path / "big"
    write_hub_layout(build_dataset(n_authors=100, qa_per_author=4, seed=1), big)
    outputs = {}
    for experiment in ("duet", "bidistill"):
        out = tmp_path / experiment
        args = [
            "--config-name=unlearn.yaml",
            f"experiment=unlearn/tofu/{experiment}",
            f"task_name=used_{experiment}",
            "forget_split=forget01",
            "retain_split=retain99",
            *train_overrides(workspace / "tiny"),
            "trainer.args.per_device_train_batch_size=2",
            "trainer.args.gradient_accumulation_steps=1",
            "++trainer.args.max_steps=2",
            "++trainer.args.save_strategy=no",
            f"paths.output_dir={out}",
        ]
        proc = run_ou("train", args, cwd=big)
        outputs[experiment] = proc.stdout + proc.stderr
    line = re.search(r"precomputed teacher targets for the (\d+) queries training reads \(([^)]*)\)", outputs["duet"])
    assert line, outputs["duet"][-3000:]
    assert line.group(2).startswith("forget 4 of 4, retain 6 of 396")
    bidistill = re.search(
        r"precomputed teacher targets for the (\d+) queries training reads \(([^)]*)\)", outputs["bidistill"]
    )
    assert bidistill, outputs["bidistill"][-3000:]
    counts = [tuple(map(int, m)) for m in re.findall(r"(\d+) of (\d+)", bidistill.group(2))]
    assert all(used <= 6 for used, _ in counts) and sum(total for _, total in counts) > 400
    assert int(bidistill.group(1)) == sum(used for used, _ in counts)
