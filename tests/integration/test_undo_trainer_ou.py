"""The UNDO trainer inside OU, in-process: teacher checks, the noised student, the KL step, the recovery stop,
several teachers, and LoRA (adapters over the frozen noised base, merged saving, checks before any compute)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import Dataset
from transformers import AutoModelForCausalLM, TrainingArguments

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

    def make(max_steps: int = 3, training: dict | None = None, deepspeed_plugin=None, **method_args):
        args = TrainingArguments(
            **{
                "output_dir": str(tmp_path / "out"),
                "report_to": "none",
                "per_device_train_batch_size": 4,
                "learning_rate": 3e-3,
                "max_steps": max_steps,
                "logging_steps": 1,
                "remove_unused_columns": False,
                "save_strategy": "no",
                "use_cpu": True,
                **(training or {}),
            }
        )
        if deepspeed_plugin is not None:  # as TrainingArguments sets it under `accelerate launch` with DeepSpeed
            args.deepspeed_plugin = deepspeed_plugin
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
    with pytest.raises(ValueError, match=r"trainer\.method_args\.teacher is required: set it to the unlearned model"):
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
    with pytest.raises(
        ValueError, match=r"trainer\.method_args\.teacher\.prefix is not for UNDO: it distils on plain retain text"
    ):
        make_undo(
            teacher=[{"path": str(teacher_dir), "prefix": "never_heard_of"}],
        )


# -- LoRA ------------------------------------------------------------------------------------------------------
LORA = {"r": 4, "alpha": 8, "target_modules": "all-linear"}


def _base_weights(peft_model) -> dict[str, torch.Tensor]:
    """The plain model's weights under the adapters (``base_layer.`` dropped, the adapters left out)."""
    state = peft_model.get_base_model().state_dict()
    return {k.replace("base_layer.", ""): v.detach().clone() for k, v in state.items() if "lora_" not in k}


def _noised_teacher(teacher_dir, alpha: float, beta: float):
    """What UNDO's student must start from: the teacher, shrunk and perturbed with UNDOConfig's defaults."""
    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    shrink_and_perturb(model, alpha, beta)
    return model


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_lora_trains_only_the_adapters_over_the_noised_base(make_undo, teacher_dir, gradient_checkpointing) -> None:
    """Copy the teacher, noise it, then wrap: the base under the adapters is the noised teacher bit for bit, B = 0,
    only adapters train and the base stays bit-identical. With (reentrant) gradient checkpointing the adapters still
    get gradients. The recovery callback measures the PeftModel student."""
    pytest.importorskip("peft")
    from peft import PeftModel

    trainer = make_undo(
        max_steps=6,
        teacher=str(teacher_dir),
        alpha=0.5,
        beta=0.1,
        recovery=None,
        recovery_eval_steps=3,
        lora=LORA,
        training={"learning_rate": 1e-2, "gradient_checkpointing": gradient_checkpointing},
    )
    assert isinstance(trainer.model, PeftModel)
    noised = _noised_teacher(teacher_dir, 0.5, 0.1).state_dict()
    base = _base_weights(trainer.model)
    assert base.keys() == noised.keys()
    assert [k for k in base if not torch.equal(base[k], noised[k])] == []
    adapters = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == set(adapters)
    assert len(adapters) == 2 * 7 * 2  # A and B on the 7 linear layers of both blocks (not the tied head)
    assert all(not p.any() for n, p in adapters.items() if "lora_B" in n)  # the student starts as the noised base

    trainer.train()
    assert trainer.model.get_base_model().model.gradient_checkpointing == gradient_checkpointing
    after = _base_weights(trainer.model)
    assert [k for k in noised if not torch.equal(after[k], noised[k])] == []  # the noised base stays frozen
    moved = {n for n, p in trainer.model.named_parameters() if "lora_" in n and not torch.equal(p, adapters[n])}
    assert moved == set(adapters)
    gaps = trainer.recovery_callback.gaps
    assert [s for s, _ in gaps] == [0, 3, 6] and gaps[-1][1] < gaps[0][1]
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"undo/kl", "undo/retain_gap", "undo/student_retain_nll"} <= logged


