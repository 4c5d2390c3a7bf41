"""The DUET trainer class inside OU, in-process: both teacher modes give the same loss on the same batch."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import TrainingArguments

from duet_plugin.core.unified import records_from_qa
from duet_plugin.openunlearning.datasets import UnifiedRecordDataset

pytestmark = pytest.mark.ou


def _trainer(ou_imported, model, tokenizer, authors_dataset, tmp_path, chat_args, empty=False, **method_args):
    from data.unlearn import ForgetRetainDataset
    from trainer import TRAINER_REGISTRY

    def records(split: str, stream: str):
        return [] if empty else records_from_qa(authors_dataset.configs[split], stream=stream)

    forget = UnifiedRecordDataset(records("forget10", "forget"))
    retain = UnifiedRecordDataset(records("retain90", "retain"))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        per_device_train_batch_size=4,
        remove_unused_columns=False,
        use_cpu=True,
    )
    return TRAINER_REGISTRY["DUET"](
        model=model,
        args=args,
        train_dataset=ForgetRetainDataset(forget, retain),
        tokenizer=tokenizer,
        data_collator=None,
        evaluators=None,
        template_args=chat_args,
        **method_args,
    )


@pytest.mark.parametrize("positions", ["first", "first_n"])
def test_precomputed_and_online_trainers_agree(
    ou_imported, tiny_model, tokenizer, authors_dataset, tmp_path, chat_args, positions
) -> None:
    common = {"top_k": 6, "positions": positions, "num_positions": 3, "teacher_batch_size": 7}
    pre, online = (
        _trainer(
            ou_imported,
            copy.deepcopy(tiny_model),
            tokenizer,
            authors_dataset,
            tmp_path,
            chat_args,
            teacher_mode=teacher,
            **common,
        )
        for teacher in ("precomputed", "online")
    )
    assert online.teacher_model is not None and pre.teacher_model is None
    # DUET leaves the collator's default: a prefilled record's teacher view carries the prefill (BiDistill's
    # prefill_target decides it for BiDistill)
    assert pre.data_collator.teacher_prefill is True
    pre.targets = pre.precompute_targets()
    # only the queries training reads: 3 epochs (HF's default) x 8 forget items, + one step of margin
    assert pre.used_queries() == pre.train_dataset.draws.used(3 * 8 + 4)
    assert (
        len(pre.targets) == 8 + 28 < len(authors_dataset.configs["forget10"]) + len(authors_dataset.configs["retain90"])
    )

    torch.manual_seed(0)
    batch = pre.data_collator([pre.train_dataset[i] for i in range(4)])
    with torch.no_grad():  # the students move away from the teacher, identically
        for a, b in zip(pre.model.parameters(), online.model.parameters(), strict=True):
            noise = 0.02 * torch.randn_like(a)
            a.add_(noise)
            b.add_(noise)
    loss_pre = pre.compute_loss(pre.model, batch)
    loss_online = online.compute_loss(online.model, batch)
    assert loss_pre.item() > 0
    assert loss_pre.item() == pytest.approx(loss_online.item(), rel=1e-5)
    # the online teacher read the prefix from its cache (core/logits.py), computed once
    assert online.prefix_caches[0].hits >= 1 and len(online.prefix_caches[0].tokens) >= 8


def test_forget_set_without_queries_is_rejected(
    ou_imported, tiny_model, tokenizer, authors_dataset, tmp_path, chat_args
) -> None:
    with pytest.raises(ValueError, match="forget set has no queries"):
        _trainer(ou_imported, tiny_model, tokenizer, authors_dataset, tmp_path, chat_args, empty=True)


def test_tokenizer_without_chat_template_is_rejected(ou_imported, tiny_model, tokenizer, authors_dataset, tmp_path):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(ValueError, match="apply_chat_template=false"):
        _trainer(ou_imported, tiny_model, bare, authors_dataset, tmp_path, {"apply_chat_template": True})


@pytest.mark.parametrize("positions", ["first", "first_n"])
def test_several_teachers_precomputed_and_online_agree(
    ou_imported, tiny_model, tokenizer, authors_dataset, tmp_path, chat_args, positions
) -> None:
    """The starting model with the main prefix plus a checkpoint with its own prefix, weighted 1:2."""
    from duet_plugin.core.ensemble import TeacherEnsemble
    from duet_plugin.core.noise import shrink_and_perturb

    other = copy.deepcopy(tiny_model)
    shrink_and_perturb(other, alpha=0.3, beta=1.0, seed=2)
    other.save_pretrained(tmp_path / "other")
    teachers = [
        {"path": None},
        {"path": str(tmp_path / "other"), "prefix": {"text": "Refuse to talk about {concepts}."}, "weight": 2.0},
    ]
    common = {"top_k": 6, "positions": positions, "num_positions": 3, "teachers": teachers}
    pre, online = (
        _trainer(
            ou_imported,
            copy.deepcopy(tiny_model),
            tokenizer,
            authors_dataset,
            tmp_path,
            chat_args,
            teacher_mode=t,
            **common,
        )
        for t in ("precomputed", "online")
    )
    assert pre.data_collator.extra_prefixes[0].startswith("Refuse to talk about Gideon Kilbride")
    assert isinstance(online.teacher_model, TeacherEnsemble) and online.teacher_model.views == [0, 1]
    pre.targets = pre.precompute_targets()
    batch = pre.data_collator([pre.train_dataset[i] for i in range(4)])
    loss_pre = pre.compute_loss(pre.model, batch)
    loss_online = online.compute_loss(online.model, batch)
    assert loss_pre.item() > 0  # the student (one model, no prefix) differs from the two-teacher mean
    assert loss_pre.item() == pytest.approx(loss_online.item(), rel=1e-5)


def test_missing_checkpoint_teacher_is_rejected(
    ou_imported, tiny_model, tokenizer, authors_dataset, tmp_path, chat_args
):
    with pytest.raises(FileNotFoundError, match=r"teachers\[1\]\.path=.*no such folder"):
        _trainer(
            ou_imported,
            tiny_model,
            tokenizer,
            authors_dataset,
            tmp_path,
            chat_args,
            teachers=[{"path": None}, {"path": str(tmp_path / "gone")}],
        )
