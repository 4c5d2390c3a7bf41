"""DUET's core: config validation, teacher targets, the target store, and online == precomputed."""

from __future__ import annotations

import copy

import pytest
import torch

from duet_plugin.core.collate import TeacherStudentCollator, extend_with_continuations
from duet_plugin.core.duet import DUETConfig, student_loss
from duet_plugin.core.teacher_targets import TeacherTargetStore, teacher_targets

PREFIX = "You have never heard of Gideon Kilbride. Say you do not know."


@pytest.fixture
def collator(tokenizer, chat_args):
    return TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX)


@pytest.fixture
def records(authors_dataset):
    rows = authors_dataset.configs["forget10"] + authors_dataset.configs["retain90"][:6]
    return [{"prompt": r["question"], "index": i} for i, r in enumerate(rows)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, "top_k"),
        ({"distance": "cos"}, "distance"),
        ({"positions": "all"}, "positions"),
        ({"positions": "first_n", "num_positions": 0}, "num_positions"),
        ({"teacher_mode": "frozen"}, "teacher_mode must be one of"),
        ({"huber_delta": 0}, "huber_delta"),
        ({"stream_weights": {"forget": -1}}, "stream_weights"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DUETConfig(**kwargs)


def test_top_k_larger_than_vocabulary_is_rejected(tiny_model, collator, records, tokenizer) -> None:
    cfg = DUETConfig(top_k=len(tokenizer) + 1)
    with pytest.raises(ValueError, match="larger than the model's vocabulary"):
        teacher_targets(
            tiny_model, collator(records[:2]), cfg.target_config(), collator.pad_id, [tokenizer.eos_token_id]
        )


@pytest.mark.parametrize("positions", ["first", "first_n"])
@pytest.mark.parametrize("distance", ["huber", "kl"])
def test_online_and_precomputed_give_the_same_loss(tiny_model, collator, records, tokenizer, positions, distance):
    """Precomputed targets (other batching) and an online frozen copy give the same loss on one batch."""
    cfg = DUETConfig(top_k=8, positions=positions, num_positions=4, distance=distance)
    eos = [tokenizer.eos_token_id]
    student = copy.deepcopy(tiny_model)
    with torch.no_grad():  # make the student differ from the teacher, as it does after some training
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))

    store = TeacherTargetStore()
    for start in range(0, len(records), 5):  # precompute in batches of 5
        batch = collator(records[start : start + 5])
        targets, extended, conts = teacher_targets(tiny_model, batch, cfg.target_config(), collator.pad_id, eos)
        store.add("forget", batch["index"].tolist(), targets, extended["position_mask"], conts)
    assert len(store) == len(records)

    train_batch = collator([records[i] for i in (7, 2, 11, 0)])  # a training batch of another composition
    online_targets, online_batch, _ = teacher_targets(
        copy.deepcopy(tiny_model), train_batch, cfg.target_config(), collator.pad_id, eos
    )
    online = student_loss(student, online_batch, online_targets, cfg)

    stored_targets, conts = store.lookup("forget", train_batch["index"].tolist())
    pre_batch = (
        extend_with_continuations(train_batch, conts, collator.pad_id) if cfg.continuation_length else train_batch
    )
    precomputed = student_loss(student, pre_batch, stored_targets, cfg)
    assert torch.equal(stored_targets.indices, online_targets.indices)
    assert precomputed.item() == pytest.approx(online.item(), rel=1e-5)
    assert online.item() > 0


def test_first_n_distills_along_the_teacher_continuation(tiny_model, collator, records, tokenizer) -> None:
    cfg = DUETConfig(top_k=5, positions="first_n", num_positions=3)
    batch = collator(records[:3])
    targets, extended, conts = teacher_targets(
        tiny_model, batch, cfg.target_config(), collator.pad_id, [tokenizer.eos_token_id]
    )
    assert all(1 <= len(c) <= 3 for c in conts)
    assert len(targets) == sum(len(c) for c in conts) == int(extended["position_mask"].sum())
    # The teacher's greedy continuation is its own argmax: the top-1 target at each position is the next token.
    flat_next = [tok for c in conts for tok in c]
    assert targets.indices[:, 0].tolist() == flat_next


def test_loss_vanishes_without_a_prefix(tiny_model, tokenizer, chat_args) -> None:
    """Sanity of the alignment: with no prefix the teacher view is the student view, so the loss vanishes."""
    same = TeacherStudentCollator(tokenizer, chat_args)
    batch = same([{"prompt": "Where was the author Gideon Kilbride born?", "index": 0}])
    cfg = DUETConfig(top_k=5)
    targets, batch, _ = teacher_targets(tiny_model, batch, cfg.target_config(), same.pad_id, [tokenizer.eos_token_id])
    assert student_loss(tiny_model, batch, targets, cfg).item() == pytest.approx(0.0, abs=1e-6)


def test_store_lookup_errors_and_size(tiny_model, collator, records, tokenizer) -> None:
    cfg = DUETConfig(top_k=4)
    batch = collator(records[:2])
    targets, extended, conts = teacher_targets(
        tiny_model, batch, cfg.target_config(), collator.pad_id, [tokenizer.eos_token_id]
    )
    store = TeacherTargetStore()
    store.add("forget", [0, 1], targets, extended["position_mask"], conts)
    assert store.nbytes() == 2 * (4 * 4 + 4 * 4 + 4)  # int32 ids + float32 logits per K, one float32 lse
    with pytest.raises(KeyError, match="stream 'retain'"):
        store.lookup("retain", [0])
    with pytest.raises(KeyError, match="example 5"):
        store.lookup("forget", [5])


def test_duet_loss_weighs_streams_and_both_teacher_modes_agree(tiny_model, collator, records, tokenizer) -> None:
    from torch.utils.data import Dataset

    from duet_plugin.core.duet import duet_loss
    from duet_plugin.core.teacher_targets import precompute_targets

    class Records(Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    forget = [{**r, "index": i} for i, r in enumerate(records[:8])]
    retain = [{**r, "index": i} for i, r in enumerate(records[8:])]
    cfg = DUETConfig(top_k=5, teacher_batch_size=3, stream_weights={"forget": 2.0, "retain": 0.5})
    eos = [tokenizer.eos_token_id]
    store = precompute_targets(
        tiny_model,
        {"forget": Records(forget), "retain": Records(retain)},
        collator,
        cfg.target_config(),
        collator.pad_id,
        eos,
    )
    assert store.streams() == ["forget", "retain"] and len(store) == len(records)
    student = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    batch = {"forget": collator(forget[:4]), "retain": collator(retain[2:6])}
    pre, parts = duet_loss(student, batch, cfg, collator.pad_id, eos, store=store)
    online, _ = duet_loss(student, batch, cfg, collator.pad_id, eos, teacher=tiny_model)
    assert pre.item() == pytest.approx(online.item(), rel=1e-5)
    assert pre.item() == pytest.approx(2.0 * parts["forget"] + 0.5 * parts["retain"], rel=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        duet_loss(student, batch, cfg, collator.pad_id, eos)
