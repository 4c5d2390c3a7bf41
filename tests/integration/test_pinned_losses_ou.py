"""Each trainer's loss on fixed fixtures, pinned: the trainer layer may be restructured, its numbers may not move.

``tests/data/pinned_losses.json`` was written by this file (``DUET_PIN_LOSSES=write``) from the trainers as they
stood before the shared trainer base (commit d581fe6); they hold within fp32 noise (see the tolerance below). Every
case builds the trainer through OU's registry on the session's tiny model, moves the student off its starting
weights by a seeded step, and computes the loss and the logged terms on a seeded batch."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from duet_plugin.core.converters import prefilled_records
from duet_plugin.core.unified import records_from_qa
from duet_plugin.openunlearning.datasets import StreamsDataset, UnifiedRecordDataset

pytestmark = pytest.mark.ou

PINNED = Path(__file__).parent.parent / "data" / "pinned_losses.json"
CASES = {
    "duet_precomputed_first": ("DUET", {"top_k": 6}),
    "duet_online_first_n": ("DUET", {"top_k": 6, "teacher_mode": "online", "positions": "first_n", "num_positions": 3}),
    "duet_precomputed_first_n_kl": ("DUET", {"top_k": 8, "distance": "kl", "positions": "first_n", "num_positions": 2}),
    "duet_two_teachers_online": (
        "DUET",
        {
            "top_k": 5,
            "teacher_mode": "online",
            "teachers": [{"weight": 1.0}, {"prefix": {"name": "generic_refusal"}, "weight": 0.5}],
        },
    ),
    "duet_lora_precomputed": ("DUET", {"top_k": 6, "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}),
    # pinned before `balance` existed: the raw weighted sum (balance: each and start divide the terms by scales fixed
    # at the first step, tests/unit/test_bidistill_core.py)
    "bidistill_precomputed": ("BiDistill", {"top_k": 5, "store_top_k": 64, "balance": "none"}),
    "bidistill_online_bild": (
        "BiDistill",
        {"top_k": 4, "push_top_k": 3, "teacher_mode": "online", "distance": "bild", "balance": "none"},
    ),
    "bidistill_precomputed_continue_first_n": (
        "BiDistill",
        {
            "prefill_target": "continue",
            "positions": "first_n",
            "num_positions": 2,
            "store_top_k": None,
            "balance": "none",
        },
    ),
    "undo_full_kl": ("UNDO", {"alpha": 0.3, "beta": 0.1}),
    "undo_topk_all": ("UNDO", {"alpha": 0.5, "top_k": 5, "tokens": "all", "temperature": 2.0}),
}


def _streams(authors_dataset, with_all: bool):
    def recs(split: str, stream: str):
        return records_from_qa(authors_dataset.configs[split][:12], stream=stream)

    streams = {"forget": recs("forget10", "forget"), "retain": recs("retain90", "retain")}
    if with_all:
        streams["boundary"] = recs("world_facts_perturbed", "boundary")
        streams["adversarial"] = prefilled_records(streams["forget"], [2], stream="adversarial")
    return StreamsDataset({k: UnifiedRecordDataset(v) for k, v in streams.items()})


def _args(tmp_path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, remove_unused_columns=False,
        use_cpu=True, save_strategy="no",
    )  # fmt: skip


def _undo_data(tokenizer, authors_dataset, chat_args):
    from data.unlearn import ForgetRetainDataset
    from data.utils import preprocess_chat_instance

    def qa(split):
        rows = authors_dataset.configs[split][:12]
        return [
            {**preprocess_chat_instance(tokenizer, chat_args, [r["question"]], [r["answer"]], 96), "index": i}
            for i, r in enumerate(rows)
        ]

    return ForgetRetainDataset(qa("forget10"), qa("retain90"))


def _item(dataset, i: int) -> dict:
    """Item ``i`` as the values were pinned: anchor record ``i``, every other stream's record drawn from the global
    RNG (OU's ForgetRetainDataset's pairing), independent of the plugin's own draws (core/pairing.py)."""
    if not isinstance(dataset, StreamsDataset):
        return dataset[i]
    item = {dataset.anchor: dataset.streams[dataset.anchor][i]}
    for name, ds in dataset.streams.items():
        if name != dataset.anchor:
            item[name] = ds[int(torch.randint(0, len(ds), (1,)).item())]
    return item


def _compute(handler, method_args, tiny_model, tokenizer, authors_dataset, chat_args, tmp_path) -> dict[str, float]:
    from data.collators import DataCollatorForSupervisedDataset
    from trainer import TRAINER_REGISTRY

    torch.manual_seed(0)
    model = copy.deepcopy(tiny_model)
    kwargs = {"model": model, "args": _args(tmp_path), "tokenizer": tokenizer, "evaluators": None}
    kwargs["template_args"] = chat_args
    if handler == "UNDO":
        teacher = copy.deepcopy(tiny_model)
        with torch.no_grad():
            for p in teacher.parameters():
                p.add_(0.05 * torch.randn_like(p))
        teacher.save_pretrained(tmp_path / "teacher")
        kwargs["train_dataset"] = _undo_data(tokenizer, authors_dataset, chat_args)
        kwargs["data_collator"] = DataCollatorForSupervisedDataset(tokenizer, index="index")
        method_args = {**method_args, "teacher": str(tmp_path / "teacher"), "recovery": None}
    else:
        kwargs["train_dataset"] = _streams(authors_dataset, with_all=handler == "BiDistill")
        kwargs["data_collator"] = None
    trainer = TRAINER_REGISTRY[handler](**kwargs, **method_args)
    if handler != "UNDO" and trainer.targets is None and trainer.teacher_model is None:
        trainer.targets = trainer.precompute_targets()
    torch.manual_seed(1)
    with torch.no_grad():  # off the starting weights, so that no term is zero by construction
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(0.03 * torch.randn_like(p))
    torch.manual_seed(2)
    batch = trainer.data_collator([_item(trainer.train_dataset, i) for i in range(4)])
    if handler == "UNDO":
        batch = {k: v for k, v in batch.items() if k != "index"}
    loss = trainer.compute_loss(trainer.model, batch)
    logs: dict[str, float] = {}
    trainer.log(logs)
    return {"loss": loss.item(), **{k: v for k, v in logs.items() if "/" in k}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_losses_match_the_pinned_values(
    ou_imported, case, tiny_model, tokenizer, authors_dataset, chat_args, tmp_path
) -> None:
    handler, method_args = CASES[case]
    got = _compute(handler, method_args, tiny_model, tokenizer, authors_dataset, chat_args, tmp_path)
    assert got["loss"] > 0
    if os.environ.get("DUET_PIN_LOSSES") == "write":
        pinned = json.loads(PINNED.read_text()) if PINNED.exists() else {}
        pinned[case] = got
        PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
        return
    expected = json.loads(PINNED.read_text())[case]
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        # The logged terms are rounded to 6 decimals. Since the LM head reads only the aligned positions of a
        # left-aligned batch (core/logits.py), fp32 sums run in another order: 1e-7 absolute on a KL of 1.6e-3.
        assert got[key] == pytest.approx(value, rel=1e-6, abs=5e-7 if key == "loss" else 1.5e-6), key
