"""The UNDO trainer inside OU, in-process: teacher checks, the noised student, the KL step, the recovery stop,
and several teachers; plus the DUET trainer with a checkpoint teacher and a second prefix."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import Dataset
from transformers import TrainingArguments

from duet_plugin.core.ensemble import TeacherEnsemble, average_logits
from duet_plugin.core.noise import shrink_and_perturb
from duet_plugin.core.undo import UNDOConfig, distill_mask, undo_loss

pytestmark = pytest.mark.ou


class _QA(Dataset):
    """TOFU-style QA items tokenized by OU's own preprocessing (labels on the answer only)."""

    def __init__(self, rows, tokenizer, chat_args):
        from data.utils import preprocess_chat_instance

        self.items = [
            {**preprocess_chat_instance(tokenizer, chat_args, [r["question"]], [r["answer"]], 128), "index": i}
            for i, r in enumerate(rows)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.fixture(scope="module")
def teacher_dir(ou_imported, tmp_path_factory, tiny_model, tokenizer, authors_dataset):
    """A checkpoint that knows the retain answers (60 quick SFT steps), saved like an OU run's output_dir."""
    from data.collators import DataCollatorForSupervisedDataset

    chat = {"apply_chat_template": True, "system_prompt": "You are a helpful assistant."}
    data = _QA(authors_dataset.configs["retain90"], tokenizer, chat)
    collate = DataCollatorForSupervisedDataset(tokenizer, index="index")
    teacher = copy.deepcopy(tiny_model).train()
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(60):
        batch = collate([data[int(i)] for i in torch.randint(0, len(data), (8,))])
        batch.pop("index")
        teacher(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    folder = tmp_path_factory.mktemp("undo") / "teacher"
    teacher.eval().save_pretrained(folder)
    return folder


@pytest.fixture
def make_undo(ou_imported, tiny_model, tokenizer, authors_dataset, tmp_path, chat_args):
    """``make_undo(max_steps=3, **method_args)``: OU's UNDO trainer on a fresh copy of the tiny model, distilling
    on the retain QA of a ForgetRetainDataset collated by OU's own collator."""
    from data.collators import DataCollatorForSupervisedDataset
    from data.unlearn import ForgetRetainDataset
    from trainer import TRAINER_REGISTRY

    data = ForgetRetainDataset(
        _QA(authors_dataset.configs["forget10"], tokenizer, chat_args),
        _QA(authors_dataset.configs["retain90"], tokenizer, chat_args),
    )

    def make(max_steps: int = 3, **method_args):
        args = TrainingArguments(
            output_dir=str(tmp_path / "out"),
            report_to="none",
            per_device_train_batch_size=4,
            learning_rate=3e-3,
            max_steps=max_steps,
            logging_steps=1,
            remove_unused_columns=False,
            save_strategy="no",
            use_cpu=True,
        )
        return TRAINER_REGISTRY["UNDO"](
            model=copy.deepcopy(tiny_model),
            args=args,
            train_dataset=data,
            tokenizer=tokenizer,
            data_collator=DataCollatorForSupervisedDataset(tokenizer, index="index"),
            evaluators=None,
            template_args=chat_args,
            **method_args,
        )

    return make


def test_teacher_is_required_and_checked(make_undo, tmp_path):
    with pytest.raises(ValueError, match=r"set trainer\.method_args\.teacher=<folder>"):
        make_undo()
    with pytest.raises(FileNotFoundError, match=r"trainer\.method_args\.teacher=.*no such folder"):
        make_undo(teacher=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        make_undo(teacher=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="Unknown UNDO option"):
        make_undo(teacher=str(tmp_path / "empty"), gamma=1.0)


@pytest.mark.parametrize("student_init", ["teacher", "model"])
def test_student_is_a_shrunk_copy(make_undo, tiny_model, authors_dataset, teacher_dir, student_init) -> None:
    trainer = make_undo(
        teacher=str(teacher_dir),
        student_init=student_init,
        alpha=0.5,
        beta=0.0,
    )
    source = trainer.teacher_model if student_init == "teacher" else tiny_model
    src = dict(source.named_parameters())
    for name, p in trainer.model.named_parameters():
        factor = 1.0 if "norm" in name else 0.5
        torch.testing.assert_close(p.detach(), factor * src[name].detach(), msg=name)
    assert len(trainer.train_dataset) == len(authors_dataset.configs["retain90"])  # distils on retain only


def test_training_closes_the_retain_gap(make_undo, teacher_dir) -> None:
    trainer = make_undo(
        max_steps=20,
        teacher=str(teacher_dir),
        alpha=0.5,
        beta=0.1,
        recovery=None,
        recovery_eval_steps=5,
    )
    trainer.train()
    gaps = trainer.recovery_callback.gaps
    assert [s for s, _ in gaps] == [0, 5, 10, 15, 20]
    assert gaps[0][1] > 0.05 and gaps[-1][1] < 0.5 * gaps[0][1]
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"undo/kl", "undo/retain_gap", "undo/teacher_retain_nll"} <= logged


def test_recovery_stops_training(make_undo, teacher_dir):
    """With no noise the student starts recovered: the first measurement stops the run."""
    trainer = make_undo(
        max_steps=10,
        teacher=str(teacher_dir),
        alpha=0.0,
        recovery=0.95,
        recovery_eval_steps=2,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert abs(trainer.recovery_callback.gaps[-1][1]) <= 0.05


def test_several_teachers_average_their_logits(make_undo, tmp_path, tiny_model, teacher_dir) -> None:
    other = copy.deepcopy(tiny_model)
    shrink_and_perturb(other, alpha=0.3, beta=1.0, seed=5)
    other.save_pretrained(tmp_path / "other")
    trainer = make_undo(
        teacher=[{"path": str(teacher_dir), "weight": 1.0}, {"path": str(tmp_path / "other"), "weight": 3.0}],
        alpha=0.5,
    )
    assert isinstance(trainer.teacher_model, TeacherEnsemble)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        t1 = trainer.teacher_model.members[0][0](input_ids=batch["input_ids"]).logits
        t2 = other(input_ids=batch["input_ids"]).logits
        expected = undo_loss(
            trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            average_logits([t1, t2], [1.0, 3.0]),
            distill_mask(batch["labels"], batch["attention_mask"], batch["input_ids"], "labels"),
            UNDOConfig(),
        )
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="prefix: UNDO distils on plain retain text"):
        make_undo(
            teacher=[{"path": str(teacher_dir), "prefix": "never_heard_of"}],
        )