def test_lora_saves_the_merged_model_and_the_adapter(make_undo, teacher_dir, tmp_path) -> None:
    """output_dir: a plain checkpoint whose weights are the in-memory merged ones (no adapter keys), loadable by
    AutoModelForCausalLM; adapter/ applies to the noised teacher (reproducible from the teacher and noise_seed)."""
    pytest.importorskip("peft")
    from peft import PeftModel
    from safetensors import safe_open

    from duet_plugin.core.lora import merged_state_dict

    trainer = make_undo(
        max_steps=4,
        teacher=str(teacher_dir),
        alpha=0.5,
        beta=0.1,
        recovery=None,
        lora=LORA,
        training={"learning_rate": 1e-2},
    )
    trainer.train()
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "lora" in k or "base_layer" in k]
    assert {f.name for f in (out / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert not (out / "adapter_config.json").exists()  # else transformers would load the adapter, not the plain model
    assert (out / "training_args.bin").is_file() and (out / "tokenizer_config.json").is_file()

    saved = AutoModelForCausalLM.from_pretrained(out)
    assert type(saved).__name__ == "LlamaForCausalLM"
    expected = copy.deepcopy(trainer.model).merge_and_unload().state_dict()  # peft's own merge, in memory
    got = saved.state_dict()
    assert got.keys() == expected.keys()
    assert [k for k in got if not torch.equal(got[k], expected[k])] == []
    ours = merged_state_dict(trainer.model)
    assert [k for k in ours if not torch.equal(ours[k], expected[k])] == []
    noised = _noised_teacher(teacher_dir, 0.5, 0.1)
    adapted = {k for k in got if not torch.equal(got[k], noised.state_dict()[k])}
    assert adapted and all(k.rsplit(".", 2)[-2].endswith("_proj") for k in adapted)  # the adapters moved them
    assert not any(getattr(m, "merged", False) for m in trainer.model.modules())  # the trained model stays unmerged

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        reloaded = PeftModel.from_pretrained(noised, out / "adapter").eval()
        for model in (saved.eval(), reloaded):
            other = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            torch.testing.assert_close(other, logits, rtol=1e-5, atol=1e-5)


def test_lora_checks_come_before_any_compute(make_undo, teacher_dir, tmp_path, monkeypatch) -> None:
    """Bad LoRA values and LoRA under ZeRO-3 stop UNDO before any teacher is checked or loaded or anything is
    noised, and nothing is written."""
    pytest.importorskip("peft")
    from accelerate.utils import DeepSpeedPlugin

    import duet_plugin.openunlearning.trainers.undo as undo_module

    calls: list[str] = []

    def spy(name: str, real):
        def record(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return record

    for name in ("check_checkpoint", "shrink_and_perturb"):
        monkeypatch.setattr(undo_module, name, spy(name, getattr(undo_module, name)))
    monkeypatch.setattr(
        undo_module.UNDO, "load_teachers", staticmethod(spy("load_teachers", undo_module.UNDO.load_teachers))
    )
    with pytest.raises(
        ValueError,
        match=r"lora\.target_modules entries \['qkv_proj'\] match no module of the model\. LlamaForCausalLM's linear "
        r"layers are \['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'",
    ):
        make_undo(teacher=str(teacher_dir), lora={"target_modules": ["q_proj", "qkv_proj"]})
    with pytest.raises(ValueError, match=r"lora\.r must be an integer >= 1"):
        make_undo(teacher=str(teacher_dir), lora={"r": 0})
    with pytest.raises(ValueError, match=r"trainer\.method_args\.lora has unknown key\(s\) \['rank'\]"):
        make_undo(teacher=str(teacher_dir), lora={"rank": 8})
    zero3 = DeepSpeedPlugin(hf_ds_config={"zero_optimization": {"stage": 3}})
    with pytest.raises(NotImplementedError, match=r"trainer\.method_args\.lora with DeepSpeed ZeRO-3 is not supported"):
        make_undo(teacher=str(teacher_dir), lora=LORA, deepspeed_plugin=zero3)
    assert calls == [] and not (tmp_path / "out").exists()
    make_undo(teacher=str(teacher_dir), lora=LORA)  # the spies would have seen a valid run
    assert calls == ["check_checkpoint", "load_teachers", "shrink_and_perturb"]
